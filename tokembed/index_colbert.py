"""The ColBERT settings that encode queries for an index: those it was encoded with, but those only queries read
(no document depends on them) as this release reads the checkpoint, as a rebuild records them. An earlier release
that read them otherwise (a Transformer's ``query_length`` taken for the expansion width) recorded queries that
neither this release nor the reference encodes.

Where this release reads what the documents depend on otherwise (a document length, a reading of the weights:
``models.readings``), the index's documents are not what a rebuild gives until its next encode run re-encodes them;
the queries are scored against them with a warning that says so.
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace

from tokembed.models.readings import DTYPE_READINGS
from tokembed.settings import ColbertConfig, known_keys

QUERY_ONLY_COLBERT = ("query_prefix", "query_length", "expand_queries", "attend_to_expansion_tokens", "expansion_token",
                      "expansion_side")


def index_colbert(manifest: dict, read: ColbertConfig | None = None) -> ColbertConfig | None:
    """The ColBERT settings that encode queries for an index (None: none); ``read``: the checkpoint's own. An index
    of queries (``--kind query``) keeps its own: its vectors are queries encoded with them."""
    if not manifest.get("colbert"):
        return None
    recorded = ColbertConfig.from_json(known_keys(manifest["colbert"], ColbertConfig, "colbert"))
    if read is None or (manifest.get("settings") or {}).get("kind") == "query":
        return recorded
    return replace(recorded, **{name: getattr(read, name) for name in QUERY_ONLY_COLBERT})


class IndexColbert:
    """``Embedder.load``'s ColBERT override for an index (``index_colbert``), called with the checkpoint's own
    settings; it keeps them to tell what this release reads otherwise than the release that encoded the documents."""

    def __init__(self, manifest: dict):
        self.manifest = manifest
        self.read: ColbertConfig | None = None

    def __call__(self, read: ColbertConfig | None) -> ColbertConfig | None:
        self.read = read
        return index_colbert(self.manifest, read)

    def warn_of_documents_read_otherwise(self, reading: tuple[str, ...], dtype: str) -> None:
        """A ``tokembed: warning:`` line naming what the documents were encoded without (``reading``: the model's,
        loaded in ``dtype``)."""
        changed = documents_read_otherwise(self.manifest, self.read, reading, dtype)
        if changed:
            logging.getLogger("tokembed").warning(
                "the index's documents were encoded by a release that read the checkpoint otherwise (%s): they are "
                "not the vectors a rebuild gives until the next encode run re-encodes them", "; ".join(changed))


def documents_read_otherwise(manifest: dict, read: ColbertConfig | None, reading: tuple[str, ...],
                             dtype: str) -> list[str]:
    """What this release reads otherwise than the one that encoded a document index: ColBERT settings documents
    depend on, and readings of the checkpoint's files (``models.readings``, ``reading`` as loaded in ``dtype``)
    its settings do not name; one that depends on the dtype only where the documents were encoded in that dtype (a
    GPU's bfloat16 index scored on a CPU in float32 has none)."""
    settings = manifest.get("settings") or {}
    if settings.get("kind") != "document":
        return []
    same_dtype = settings.get("dtype") == dtype
    changed = [f"reading {name!r}" for name in reading
               if name not in (settings.get("reading") or ()) and (same_dtype or name not in DTYPE_READINGS)]
    recorded = index_colbert(manifest)
    if recorded is not None and read is not None:
        shared = [field.name for field in fields(ColbertConfig) if field.name not in QUERY_ONLY_COLBERT]
        changed += [f"{name} {getattr(recorded, name)!r}, now {getattr(read, name)!r}" for name in shared
                    if getattr(recorded, name) != getattr(read, name)]
    return changed
