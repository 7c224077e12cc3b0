"""An adapter folder's processor and tokenizer files win over its base's (as colpali-engine loads them).

The files form two groups, each taken whole from one folder: the adapter's when it ships any file of the group,
else the base's. Mixing a group would read settings neither folder holds: transformers reads the
``image_processor`` nested in ``processor_config.json`` before ``preprocessor_config.json``, so a base's
``processor_config.json`` next to an adapter's ``preprocessor_config.json`` would hide the adapter's settings that
colpali-engine (loading the adapter folder alone) uses.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What a processor reads for its image / video settings (and prompts).
SETTINGS_FILES = re.compile(r"^(preprocessor_config\.json|processor_config\.json|video_preprocessor_config\.json)$")
# What a tokenizer reads.
TOKENIZER_FILES = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\.(json|txt)|merges\.txt|.*\.model|chat_template.*)$"
)
GROUPS = (SETTINGS_FILES, TOKENIZER_FILES)


def has_processor_files(adapter: Path) -> bool:
    return any(_files(adapter, group) for group in GROUPS)


def ships_tokenizer(adapter: Path) -> bool:
    """Whether the adapter's own tokenizer files are the ones its model reads."""
    return bool(_files(adapter, TOKENIZER_FILES))


@contextmanager
def processor_overlay(base: Path, adapter: Path) -> Iterator[Path | None]:
    """A temporary folder holding the base's files with the adapter's processor/tokenizer files over them, group
    by group (None when the adapter ships none)."""
    if not has_processor_files(adapter):
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="tokembed-processor-"))
    try:
        for name, source in overlaid_files(Path(base), Path(adapter)).items():
            (folder / name).symlink_to(source.resolve())
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def overlaid_files(base: Path, adapter: Path) -> dict[str, Path]:
    """File name -> the file the overlay holds: the base's non-weight files, each group replaced whole by the
    adapter's where the adapter ships any of it."""
    chosen = {p.name: p for p in base.iterdir() if p.is_file() and not p.name.endswith((".safetensors", ".bin"))}
    for group in GROUPS:
        shipped = _files(adapter, group)
        if shipped:
            chosen = {name: p for name, p in chosen.items() if not group.match(name)}
            chosen.update({p.name: p for p in shipped})
    return chosen


def _files(folder: Path, group: re.Pattern) -> list[Path]:
    return [p for p in Path(folder).iterdir() if p.is_file() and group.match(p.name)]
