"""``compress_index``: the library call behind ``tokembed compress INDEX_DIR``.

Adds (or refreshes) the search structure of the committed index without re-encoding anything, as a new
generation: under the writer lock, code files first (each durable on its own), then the manifest replace,
then removal of structure files no manifest lists. Killed at any point, the previous manifest stays valid
and the next run resumes from the codec and code files already on disk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tokembed._testhooks import fault_point
from tokembed.search.plaid.build import (
    DEFAULT_NBITS,
    SEARCH,
    StructureOptions,
    check_compressible,
    commit_manifest,
    refresh_structure,
    remove_unlisted_files,
)


@dataclass
class CompressSummary:
    index: str
    nbits: int
    centroids: int
    rows: int
    tokens: int
    coded_tokens: int
    carried_tokens: int
    structure_bytes: int
    seconds: float

    def to_json(self) -> dict:
        return {**self.__dict__, "seconds": round(self.seconds, 3),
                "bytes_per_token": round(self.structure_bytes / self.tokens, 3) if self.tokens else None}


def compress_index(
    folder: Path | str,
    nbits: int | None = None,
    centroids: int | None = None,
    retrain: bool = False,
    wait_seconds: float = 0.0,
    log=lambda message: None,
) -> CompressSummary:
    from tokembed.index.lock import IndexLock
    from tokembed.index.reader import open_index
    from tokembed.search.plaid.codec import check_nbits

    folder = Path(folder)
    started = time.perf_counter()
    if nbits is not None:
        check_nbits(nbits)
    index = open_index(folder)  # a missing index fails before the lock file is created
    with IndexLock(folder, wait_seconds):
        index = open_index(folder)
        check_compressible(index)
        current = index.manifest.get(SEARCH)
        wanted = nbits or (current["nbits"] if current else DEFAULT_NBITS)
        manifest = refresh_structure(folder, index.manifest, StructureOptions(wanted, centroids, retrain), log=log)
        fault_point("commit", 1)
        commit_manifest(folder, manifest)
        remove_unlisted_files(folder, manifest)
    structure = manifest[SEARCH]
    return CompressSummary(
        index=str(folder), nbits=structure["nbits"], centroids=structure["centroids"], rows=index.rows,
        tokens=index.tokens, coded_tokens=structure["last_run"]["coded_tokens"],
        carried_tokens=structure["last_run"]["carried_tokens"], structure_bytes=structure["bytes"],
        seconds=time.perf_counter() - started,
    )
