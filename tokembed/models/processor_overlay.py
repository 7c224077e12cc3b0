"""An adapter folder's processor and tokenizer files win over its base's (as colpali-engine loads them), for
vision families: a text family reads its base's tokenizer, so an adapter over one shipping another tokenizer is
refused (``refuse_other_tokenizer``).

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

from tokembed.errors import ModelError

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


def refuse_other_tokenizer(base: Path, adapter: Path) -> None:
    """A text adapter is read with its base's tokenizer. Tokenizer files it ships are fine where they make the same
    tokenizer (peft's save with the base's tokenizer, under any transformers release); other ones would give other
    ids than a reference loading the adapter folder's tokenizer, so they are refused naming the adapter's file."""
    shipped = sorted(_files(adapter, TOKENIZER_FILES))
    if not shipped or _tokenizer_state(adapter) == _tokenizer_state(base):
        return
    differing = [file for file in shipped if not _same_content(file, Path(base) / file.name)]
    raise ModelError(
        f"{(differing or shipped)[0]}: the adapter ships a tokenizer other than its base's ({base}); tokembed reads a "
        "text adapter with its base's tokenizer, so its vectors could differ from a reference that loads the "
        "adapter's (only vision families read an adapter's processor and tokenizer files)",
        hint="save the adapter without tokenizer files (or with its base's), or merge it into the base and save that",
    )


def _tokenizer_state(folder: Path) -> tuple | None:
    """What decides a tokenizer's ids, as transformers loads it from ``folder`` (None: it cannot)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception:  # noqa: BLE001 - a folder transformers cannot read a tokenizer from is no match
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    specials = sorted((name, repr(value)) for name, value in tokenizer.special_tokens_map.items())
    sides = (tokenizer.padding_side, tokenizer.truncation_side, tokenizer.model_max_length)
    return type(tokenizer).__name__, vocabulary, specials, sides


def _same_content(file: Path, other: Path) -> bool:
    return other.is_file() and file.read_bytes() == other.read_bytes()
