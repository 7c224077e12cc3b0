"""What every reader of a manifest relies on: its sections, their fields and their types, each shard listed
once and totals that are the sums of the shards' counts.

``read_manifest`` checks them once, so that a manifest that parses as JSON but was cut, hand-edited or
written by something else is an ``IndexCorruptError`` naming the field, not a ``KeyError`` deep in a reader
(nor a count that ``info`` reports and ``export`` does not write, nor a shard read twice).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from tokembed.errors import IndexCorruptError
from tokembed.index.format import SEARCH

_TOP = {"dim": int, "embedding_dtype": str, "shards": list, "totals": dict}
# What encoding queries for the index (score, serve, an encode re-run) and ``info`` read. A manifest written by a
# library call with no model (vectors only, searched with vectors) has none of the three sections; tokembed
# encode writes all three.
_ENCODING = {"model": dict, "settings": dict, "flags": dict}
_MODEL = {"name": str, "fingerprint": str, "family": str}
_SETTINGS = {"kind": str, "mode": str, "dtype": str}
_TOTALS = {"rows": int, "tokens": int}
_SHARD = {"file": str, "rows": int, "tokens": int, "bytes": int, "sha256": str}
_STRUCTURE = {"codec": dict, "shards": list, "nbits": int, "centroids": int}
_CODEC = {"file": str, "bytes": int, "sha256": str}
_CODE_FILE = {"shard": str, **_SHARD}


def check_manifest_shape(path: Path, manifest) -> None:
    """Raise ``IndexCorruptError`` naming ``path`` and the first field that is missing or of the wrong type."""
    if not isinstance(manifest, dict):
        raise IndexCorruptError(f"{path}: not a tokembed index manifest (a JSON {type(manifest).__name__}, not an object)")
    _fields(path, manifest, _TOP, "")
    if any(name in manifest for name in _ENCODING):
        _fields(path, manifest, _ENCODING, "")
        _fields(path, manifest["model"], _MODEL, "model.")
        _fields(path, manifest["settings"], _SETTINGS, "settings.")
    _fields(path, manifest["totals"], _TOTALS, "totals.")
    if manifest["dim"] <= 0:
        raise IndexCorruptError(f"{path}: dim is {manifest['dim']}")
    for number, shard in enumerate(manifest["shards"]):
        _listed_file(path, shard, _SHARD, f"shards[{number}].")
    _shards_add_up(path, manifest)
    structure = manifest.get(SEARCH)
    if structure is not None:
        _fields(path, structure, _STRUCTURE, f"{SEARCH}.")
        _listed_file(path, structure["codec"], _CODEC, f"{SEARCH}.codec.")
        for number, entry in enumerate(structure["shards"]):
            _listed_file(path, entry, _CODE_FILE, f"{SEARCH}.shards[{number}].")


def _shards_add_up(path: Path, manifest: dict) -> None:
    listed: dict[str, int] = {}
    for number, shard in enumerate(manifest["shards"]):
        name = str(PurePosixPath(shard["file"]))
        if name in listed:
            raise IndexCorruptError(f"{path}: shards[{number}].file {shard['file']!r} is listed twice (also shards[{listed[name]}])")
        listed[name] = number
    for name in _TOTALS:
        total = sum(shard[name] for shard in manifest["shards"])
        if manifest["totals"][name] != total:
            raise IndexCorruptError(f"{path}: totals.{name} is {manifest['totals'][name]}, the shards listed hold {total}")


def _listed_file(path: Path, entry, fields: dict, where: str) -> None:
    """A file entry: its fields, and a file name inside the index folder."""
    if not isinstance(entry, dict):
        raise IndexCorruptError(f"{path}: {where.rstrip('.')} is a JSON {type(entry).__name__}, not an object")
    _fields(path, entry, fields, where)
    name = PurePosixPath(entry["file"])
    if name.is_absolute() or ".." in name.parts or not name.parts:
        raise IndexCorruptError(f"{path}: {where}file {entry['file']!r} is not a path inside the index folder")


def _fields(path: Path, section: dict, fields: dict, where: str) -> None:
    for name, kind in fields.items():
        if name not in section:
            raise IndexCorruptError(f"{path}: no {where}{name}")
        value = section[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise IndexCorruptError(f"{path}: {where}{name} is {value!r}, not a JSON {_JSON_NAMES[kind]}")


_JSON_NAMES = {dict: "object", list: "array", int: "integer", str: "string"}
