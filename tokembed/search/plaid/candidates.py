"""Candidate generation: the documents the probed centroids reach, ranked by approximate MaxSim scores.

Stage 1 (``candidate_rows``): for query token i and its ``probe`` best centroids (scores ``S[i, c]``), a
document's approximate score for i is the best score among the probed centroids it has a token of, else the
score of i's worst probed centroid less ``IMPUTE_MARGIN`` (WARP imputes that score itself, an upper bound on
what the document misses). The approximate MaxSim is the sum over query tokens; a document no probe reaches
cannot be a candidate.

Each centroid's inverted lists of every shard are joined into one array of global rows the first time a
query probes it (``lists.ProbedLists``, 4 bytes per (centroid, document) pair), so a query reads each
probed list as one array. The distinct rows reached are numbered (a row-sized flag and position scratch,
each query clearing what it set), and a [query tokens, rows reached] matrix takes each list's gain over the
imputed score, rank by rank in ascending order (a better probed centroid of the same row overwrites; faster
than one ``maximum.at``); its column sums are the scores. Work in proportion to the entries read, never to
the index's rows: 8.7 ms at 1M documents where a per-query-token loop took 10.7. (Threads do not pay here:
split by shards over 2 cores, stage 1 took longer, in numpy and in torch alike.)

Stage 2 (``best_by_centroids``, PLAID's centroid interaction): the stage-1 pool is scored again with every
token of each document replaced by its centroid, i.e. MaxSim over all its tokens' centroid ids rather than
over the probed lists only, and the best of those go on to the exact re-rank. (A helper thread scoring half
the pool did not pay either: whole queries at 1M, 23.2 ms without it, 24.1 with it.)
"""

from __future__ import annotations

import math
import threading

import numpy as np

from tokembed.errors import IndexCorruptError
from tokembed.search.plaid.lists import probed_lists, ragged


# A document none of a query token's probed centroids reach is imputed the worst probed score less this margin
# (cosine units: times the query token's norm, which scales its scores with the unit-length centroids). WARP
# imputes the worst probed score itself, an upper bound, which ranks documents that match few query tokens as
# high as ones that match many. At 1M documents (bench/search.py) the best 10 were among
# stage 1's best 2,560 for 0.96 of the queries with no margin, 0.99 with 0.1 (0.98 with 0.05, 1.0 with 0.2,
# 0.99 with 1.0); at 20k documents, where every margin finds them, it made no difference.
IMPUTE_MARGIN = 0.1


def probed_centroids(sims: np.ndarray, probe: int, norms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [n, p], gains [n, p]): each query token's best ``p`` centroids, worst first, with each
    one's score over the imputed score (the worst probed one's less ``IMPUTE_MARGIN`` x the token's norm,
    ``norms`` [n]; 1 when not given)."""
    p = min(probe, sims.shape[1])
    probed = best_columns(sims, p)
    values = np.take_along_axis(sims, probed, axis=1)
    order = np.argsort(values, axis=1, kind="stable")  # ascending: a later (better) centroid overwrites
    probed, values = np.take_along_axis(probed, order, 1), np.take_along_axis(values, order, 1)
    margins = np.float32(IMPUTE_MARGIN) * (np.float32(1) if norms is None else np.asarray(norms, np.float32)[:, None])
    return probed, values - (values[:, :1] - margins)


TOP_BLOCK = 128  # centroids per block in ``best_columns``


def best_columns(sims: np.ndarray, p: int) -> np.ndarray:
    """[n, p] each row's ``p`` highest columns, unordered; at the cut, of equal values the lowest columns, as
    ``Codec.assign`` gives a token the lowest of equally good centroids (an earlier release could train identical
    centroids: probing the highest of them found none of their tokens).

    One ``argpartition`` over 65,536 centroids per query token costs ~0.5 ms; instead each row's columns are
    dealt into blocks of ``TOP_BLOCK`` (block j: columns j, j + K / TOP_BLOCK, ...; the last K % TOP_BLOCK columns
    always kept), and only the ``p`` blocks with the highest maxima are partitioned: they hold every value above
    the row's p-th best (~8x faster). Strided blocks, because numpy takes the maxima over an outer axis in SIMD,
    ~4x faster than over contiguous runs of 128 (0.45 vs 1.7 ms for 32 x 65,536)."""
    n, k = sims.shape
    blocks, tail = k // TOP_BLOCK, k % TOP_BLOCK
    if 4 * p > blocks:  # too few blocks to leave any out: partition the whole row
        return _lowest_at_cut(sims, None, p)[0]
    maxima = sims[:, : k - tail].reshape(n, TOP_BLOCK, blocks).max(axis=1)
    chosen = np.argpartition(maxima, blocks - p, axis=1)[:, blocks - p :]
    columns = (chosen[:, :, None] + np.arange(0, k - tail, blocks)).reshape(n, -1)
    if tail:
        columns = np.concatenate([columns, np.broadcast_to(np.arange(k - tail, k), (n, tail))], axis=1)
    # a flat take (mode "clip": unbuffered; every index is in range) runs ~2x faster than take_along_axis
    values = np.take(sims.reshape(-1), columns + (np.arange(n) * k)[:, None], mode="clip")
    best, cut = _lowest_at_cut(values, columns, p)
    # more than p blocks reach the cut: one left out holds the cut's value too (maybe in lower columns)
    rows = np.flatnonzero(np.count_nonzero(maxima >= cut[:, None], axis=1) > p)
    if len(rows):
        best[rows] = _lowest_at_cut(sims[rows], None, p)[0]
    return best


def _lowest_at_cut(values: np.ndarray, columns: np.ndarray | None, p: int) -> tuple[np.ndarray, np.ndarray]:
    """([n, p] the ``columns`` (None: 0, 1, ...) of each row's ``p`` highest ``values``, of equal values at the cut
    the lowest columns; [n] the cut, each row's p-th highest value). ``argpartition`` takes any of equal values:
    only rows where some of the cut's value are left out are decided again."""
    n, m = values.shape
    best = np.argpartition(values, m - p, axis=1)[:, m - p :]
    cut = values[np.arange(n), best[:, 0]]  # the partition's pivot: the p-th highest
    for row in _left_out_at_cut(values, cut, p).tolist():
        above, equal = np.flatnonzero(values[row] > cut[row]), np.flatnonzero(values[row] == cut[row])
        if columns is not None:
            equal = equal[np.argsort(columns[row, equal], kind="stable")]
        best[row] = np.concatenate([above, equal[: p - len(above)]])
    return (best if columns is None else np.take_along_axis(columns, best, 1)), cut


def _left_out_at_cut(values: np.ndarray, cut: np.ndarray, p: int) -> np.ndarray:
    """The rows with more than ``p`` values at or above their ``cut``, the p-th highest: some equal to it left out
    (rare: counted per row only where the count over all rows, ~2x cheaper, is more than ``p`` a row)."""
    reach = values >= cut[:, None]
    if np.count_nonzero(reach) == len(reach) * p:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.count_nonzero(reach, axis=1) > p)


def candidate_rows(structure, sims: np.ndarray, probe: int, candidates: int, norms: np.ndarray | None = None) -> np.ndarray:
    """Global rows of the best ``candidates`` documents by the stage-1 score (ties: the lower row), sorted.

    ``sims`` [n, K]: the query tokens' scores with every centroid."""
    rows, scores = approximate_scores(structure, sims, probe, norms)
    return np.sort(rows[_best(scores, candidates)])


def approximate_scores(structure, sims: np.ndarray, probe: int, norms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(every row a probe reaches, ascending; its summed gain over the imputed scores, float32)."""
    probed, gains = probed_centroids(sims, probe, norms)
    lists = probed_lists(structure)
    n, p = probed.shape
    wanted = probed.T.reshape(-1)  # (rank, query token) order: one assignment per rank below
    per_list = lists.sizes[wanted]
    members = scratches.array("members", int(per_list.sum()), lists.dtype)
    np.concatenate(lists.rows_of(wanted.tolist()) or [members[:0]], out=members)
    found = _reached(structure, members)
    # rows -> positions in ``found``, then one [n, found] gain matrix: query token i's gain for a row is the
    # gain of its best probed list holding the row, so the ranks are assigned in ascending order
    dtype = np.int32 if n * len(found) < 1 << 31 else np.int64  # narrower: ~0.4 ms less at 1M documents
    position = scratches.positions(structure.rows, dtype)
    position[found] = np.arange(len(found), dtype=dtype)
    local = np.take(position, members, out=scratches.array("local", len(members), dtype), mode="clip")
    local += np.repeat(np.tile(np.arange(n, dtype=dtype) * len(found), p), per_list)
    best = scratches.array("best", (n, len(found)), np.float32)
    best.fill(0)
    bounds = np.concatenate([[0], np.cumsum(per_list.reshape(p, n).sum(axis=1))]).tolist()
    flat, values = best.reshape(-1), np.repeat(gains.T.reshape(-1), per_list)
    for r in range(p):  # within one rank every (query token, row) pair is distinct
        flat[local[bounds[r] : bounds[r + 1]]] = values[bounds[r] : bounds[r + 1]]
    return found, best.sum(axis=0, dtype=np.float32)


def _reached(structure, members: np.ndarray) -> np.ndarray:
    """The distinct rows of ``members``, ascending (a row-sized flag buffer, cleared again)."""
    reached, found = scratches.flags(structure.rows), None
    try:
        reached[members] = True
        found = np.flatnonzero(reached)
    finally:  # the buffer must be clear for the next query whatever happened (the distinct rows: fewer writes)
        reached[members if found is None else found] = False
    return found


def _best(scores: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` highest scores; at the cut, equal scores go to the lower positions."""
    if len(scores) <= count:
        return np.arange(len(scores))
    cut = np.partition(scores, len(scores) - count)[len(scores) - count]
    above = np.flatnonzero(scores > cut)
    return np.concatenate([above, np.flatnonzero(scores == cut)[: count - len(above)]])


def best_by_centroids(structure, sims: np.ndarray, rows: np.ndarray, keep: int) -> np.ndarray:
    """The best ``keep`` of ``rows`` (global, sorted) by centroid-interaction MaxSim, sorted by row."""
    if len(rows) <= keep:
        return rows

    def centroid_ids(number: int, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = structure.shards[number]
        take, counts = ragged(codes.doc_offsets[local], codes.doc_offsets[local + 1])
        return codes.centroid_ids[take], counts

    pieces = per_shard(structure, rows, centroid_ids)
    ids, counts = np.concatenate([i for i, _ in pieces]), np.concatenate([c for _, c in pieces])
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # [n, document tokens] gathered column by column (transposing sims would cost more than the rest)
    if len(ids) and int(ids.max()) >= sims.shape[1]:  # checked here so that the take below may clip (faster)
        raise IndexCorruptError(f"a code file of this index holds a centroid id >= {sims.shape[1]}: search with --exact")
    gathered = np.take(sims, ids, axis=1, out=scratches.array("centroid_sims", (len(sims), len(ids)), sims.dtype), mode="clip")
    scores = np.maximum.reduceat(gathered, firsts, axis=1).sum(axis=0)
    return np.sort(rows[np.lexsort((rows, -scores))[:keep]])


def per_shard(structure, rows: np.ndarray, function) -> list:
    """``[function(shard number, its rows local to the shard) for each shard holding some of rows]`` (rows
    global and sorted), in shard order."""
    numbers = np.searchsorted(structure.starts, rows, side="right") - 1
    bounds = [0, *(np.flatnonzero(np.diff(numbers)) + 1).tolist(), len(rows)] if len(rows) else [0]
    return [function(int(numbers[a]), rows[a:b] - structure.starts[numbers[a]]) for a, b in zip(bounds[:-1], bounds[1:])]


class _Scratch(threading.local):
    """Per-thread buffers reused across queries. ``flags``: row-sized, kept clear (each query clears what it
    set); ``positions``: row-sized, contents undefined. ``array``: query-sized working arrays, contents undefined. Fresh memory costs a page fault per
    4 KB on first write: measured ~4 ms of a 12.5 ms query at 20k documents before these were reused."""

    def flags(self, rows: int) -> np.ndarray:
        """A row-sized bool buffer, all False (each query clears what it set)."""
        if len(getattr(self, "reached", ())) != rows:
            self.reached = np.zeros(rows, bool)
        return self.reached

    def positions(self, rows: int, dtype=np.int32) -> np.ndarray:
        """A row-sized integer buffer, contents undefined."""
        position = getattr(self, "position", None)
        if position is None or len(position) != rows or position.dtype != dtype:
            self.position = np.empty(rows, dtype)
        return self.position

    def array(self, name: str, shape, dtype) -> np.ndarray:
        """An uninitialised array on this thread's buffer ``name``, valid until the next call for ``name``."""
        dtype = np.dtype(dtype)
        size = int(math.prod(shape if isinstance(shape, tuple) else (shape,))) * dtype.itemsize  # not np.prod: ~20x its cost on a tuple, under the GIL
        if size > SCRATCH_KEEP_BYTES:  # an outsized query: not kept for the thread's lifetime
            return np.empty(shape, dtype)
        named = self.__dict__.setdefault("named", {})
        buffer = named.get(name)
        if buffer is None or len(buffer) < size:
            buffer = named[name] = np.empty(max(size, 3 * len(buffer) // 2 if buffer is not None else 0), np.uint8)
        return buffer[:size].view(dtype).reshape(shape)


SCRATCH_KEEP_BYTES = 64 << 20
scratches = _Scratch()
