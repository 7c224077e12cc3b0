"""``added_tokens.json`` beside a ``tokenizer.json``: when it changes the tokenizer.

transformers' AutoTokenizer reads the file even where a ``tokenizer.json`` is there (when ``tokenizer_config.json``
has no ``added_tokens_decoder``): each token it names that the ``tokenizer.json`` does not list among its added
tokens becomes an added token (a new one at the next free id, whatever id the file gives; one of the vocabulary, as
``"a"``, is then matched inside words too). A file that ``save_pretrained`` wrote lists the same tokens with the same
ids and changes nothing: only a disagreeing one counts (the fingerprint hashes it, tokembed's own BERT tokenizer,
which builds from ``tokenizer.json`` alone, steps aside for transformers').
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

ADDED_TOKENS_FILE = "added_tokens.json"


def added_tokens_disagree(folder: Path) -> bool:
    """Whether the folder's ``added_tokens.json`` names a (token, id) its ``tokenizer.json``'s added tokens lack
    (a file that cannot be read counts as disagreeing: it is not taken to change nothing). Parsed once per state of
    the two files: the fingerprint and the tokenizer's choice both ask, and a tokenizer.json may be megabytes."""
    if not (folder / ADDED_TOKENS_FILE).is_file() or not (folder / "tokenizer.json").is_file():
        return False
    return _disagree(folder, _state(folder / ADDED_TOKENS_FILE), _state(folder / "tokenizer.json"))


def _state(file: Path) -> tuple:
    info = file.stat()
    return info.st_ino, info.st_size, info.st_mtime_ns


@functools.lru_cache(maxsize=32)
def _disagree(folder: Path, *states: tuple) -> bool:
    try:
        added = json.loads((folder / ADDED_TOKENS_FILE).read_bytes())
        listed = json.loads((folder / "tokenizer.json").read_bytes()).get("added_tokens") or []
        present = {(token["content"], token["id"]) for token in listed}
        return not isinstance(added, dict) or any((token, index) not in present for token, index in added.items())
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return True
