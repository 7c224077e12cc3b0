"""The exact re-rank: each candidate document's MaxSim with the query, from its stored vectors
(``rerank="vectors"``) or from its decoded codes (``rerank="codes"``, a compressed-only index).

The candidates' tokens go through in blocks of whole documents, about ``RERANK_BLOCK_TOKENS`` each: a block's
vectors are read (or decoded) into a float32 buffer, multiplied with the query and reduced to one score per
document while they are still in the cache. Reading all of a query's candidates into one matrix first (512
candidates at 1M documents: ~36k tokens, 18 MB as float32) made the float16 cast and the product stream
through memory: one query on one thread, 10.3-10.6 ms for the re-rank against 7.0-7.2 ms in blocks of 512-1,024
tokens (8.5 against 6.3 ms on both cores). The per-document reads are all prefetched before the first block.
"""

from __future__ import annotations

import numpy as np

from tokembed.errors import IndexCorruptError
from tokembed.index.format import require_vectors
from tokembed.search.plaid.candidates import per_shard, scratches
from tokembed.search.plaid.imported import imported_torch
from tokembed.search.plaid.lists import ragged
from tokembed.search.plaid.products import token_scores
from tokembed.search.plaid.shard_reads import prefetch, read_exactly, shard_batches

RERANK_BLOCK_TOKENS = 1024


def exact_scores(index, structure, q: np.ndarray, rows: np.ndarray, rerank: str) -> np.ndarray:
    """Exact MaxSim of ``q`` with each row (global, sorted, each with at least one token), float32."""
    groups = per_shard(structure, rows, lambda number, local: (number, local, *_token_ranges(index, structure, number, local, rerank)))
    lengths = np.concatenate([ends - starts for _, _, starts, ends in groups])
    bounds = np.concatenate([[0], np.cumsum(lengths)])  # each row's tokens, numbered across the rows
    source = _StoredVectors(index, structure, groups) if rerank == "vectors" else _DecodedCodes(structure, groups)
    scores = np.empty(len(lengths), np.float32)
    for a, b in document_blocks(bounds, RERANK_BLOCK_TOKENS):
        first, end = int(bounds[a]), int(bounds[b])
        x = scratches.array("vectors", (end - first, index.dim), np.float32)
        norms = source.fill(x, a, b, first, end)
        sims = token_scores(q, x, scratches.array("rerank_sims", (len(q), len(x)), np.float32))
        if norms is not None:  # decoded vectors' scores as of unit vectors
            sims /= norms
        scores[a:b] = np.maximum.reduceat(sims, bounds[a:b] - first, axis=1).sum(axis=0, dtype=np.float32)
    return scores


def document_blocks(bounds: np.ndarray, tokens: int) -> list[tuple[int, int]]:
    """(first document, end) of consecutive blocks of whole documents, each cut at the last document start at
    or before a multiple of ``tokens`` (``bounds``: the documents' first tokens and the end). A block holds more
    than ``tokens`` only by its first document, the one that straddles a multiple (a long document)."""
    count = len(bounds) - 1
    cuts = np.searchsorted(bounds, np.arange(tokens, int(bounds[-1]), tokens), side="right") - 1
    cuts = np.unique(np.concatenate([[0], cuts, [count]])).tolist()
    return list(zip(cuts[:-1], cuts[1:]))


def _token_ranges(index, structure, number: int, local: np.ndarray, rerank: str) -> tuple[np.ndarray, np.ndarray]:
    """Each of one shard's rows (local, sorted): (first token, end) in the codes, or within its record batch."""
    if rerank == "codes":
        offsets = structure.shards[number].doc_offsets
        return offsets[local], offsets[local + 1]
    batches = shard_batches(index, structure, number)
    if batches.row_starts is None:
        require_vectors(index, "re-ranking from the stored vectors")
        raise IndexCorruptError(f"{batches.path}: no embeddings column, though the manifest says the index keeps its vectors")
    return batches.row_starts[local], batches.row_ends[local]


class _StoredVectors:
    """The candidates' stored vectors, by positioned reads of the shard files (one per document), as float32."""

    def __init__(self, index, structure, groups: list) -> None:
        self.files, self.paths, positions, sizes, itemsizes = [], [], [], [], set()
        for number, local, starts, ends in groups:
            batches = shard_batches(index, structure, number)
            itemsizes.add(batches.itemsize)
            at = np.searchsorted(batches.firsts, local, side="right") - 1
            row_bytes = index.dim * batches.itemsize
            positions.append(batches.positions[at] + starts * row_bytes)
            sizes.append((ends - starts) * row_bytes)
            prefetch(batches, positions[-1], sizes[-1])  # every read in flight at once where the page cache lacks them
            self.files.extend([batches.file.fileno()] * len(local))  # raises if the index's file was closed
            self.paths.extend([batches.path] * len(local))
        if len(itemsizes) > 1:  # an index stores one dtype (its manifest's ``embedding_dtype``)
            raise IndexCorruptError(f"{index.folder}: its shards store vectors of different widths ({sorted(8 * i for i in itemsizes)} bits)")
        self.itemsize = itemsizes.pop() if itemsizes else 4
        self.positions = np.concatenate(positions).tolist() if positions else []
        self.sizes = np.concatenate(sizes).tolist() if sizes else []

    def fill(self, x: np.ndarray, a: int, b: int, first: int, end: int) -> None:
        """``x`` = documents ``a`` to ``b``'s vectors (float32 ones are read straight into place)."""
        raw = x.reshape(-1).view(np.uint8) if self.itemsize == 4 else scratches.array("raw", x.size * self.itemsize, np.uint8)
        view, at = memoryview(raw), 0
        for j in range(a, b):
            size = self.sizes[j]
            read_exactly(self.files[j], view[at : at + size], self.positions[j], self.paths[j])
            at += size
        if self.itemsize == 2:
            float16_to_float32(raw.view(np.float16), x.reshape(-1))


class _DecodedCodes:
    """The candidates' vectors decoded from their codes, before normalization (their norms divide the scores);
    where the codec keeps each vector's length, the scores are of vectors of that length."""

    def __init__(self, structure, groups: list) -> None:
        ids, residuals, lengths = [], [], []
        for number, _, starts, ends in groups:
            codes = structure.shards[number]
            take, _ = ragged(starts, ends)
            ids.append(codes.centroid_ids[take])
            residuals.append(codes.residuals[take])
            if structure.codec.vector_norms:
                if codes.vector_norms is None:
                    raise IndexCorruptError("a code file holds no vector lengths where its codec keeps them")
                lengths.append(codes.vector_norms[take])
        self.codec, self.ids, self.residuals = structure.codec, np.concatenate(ids), np.concatenate(residuals)
        self.lengths = np.concatenate(lengths).astype(np.float32) if lengths else None

    def fill(self, x: np.ndarray, a: int, b: int, first: int, end: int) -> np.ndarray:
        """``x`` = tokens ``first`` to ``end`` decoded; returns what divides their scores (their norms, over
        their stored lengths where those are kept)."""
        norms = scratches.array("norms", len(x), np.float32)
        norms[:] = self.codec.decode_unscaled(self.ids[first:end], self.residuals[first:end], out=x)[1]
        if self.lengths is not None:  # a zero-length vector scores 0: its divisor is infinite
            np.divide(norms, self.lengths[first:end], out=norms, where=self.lengths[first:end] > 0)
            norms[self.lengths[first:end] <= 0] = np.inf
        return norms


# torch's float16 -> float32 cast runs ~30x faster than numpy's (or a table lookup): 0.33 vs 4.2 ms for 1.8M
# values on an AVX512 host. Only where torch is imported already (``score`` and ``serve`` encode queries with
# it): a process that only searches stored vectors does not pay torch's import (~3 s, ~200 MB) for it, and uses
# the table. A single query's cast may run on torch's OpenMP threads, which spin a while afterwards; the
# products run in torch too (``products.py``), so no other thread pool loses its cores to them.
_F16_TO_F32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def float16_to_float32(values: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = values`` (float16 -> float32, exact), both 1-D and contiguous."""
    torch = imported_torch()
    if torch is None:
        np.take(_F16_TO_F32, values.view(np.uint16), out=out, mode="clip")  # every uint16 is in range; "clip" is unbuffered
        return
    torch.from_numpy(out).copy_(torch.from_numpy(values))
