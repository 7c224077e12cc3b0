"""Search with the structure: candidates from the inverted lists, approximate scores, exact re-rank.

Per query ``Q`` [n, D]:

1. ``S = Q @ C.T`` [n, K]; each query token probes its best ``probe`` centroids.
2. An approximate MaxSim of every document that holds a token of a probed centroid, from centroids only:
   for query token i, a document's best probed centroid score if it has one, else the score of i's last
   probed centroid less a margin (WARP imputes that score itself, an upper bound on what it misses).
   Documents no probe reaches cannot be candidates.
3. The best ``CENTROID_POOL * candidates`` by that score are scored again with every token replaced by its
   centroid (PLAID's centroid interaction, from the stored centroid ids: no vectors read).
4. The best ``candidates`` of those are re-ranked with exact MaxSim from the stored vectors
   (``rerank="vectors"``) or from the decompressed codes (``rerank="codes"``, for compressed-only use).
(``candidates.py`` holds stages 1-3, ``rerank.py`` stage 4, ``shard_reads.py`` the reads of the shard files.)

With ``probe >= K`` and ``candidates >= rows`` every document with a token is re-ranked exactly: the result
is the exhaustive scan's (tests check it). Ties break by index order, as in the scan. The structure's files
are memory-mapped; per query only the probed lists and the candidates' rows are read. The candidates'
vectors and the hits' ids come from the shard files by positioned reads (the page cache, not the memory
map), so searching keeps no shard pages resident however many queries it answers.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokembed.errors import IndexCorruptError, IndexReplacedError, UsageError
from tokembed.index.format import vectors_dropped
from tokembed.search.plaid.build import SEARCH
from tokembed.search.plaid.retrain import refuse_unit_codes_without_vectors
from tokembed.search.plaid.candidates import best_by_centroids, candidate_rows, scratches
from tokembed.search.plaid.codec import Codec, needs_vector_norms
from tokembed.search.plaid.codes import ShardCodes
from tokembed.search.plaid.files import check_codec_agrees, check_structure_lists_shards, held_open, map_tensors, verify_files
from tokembed.search.plaid.products import centroid_scores
from tokembed.search.plaid.rerank import exact_scores
from tokembed.search.plaid.shard_reads import doc_id
from tokembed.search.plaid.threads import map_queries

# bench/search.py at 1M documents on a real ``compress`` (65,536 centroids, Intel host; README, "Search with the
# structure"): probe 24 / 384 candidates from a pool of 5x as many: recall@10 0.969 at p50 21.9 ms on 2 cores, 47.7
# queries/s batched on query threads (compressed-only 0.901); the earlier probe 32 / 512 from 4x: 0.986 at 28.8 ms, 36.4 q/s (0.907);
# probe 24 / 512 from 4x: 0.981 at 26.4 ms; probe 20 / 384 from 5x: 0.959 (one thread 25.2 against 27.1 ms).
# Probing more centroids finds more of the best documents than pre-scoring more of them from their centroids.
DEFAULT_PROBE = 24
DEFAULT_CANDIDATES = 384
CENTROID_POOL = 5  # stage 1 keeps this many times ``candidates`` for the centroid-interaction stage
_OPEN_ATTEMPTS = 5


@dataclass
class Structure:
    codec: Codec
    shards: list[ShardCodes]
    starts: np.ndarray  # [n_shards + 1] first global row of each shard
    _vectors: dict = field(default_factory=dict, repr=False)  # shard number -> shard_reads.ShardBatches, read on first use
    _probed: object = field(default=None, repr=False)  # lists.ProbedLists, made on first use
    _lists: object = field(default=None, repr=False)  # lists.GlobalLists (the GPU search's), joined on first use
    _on_device: dict = field(default_factory=dict, repr=False)  # torch device -> on_device.DeviceArrays, copied on first use
    _building: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one thread fills the three above

    @property
    def rows(self) -> int:
        return int(self.starts[-1])


def has_structure(index) -> bool:
    return bool(index.manifest.get(SEARCH))


def open_searchable(folder: Path | str, verify: bool = True):
    """(Index, Structure or None) of one committed generation, every file of it held open.

    A file that vanishes between reading the manifest and mapping it belongs to a generation a writer just
    replaced: read the manifest again (as ``open_index`` does for shards).
    """
    from tokembed.index.reader import kept_changing, open_index, replaced_is_not_corrupt

    for _ in range(_OPEN_ATTEMPTS):
        index = open_index(folder)
        if not has_structure(index):
            return index, None
        try:
            with replaced_is_not_corrupt(index):
                return index, open_structure(index, verify)
        except IndexReplacedError:
            continue
        except IndexCorruptError as exc:
            if exc.hint is None and not vectors_dropped(index.manifest):
                exc.hint = "score --exact still searches the vectors; tokembed compress --retrain rebuilds the structure"
            raise
    raise kept_changing(folder, "opened")


def open_structure(index, verify: bool = True) -> Structure:
    """Map the codec and every shard's code file (sizes always checked, sha256 when ``verify``; of the shards too
    where they hold no vectors): the files ``open_index`` opened with the index's shards, which a later commit's
    removal of them does not take from a reader holding the index."""
    structure = index.manifest[SEARCH]
    entries = structure["shards"]
    check_structure_lists_shards(index.folder, index.manifest)
    with _held_files(index, [structure["codec"], *entries]) as opened:
        verify_files(index.folder, [structure["codec"], *entries], verify, opened=opened)
        for shard in _vectorless_shards(index):  # the files the index holds open, as the scan checks them
            index.verify_shard(shard, verify, remembered=True)
        if verify:
            index.write_verified()
        codec, shards = _mapped_structure(index, opened)
        if vectors_dropped(index.manifest) and needs_vector_norms(index.manifest) and not codec.vector_norms:
            refuse_unit_codes_without_vectors(index.folder, True)  # its decoded vectors would all score as unit length
    if codec.vector_norms and vectors_dropped(index.manifest) and any(codes.vector_norms is None for codes in shards):
        refuse_unit_codes_without_vectors(index.folder, True)  # code files an earlier release's cron run wrote
    starts = np.cumsum([0] + [entry["rows"] for entry in entries]).astype(np.int64)
    return Structure(codec, shards, starts)


@contextmanager
def _held_files(index, entries: list[dict]):
    """The index's own open structure files; opened now by path for an ``Index`` made without them, where a commit
    since may have removed them: ``IndexReplacedError`` then, not corruption."""
    held = index.structure_files(entries)
    if held is not None:
        yield held
        return
    from tokembed.index.reader import replaced_is_not_corrupt

    with replaced_is_not_corrupt(index), held_open(index.folder, entries) as opened:
        yield opened


def check_structure(index, checksum: bool) -> None:
    """What ``open_structure`` checks of the structure's files (``info``): listed as the manifest's shards, sizes, the
    codec's nbits and centroids, each code file's rows and tokens; with ``checksum`` every file hashed (none taken on
    an earlier match's word). The shards themselves are the caller's (``Index.verify``)."""
    structure = index.manifest[SEARCH]
    check_structure_lists_shards(index.folder, index.manifest)
    entries, matched = [structure["codec"], *structure["shards"]], []
    for start in range(0, len(entries), _CHECKED_AT_ONCE):  # not all at once: a file and its map each, beside the shards
        some = entries[start : start + _CHECKED_AT_ONCE]
        with _held_files(index, some) as opened:
            verify_files(index.folder, some, checksum, remembered=False, opened=opened, pending=matched)
            for entry in some:
                if entry is structure["codec"]:
                    _mapped_codec(index, opened)
                else:
                    _open_codes(index.folder, entry, opened[entry["file"]])
    if matched:
        from tokembed.index.verified import VerifiedFiles

        VerifiedFiles(index.folder).remember(matched)


_CHECKED_AT_ONCE = 8  # files hashed at once (verify_files' threads), then mapped and let go: info holds the shards too


def _mapped_structure(index, opened) -> tuple[Codec, list[ShardCodes]]:
    """The codec and code files the manifest lists (``opened``: ``held_open``), refused where they are not what it
    says they are."""
    structure = index.manifest[SEARCH]
    return _mapped_codec(index, opened), [_open_codes(index.folder, entry, opened[entry["file"]]) for entry in structure["shards"]]


def _mapped_codec(index, opened) -> Codec:
    structure = index.manifest[SEARCH]
    codec_path = index.folder / structure["codec"]["file"]
    tensors, metadata = map_tensors(codec_path, opened[structure["codec"]["file"]])
    check_codec_agrees(codec_path, tensors, metadata, structure, index)
    return Codec.from_tensors(tensors, metadata)


def _vectorless_shards(index) -> list[dict]:
    """The shards of a compressed-only index, hashed with its code files: the hits' ids are read from them by
    positioned reads that nothing else checks, and without vectors they are small (~5 B a token). A shard that
    keeps its vectors is hashed by the exhaustive scan alone (README, "Hashing once")."""
    return index.shards if vectors_dropped(index.manifest) else []


def _open_codes(folder: Path, entry: dict, opened) -> ShardCodes:
    codes = ShardCodes.open(folder / entry["file"], opened)
    if codes.rows != entry["rows"] or len(codes.centroid_ids) != entry["tokens"]:
        raise IndexCorruptError(f"{folder / entry['file']}: rows/tokens do not match the manifest")
    return codes


def check_search_options(probe: int, candidates: int) -> None:
    if probe < 1:
        raise UsageError(f"--probe {probe}: must be at least 1")
    if candidates < 1:
        raise UsageError(f"--candidates {candidates}: must be at least 1")


def plaid_search(
    index,
    structure: Structure,
    queries: list[np.ndarray],
    top_k: int,
    probe: int = DEFAULT_PROBE,
    candidates: int = DEFAULT_CANDIDATES,
    rerank: str = "vectors",
    device: str | None = None,
) -> list[list[tuple[str, float]]]:
    """Per query the best ``top_k`` (doc id, score), best first (see the module docstring). ``device``: a torch
    device for the candidate stages (``on_device``); None runs them in numpy on the CPU."""
    from tokembed.search.maxsim import check_query_dims

    check_search_options(probe, candidates)
    check_query_dims(queries, index.dim)
    return map_queries(lambda q: _one_query(index, structure, np.asarray(q, np.float32), top_k, probe, max(candidates, top_k), rerank, device), queries,
                       processes=device is None)


def _rows_with_tokens(structure: Structure, count: int) -> list[int]:
    """The first ``count`` global rows that hold a token (a 0-token document is in no list: never returned)."""
    rows: list[int] = []
    for start, shard in zip(structure.starts.tolist(), structure.shards):
        found = np.flatnonzero(np.diff(shard.doc_offsets) > 0)[: count - len(rows)]
        rows += (found + start).tolist()
        if len(rows) >= count:
            break
    return rows


def _one_query(index, structure: Structure, q: np.ndarray, top_k: int, probe: int, candidates: int, rerank: str, device: str | None = None):
    if not len(q):  # an empty query scores 0 against every document with a token: the first ones in index order
        return [(doc_id(index, structure, int(r)), 0.0) for r in _rows_with_tokens(structure, top_k)]
    if device is None:
        sims = centroid_scores(structure.codec, q, scratches.array("sims", (len(q), structure.codec.k), np.float32))
        pool = candidate_rows(structure, sims, probe, CENTROID_POOL * candidates, np.linalg.norm(q, axis=1))
        rows = best_by_centroids(structure, sims, pool, candidates)
    else:
        from tokembed.search.plaid.on_device import device_candidates

        rows = device_candidates(structure, q, probe, CENTROID_POOL * candidates, candidates, device)
    if not len(rows):
        return []
    scores = exact_scores(index, structure, q, rows, rerank)
    order = np.lexsort((rows, -scores))[:top_k]  # best first; equal scores in index order
    return [(doc_id(index, structure, int(rows[i])), float(scores[i])) for i in order]
