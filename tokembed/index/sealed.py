"""JSON documents that carry a digest of their own content, so that a damaged value is found when they are read.

tokembed trusts three JSON files it wrote earlier: an index's ``manifest.json`` (its shards and the settings every
query is encoded with), the run journal an interrupted encode resumes from, and the per-user record of files
already hashed. Each is written with ``content_sha256``: the sha256 of the rest of the document in a canonical
form (keys sorted, no whitespace, ASCII), whatever layout the file has. One flipped bit anywhere in a value, a key
or an entry no longer matches it; ``unseal`` checks it as the document is read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SEAL = "content_sha256"


class SealError(ValueError):
    """A document whose content does not match its seal, or that has none where one is required."""


def sealed_bytes(document: dict, indent: int | None = None, ensure_ascii: bool = True) -> bytes:
    """``document`` as JSON with its seal (one already in it is replaced), UTF-8, ending in a newline."""
    body = _body(document)
    sealed = {**body, SEAL: content_digest(body)}
    return (json.dumps(sealed, indent=indent, ensure_ascii=ensure_ascii) + "\n").encode()


def unseal(document, required: bool = True) -> dict:
    """``document`` (parsed JSON) without its seal, once the seal matches; a document without one is returned as it
    is unless ``required``. Raises ``SealError`` saying why not."""
    if not isinstance(document, dict):
        raise SealError(f"a JSON {type(document).__name__}, not an object")
    if SEAL not in document:
        if required:
            raise SealError(f"no {SEAL} (not written by this tokembed release)")
        return document
    body = _body(document)
    if document[SEAL] != content_digest(body):
        raise SealError(f"its content does not match its {SEAL} (damaged or edited since it was written)")
    return body


def read_sealed(path: Path) -> dict:
    """The sealed JSON document at ``path``. Raises OSError (unreadable) or ValueError (not JSON, or ``SealError``)."""
    return unseal(json.loads(path.read_text(encoding="utf-8")))


def content_digest(body: dict) -> str:
    """The sha256 of ``body`` in canonical JSON: the same for every layout and key order of the same content."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _body(document: dict) -> dict:
    return {key: value for key, value in document.items() if key != SEAL}
