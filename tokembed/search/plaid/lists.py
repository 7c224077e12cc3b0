"""The structure's inverted lists across shards: each centroid's list of every shard, joined into global rows.

Each shard's code file holds its own lists (centroid -> local rows, ascending). A query probes a few hundred
centroids and reads their lists of every shard; read shard by shard that is one slice per list and shard
(at 1M documents in 28 shards: 3.2 ms a query where one joined array per list takes 0.6).

* ``ProbedLists`` (the CPU search): a centroid's lists are joined the first time a query probes it and
  kept, so opening costs nothing and the lists no query probes are never joined (a cold one-query ``score``
  at 1M documents joined everything up front in ~1 s).
* ``GlobalLists`` (the GPU search copies every list to the device at once): all lists joined at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokembed.errors import IndexCorruptError


def ragged(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of every position in the ranges [start, end), in order; the range lengths)."""
    counts = (ends - starts).astype(np.int64)
    firsts = np.repeat(starts.astype(np.int64) - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    return firsts + np.arange(int(counts.sum())), counts


class ProbedLists:
    """Each centroid's global rows (every shard's list, shard by shard, ascending), joined on first use."""

    def __init__(self, structure) -> None:
        check_list_counts(structure)
        self.dtype = np.dtype(np.int32 if structure.rows < 1 << 31 else np.int64)
        k = structure.codec.k
        self.offsets = np.stack([codes.list_offsets.astype(np.int64) for codes in structure.shards]) if structure.shards \
            else np.zeros((0, k + 1), np.int64)  # [shards, K + 1]
        self.sizes = (self.offsets[:, 1:] - self.offsets[:, :-1]).sum(axis=0)  # [K] entries of each joined list
        self._shards = [codes.list_rows for codes in structure.shards]
        self._starts = [self.dtype.type(start) for start in structure.starts[:-1]]
        self._joined: list[np.ndarray | None] = [None] * k  # a slot is set once; two threads may both join it

    def rows_of(self, centroids: list[int]) -> list[np.ndarray]:
        """The joined list of each centroid, in order."""
        joined = self._joined
        missing = [c for c in dict.fromkeys(centroids) if joined[c] is None]
        if missing:
            self._join(np.array(missing, np.int64))
        return [joined[c] for c in centroids]

    def _join(self, missing: np.ndarray) -> None:
        """Join the lists of ``missing`` (distinct centroids) at once and keep each one's (a view of the joined
        rows): a first query at 1M documents joins ~300 lists, ~2 ms against ~8 one list at a time."""
        rows = self.join(missing)
        sizes = self.sizes[missing]
        for c, first, size in zip(missing.tolist(), (np.cumsum(sizes) - sizes).tolist(), sizes.tolist()):
            self._joined[c] = rows[first : first + size]

    def join(self, centroids: np.ndarray) -> np.ndarray:
        """The lists of ``centroids`` (distinct), one after the other, each shard by shard: one gather and one
        scatter per shard rather than one copy per list and shard. Nothing is kept."""
        sizes = self.sizes[centroids]
        out = np.empty(int(sizes.sum()), self.dtype)
        at = np.cumsum(sizes) - sizes  # where each centroid's next shard's entries go in ``out``
        for local, start, offsets in zip(self._shards, self._starts, self.offsets):
            firsts, ends = offsets[centroids], offsets[centroids + 1]
            if not (ends - firsts).any():
                continue
            take, _ = ragged(firsts, ends)
            where, _ = ragged(at, at + ends - firsts)
            out[where] = np.add(local[take], start, dtype=self.dtype, casting="unsafe")
            at += ends - firsts
        return out

    def nbytes(self) -> int:
        """What the joined lists and their counts hold now."""
        return self.offsets.nbytes + self.sizes.nbytes + sum(rows.nbytes for rows in self._joined if rows is not None)


def probed_lists(structure) -> ProbedLists:
    if structure._probed is None:
        with structure._building:
            if structure._probed is None:
                structure._probed = ProbedLists(structure)
    return structure._probed


@dataclass(frozen=True)
class GlobalLists:
    offsets: np.ndarray  # [K + 1] int64: centroid c's list is rows[offsets[c]:offsets[c + 1]]
    rows: np.ndarray  # int32 (int64 past 2**31 rows) global rows: every shard's list of c, shard by shard, ascending


def global_lists(structure) -> GlobalLists:
    if structure._lists is not None:
        return structure._lists
    with structure._building:
        if structure._lists is None:
            structure._lists = _join_lists(structure)
    return structure._lists


def _join_lists(structure) -> GlobalLists:
    """Every list joined at once (``ProbedLists.join`` of every centroid)."""
    lists = ProbedLists(structure)
    rows = lists.join(np.arange(structure.codec.k))
    return GlobalLists(np.concatenate([[0], np.cumsum(lists.sizes)]).astype(np.int64), rows)


def check_list_counts(structure) -> None:
    for number, codes in enumerate(structure.shards):
        if int(codes.list_offsets[-1]) != len(codes.list_rows):
            raise IndexCorruptError(f"the code file of shard {number} has {len(codes.list_rows)} list entries where its counts say "
                                    f"{int(codes.list_offsets[-1])}: search with --exact")
