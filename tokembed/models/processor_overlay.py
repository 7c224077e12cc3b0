"""An adapter folder's processor and tokenizer files win over its base's (as colpali-engine loads them)."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Files a processor or tokenizer reads: the adapter folder's win over the base's.
PROCESSOR_FILES = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\.(json|txt)|merges\.txt|.*\.model|"
    r"preprocessor_config\.json|processor_config\.json|video_preprocessor_config\.json|chat_template.*)$"
)


def has_processor_files(adapter: Path) -> bool:
    return any(PROCESSOR_FILES.match(p.name) for p in Path(adapter).iterdir() if p.is_file())


@contextmanager
def processor_overlay(base: Path, adapter: Path) -> Iterator[Path | None]:
    """A temporary folder holding the base's files with the adapter's processor/tokenizer files over them
    (None when the adapter ships none)."""
    if not has_processor_files(adapter):
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="tokembed-processor-"))
    try:
        adapter_files = {p.name for p in Path(adapter).iterdir() if p.is_file() and PROCESSOR_FILES.match(p.name)}
        for source in Path(base).iterdir():
            if source.is_file() and source.name not in adapter_files and not source.name.endswith((".safetensors", ".bin")):
                (folder / source.name).symlink_to(source.resolve())
        for name in adapter_files:
            (folder / name).symlink_to((Path(adapter) / name).resolve())
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
