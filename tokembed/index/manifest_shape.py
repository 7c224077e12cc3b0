"""What every reader of a manifest relies on: each field some reader takes from it (``FIELDS``: where it sits, its
JSON type, the values it may hold), each shard listed once and totals that are the sums of the shards' counts.

``read_manifest`` checks them once, so that a manifest that parses as JSON but was cut, hand-edited or
written by something else is an ``IndexCorruptError`` naming the field, not a ``KeyError`` or ``TypeError`` deep in a
reader (nor a count that ``info`` reports and ``export`` does not write, nor a shard read twice, nor an ``--nbits``
usage error for a flag nobody passed).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from tokembed.errors import IndexCorruptError
from tokembed.index.format import NBITS_CHOICES, SEARCH, SEARCH_KIND, SEARCH_SETTINGS, VECTORS, VECTORS_DROPPED
from tokembed.settings import KINDS, MODES, STORE_DTYPES

# the values a field may hold, where readers rely on more than its type: ``in`` and ``refusal`` (why a value is not)


class _OneOf(tuple):
    def refusal(self) -> str:
        return f"not one of {', '.join(map(str, self))}"


class _Known(_OneOf):
    """The values this release writes; another may be a later release's (a structure of another kind)."""

    def refusal(self) -> str:
        return f"not one this tokembed knows ({', '.join(map(str, self))}; written by a later release?)"


class _AtLeast(int):
    def __contains__(self, value) -> bool:
        return value >= self

    def refusal(self) -> str:
        return f"less than {int(self)}"


class _WholeAtLeast(int):
    """A whole number of at least this, written as an integer or (by an earlier release's library call given
    ``2.0``) a whole float."""

    def __contains__(self, value) -> bool:
        return float(value).is_integer() and value >= self

    def refusal(self) -> str:
        return f"not a whole number of at least {int(self)}"


class _InsideFolder:
    def __contains__(self, value) -> bool:
        name = PurePosixPath(value)
        return bool(name.parts) and not name.is_absolute() and ".." not in name.parts

    def refusal(self) -> str:
        return "not a path inside the index folder"


_DTYPES, _NBITS = _OneOf(STORE_DTYPES), _OneOf(NBITS_CHOICES)
_COUNT, _POSITIVE, _FILE = _AtLeast(0), _AtLeast(1), _InsideFolder()
_WHOLE_POSITIVE = _WholeAtLeast(1)
NUMBER = (int, float)

# REQUIRED: wherever its section is (a field of a missing or null section is not looked for); ENCODED: in a
# manifest tokembed encode wrote, one with a model, settings or flags (a library call with no model writes vectors
# only, searched with vectors); OPTIONAL: missing or null, else of its type. "[]": each entry of a list.
REQUIRED, ENCODED, OPTIONAL = "required", "encoded", "optional"
_ENCODING = ("model", "settings", "flags")

# field, JSON type, when it must be there, the values it may hold (None: any of its type). Parents before their fields.
FIELDS = (
    ("dim", int, REQUIRED, _POSITIVE),
    ("embedding_dtype", str, REQUIRED, _DTYPES),
    ("shards", list, REQUIRED, None),
    ("shards[].file", str, REQUIRED, _FILE),
    ("shards[].rows", int, REQUIRED, _COUNT),
    ("shards[].tokens", int, REQUIRED, _COUNT),
    ("shards[].bytes", int, REQUIRED, _COUNT),
    ("shards[].sha256", str, REQUIRED, None),
    ("totals", dict, REQUIRED, None),
    ("totals.rows", int, REQUIRED, _COUNT),
    ("totals.tokens", int, REQUIRED, _COUNT),
    # what encoding queries for the index (score, serve, an encode re-run) and ``info`` read
    ("model", dict, ENCODED, None),
    ("settings", dict, ENCODED, None),
    ("flags", dict, ENCODED, None),  # its keys: ``embedder.known_keys``
    ("created_at", str, ENCODED, None),
    ("tokembed_version", str, ENCODED, None),
    ("model.name", str, REQUIRED, None),
    ("model.path", str, REQUIRED, None),
    ("model.fingerprint", str, REQUIRED, None),
    ("model.family", str, REQUIRED, None),
    ("model.architecture", str, REQUIRED, None),
    ("model.revision", str, OPTIONAL, None),
    ("model.weights_sha256", str, OPTIONAL, None),
    ("model.is_demo", bool, OPTIONAL, None),
    ("model.base", dict, OPTIONAL, None),
    ("model.base.name", str, REQUIRED, None),
    ("model.base.path", str, OPTIONAL, None),
    ("model.base.revision", str, OPTIONAL, None),
    ("model.base.fingerprint", str, REQUIRED, None),
    ("model.base.adapter_fingerprint", str, REQUIRED, None),
    ("settings.kind", str, REQUIRED, _Known(KINDS)),  # every release wrote one of these
    ("settings.mode", str, REQUIRED, _Known(MODES)),
    ("settings.dtype", str, REQUIRED, None),
    ("settings.normalize", bool, OPTIONAL, None),
    ("settings.pool_factor", NUMBER, OPTIONAL, _WHOLE_POSITIVE),
    ("settings_fingerprint", str, OPTIONAL, None),
    ("colbert", dict, OPTIONAL, None),  # its keys: ``embedder.known_keys``
    ("id_column", str, OPTIONAL, None),
    ("skipped", list, OPTIONAL, None),
    ("ignored", list, OPTIONAL, None),
    ("pdf", dict, OPTIONAL, None),
    ("pdf.files", int, OPTIONAL, _COUNT),
    ("pdf.pages", int, OPTIONAL, _COUNT),
    # an empty generation's record of how its predecessor's structure was asked for
    (SEARCH_SETTINGS, dict, OPTIONAL, None),
    (f"{SEARCH_SETTINGS}.nbits", int, REQUIRED, _NBITS),
    (f"{SEARCH_SETTINGS}.drop_vectors", bool, REQUIRED, None),
    (f"{SEARCH_SETTINGS}.centroids_asked", int, OPTIONAL, _POSITIVE),
    # the search structure (``tokembed.search.plaid``): search, info, and the runs that carry or retrain it
    (SEARCH, dict, OPTIONAL, None),
    (f"{SEARCH}.kind", str, OPTIONAL, _Known((SEARCH_KIND,))),  # every release wrote it; another kind is not searched as plaid
    (f"{SEARCH}.dim", int, OPTIONAL, _POSITIVE),  # every release wrote it; checked against the codec's (``check_codec_agrees``)
    (f"{SEARCH}.codec", dict, REQUIRED, None),
    (f"{SEARCH}.codec.file", str, REQUIRED, _FILE),
    (f"{SEARCH}.codec.bytes", int, REQUIRED, _COUNT),
    (f"{SEARCH}.codec.sha256", str, REQUIRED, None),
    (f"{SEARCH}.shards", list, REQUIRED, None),
    (f"{SEARCH}.shards[].shard", str, REQUIRED, _FILE),
    (f"{SEARCH}.shards[].file", str, REQUIRED, _FILE),
    (f"{SEARCH}.shards[].rows", int, REQUIRED, _COUNT),
    (f"{SEARCH}.shards[].tokens", int, REQUIRED, _COUNT),
    (f"{SEARCH}.shards[].bytes", int, REQUIRED, _COUNT),
    (f"{SEARCH}.shards[].sha256", str, REQUIRED, None),
    (f"{SEARCH}.nbits", int, REQUIRED, _NBITS),
    (f"{SEARCH}.centroids", int, REQUIRED, _POSITIVE),
    (f"{SEARCH}.bytes", int, REQUIRED, _COUNT),
    (f"{SEARCH}.{VECTORS}", str, OPTIONAL, _OneOf((VECTORS_DROPPED,))),
    (f"{SEARCH}.vector_norms", bool, OPTIONAL, None),
    (f"{SEARCH}.training", dict, REQUIRED, None),
    (f"{SEARCH}.training.sample_tokens", int, REQUIRED, _COUNT),
    (f"{SEARCH}.training.index_tokens", int, REQUIRED, _COUNT),
    (f"{SEARCH}.training.centroids_asked", int, OPTIONAL, _POSITIVE),
    (f"{SEARCH}.training.kmeans_centroids", int, OPTIONAL, _POSITIVE),  # more than ``centroids`` where some were identical
    (f"{SEARCH}.drift", dict, REQUIRED, None),
    (f"{SEARCH}.drift.tokens_coded_since_training", int, REQUIRED, _COUNT),
    (f"{SEARCH}.drift.residual_norm_sum_since_training", NUMBER, REQUIRED, None),
    (f"{SEARCH}.drift.share_coded_since_training", NUMBER, REQUIRED, None),
    (f"{SEARCH}.drift.residual_norm_since_training", NUMBER, OPTIONAL, None),  # null until a run codes tokens
    (f"{SEARCH}.drift.residual_norm_at_training", NUMBER, REQUIRED, None),
)


def check_manifest_shape(path: Path, manifest) -> None:
    """Raise ``IndexCorruptError`` naming ``path`` and the first field that is missing, of the wrong type or of a value
    no reader can use."""
    if not isinstance(manifest, dict):
        raise IndexCorruptError(f"{path}: not a tokembed index manifest (a JSON {type(manifest).__name__}, not an object)")
    encoded = any(name in manifest for name in _ENCODING)
    for field, kind, need, values in FIELDS:
        parent, _, name = field.rpartition(".")
        for where, section in _sections(path, manifest, parent):
            _check_field(path, section, where + name, name, kind, need == REQUIRED or (need == ENCODED and encoded), values)
    _shards_add_up(path, manifest)


def _sections(path: Path, manifest: dict, parent: str) -> list[tuple[str, dict]]:
    """(the name to report a field under, the object holding it) for each ``parent`` there is: none under a missing or
    null section (its own row said whether it may be), one per entry of a list."""
    found = [("", manifest)]
    for step in parent.split(".") if parent else []:
        name, each = step.removesuffix("[]"), step.endswith("[]")
        inner = []
        for where, section in found:
            value = section.get(name)
            if value is None:
                continue
            if not each:
                inner.append((f"{where}{name}.", value))
                continue
            for number, entry in enumerate(value):
                if not isinstance(entry, dict):
                    raise IndexCorruptError(f"{path}: {where}{name}[{number}] is a JSON {type(entry).__name__}, not an object")
                inner.append((f"{where}{name}[{number}].", entry))
        found = inner
    return found


def _check_field(path: Path, section: dict, where: str, name: str, kind, required: bool, values) -> None:
    value = section.get(name)
    if value is None and not (required and name in section):
        if required:
            raise IndexCorruptError(f"{path}: no {where}")
        return
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise IndexCorruptError(f"{path}: {where} is {value!r}, not a JSON {_JSON_NAMES[kind]}")
    if values is not None and value not in values:
        raise IndexCorruptError(f"{path}: {where} is {value!r}, {values.refusal()}")


def _shards_add_up(path: Path, manifest: dict) -> None:
    listed: dict[str, int] = {}
    for number, shard in enumerate(manifest["shards"]):
        name = str(PurePosixPath(shard["file"]))
        if name in listed:
            raise IndexCorruptError(f"{path}: shards[{number}].file {shard['file']!r} is listed twice (also shards[{listed[name]}])")
        listed[name] = number
    for name in ("rows", "tokens"):
        total = sum(shard[name] for shard in manifest["shards"])
        if manifest["totals"][name] != total:
            raise IndexCorruptError(f"{path}: totals.{name} is {manifest['totals'][name]}, the shards listed hold {total}")


_JSON_NAMES = {dict: "object", list: "array", int: "integer", str: "string", bool: "boolean", NUMBER: "number"}
