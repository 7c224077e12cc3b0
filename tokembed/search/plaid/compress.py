"""``compress_index``: the library call behind ``tokembed compress INDEX_DIR``.

Adds (or refreshes) the search structure of the committed index without re-encoding anything, as a new
generation: under the writer lock, code files first (each durable on its own), then the manifest replace,
then removal of structure files no manifest lists. Killed at any point, the previous manifest stays valid
and the next run resumes from the codec and code files already on disk. SIGINT/SIGTERM are held from the
manifest replace until that removal is done (``index.commit_window``).

``drop_vectors=True`` (``--drop-vectors``) also rewrites the shards without their vectors in the same
generation (``drop.py``); after the commit the old shards are removed, and with them the vectors' bytes
(by any later ``compress`` too, where a drop was cut short after its commit).
A compressed-only index keeps its centroids: ``retrain``, another ``nbits`` or ``centroids`` need vectors
and are refused (``VectorsDroppedError``, exit 2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tokembed._testhooks import fault_point
from tokembed.index.format import vectors_dropped
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
    vectors: str = "stored"  # or "dropped": the shards hold no vectors (--drop-vectors)
    shard_bytes: int = 0  # the committed generation's shards

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
    drop_vectors: bool = False,
    progress=None,
) -> CompressSummary:
    from tokembed.index.commit_window import commit_window
    from tokembed.index.lock import IndexLock, check_wait
    from tokembed.index.reader import open_index
    from tokembed.search.plaid.codec import checked_centroids, checked_nbits
    from tokembed.search.plaid.drop import drop_vectors as without_vectors, remove_abandoned_drop

    folder = Path(folder)
    started = time.perf_counter()
    if nbits is not None:
        nbits = checked_nbits(nbits)
    if centroids is not None:
        centroids = checked_centroids(centroids)  # before any work or log line
    check_wait(wait_seconds)
    index = open_index(folder, structure=False)  # a missing index fails before the lock file is created
    with IndexLock(folder, wait_seconds):
        index = open_index(folder, structure=False)  # its code files are read under the lock, by path
        index.verify(checksums=False)  # sizes and counts: the structure maps documents by the manifest's counts
        check_compressible(index)
        current = index.manifest.get(SEARCH)
        wanted = nbits or (current["nbits"] if current else DEFAULT_NBITS)
        manifest = refresh_structure(folder, index.manifest, index.manifest, StructureOptions(wanted, centroids, retrain), log=log,
                                     progress=progress)
        dropping = drop_vectors and not vectors_dropped(manifest)
        if dropping:
            forget_interrupted_encode(folder)
            manifest = without_vectors(folder, manifest, log)
        fault_point("commit", 1)
        with commit_window():  # an interrupt from here on stops the run after its clean-up
            commit_manifest(folder, manifest)
            fault_point("committed", 1)
            if vectors_dropped(manifest):  # this drop's replaced shards, or an earlier one's cut short after its commit
                remove_replaced_shards(folder, manifest)
            else:
                remove_abandoned_drop(folder, manifest)
            remove_unlisted_files(folder, manifest)  # the pending record of a drop among them
        index.write_verified()  # the shards hashed to train and code: once, not once per shard
    structure = manifest[SEARCH]
    return CompressSummary(
        index=str(folder), nbits=structure["nbits"], centroids=structure["centroids"], rows=index.rows,
        tokens=index.tokens, coded_tokens=structure["last_run"]["coded_tokens"],
        carried_tokens=structure["last_run"]["carried_tokens"], structure_bytes=structure["bytes"],
        seconds=time.perf_counter() - started, vectors="dropped" if vectors_dropped(manifest) else "stored",
        shard_bytes=sum(shard["bytes"] for shard in manifest["shards"]),
    )


def forget_interrupted_encode(folder: Path) -> None:
    """An interrupted ``encode`` must not resume onto a compressed-only index: its journaled shards hold vectors."""
    from tokembed.index.journal import JOURNAL

    (folder / JOURNAL).unlink(missing_ok=True)


def remove_replaced_shards(folder: Path, manifest: dict) -> None:
    """After committing a compressed-only generation: every shard it does not list (those with vectors: the freed
    space) but the ones an interrupted ``encode`` of that index journaled, which its next run resumes from."""
    from tokembed.index.format import DATA_DIR
    from tokembed.index.journal import journaled_shards
    from tokembed.index.writer import remove_unlisted_shards

    listed = {Path(shard["file"]).name for shard in manifest["shards"]}
    remove_unlisted_shards(folder / DATA_DIR, listed | journaled_shards(folder))
