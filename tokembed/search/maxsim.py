"""Exact MaxSim top-k over an index: streaming block scan, one GEMM per tile, segmented max, top-k merge.

    score(q, d) = sum_i max_j <q_i, d_j>      (ColBERT late interaction; float32 accumulation)

Inputs: query matrices ``[n_tokens_q, D]`` and an opened ``Index``. Output: per query the best ``k``
(doc id, score) pairs, best first, ties in index order (earlier row first).

How the work is laid out (no per-document loop, no padding):

* ``iter_blocks`` streams the shards (the index's memory maps; each shard's sha256 is checked first, once
  per change of the file: ``tokembed/index/verified.py``)
  and copies up to ``block_tokens`` document tokens into one reusable ``[block_tokens, D]`` buffer,
  upcast to float32 on the way (``TorchScorer`` keeps the stored dtype and upcasts on its device).
  Mapped pages are released after every record batch, so peak memory is the block buffer plus a fixed
  score workspace, whatever the size of the index or a shard.
* A block is cut into tiles at document boundaries. For each tile and each chunk of queries,
  ``S = Q_chunk @ X_tile.T`` (``[query tokens, tile tokens]``) is one matrix product over the
  concatenated tokens of all documents; the max over each document's columns is a segmented reduction
  (``np.maximum.reduceat`` / ``torch.segment_reduce``), so padding never exists and cannot win a max.
  The per-query sum is a second segmented reduction over query tokens.
* ``TopK`` merges each tile's scores with a stable sort; tiles arrive in index order, so equal scores
  keep index order.

A document with 0 tokens (e.g. only skiplisted tokens) has no token to take a max over: its score is
``-inf`` (the max over an empty set), so it ranks after every other document and never crashes a scan.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tokembed.errors import IndexCorruptError, ModelMismatchError

DEFAULT_BLOCK_TOKENS = 262_144
SCORE_WORKSPACE = 1 << 24  # elements of one [query tokens, tile tokens] score matrix (64 MiB float32)
QUERY_CHUNK_TOKENS = 2048  # query tokens per GEMM; larger chunks mean smaller tiles
MIN_TILE_TOKENS = 4096


@dataclass
class Block:
    """Consecutive documents of the index: their tokens concatenated, their lengths and ids."""

    vectors: np.ndarray  # [n_tokens, D], a view of the reusable block buffer
    lengths: np.ndarray  # [n_docs] int64, 0 allowed
    ids: np.ndarray  # [n_docs] object (str)


@dataclass
class ScanStats:
    rows: int = 0
    tokens: int = 0


# ---------------------------------------------------------------------------------------------- blocks


def shard_batches(index, shard: dict, verify: bool = True, remembered: bool = False) -> Iterator:
    """Record batches of one shard (zero-copy views of the index's memory map), checked first (``remembered``:
    its sha256 not again when it matched before and has not changed since, ``Index.verify_shard``); unchecked, each
    batch's offsets and ids are validated instead (``ShardReader.get_batch``).

    After the caller is done with a batch (when the generator resumes), its pages are dropped from this
    process (they stay in the OS page cache): resident memory is one record batch, not the shard.
    """
    if verify:
        index.verify_shard(shard, remembered=remembered)
    reader = index.open_shard(shard)
    pages = index.shard_pages(shard)
    for number in range(reader.num_record_batches):
        batch = reader.get_batch(number, validated=not verify)
        yield batch
        pages.release(batch)


def batch_arrays(batch, dim: int, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets [n+1] int64, token vectors [n_tokens, D] zero-copy, ids [n] object) of one record batch."""
    offsets, vectors = batch_vectors(batch, dim, where)
    ids = np.asarray(batch.column(batch.schema.get_field_index("id")).to_pylist(), dtype=object)  # to_numpy imports pandas (~0.4 s)
    return offsets, vectors, ids


def batch_vectors(batch, dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [n+1] int64, token vectors [n_tokens, D] zero-copy) of one record batch."""
    import pyarrow as pa

    from tokembed.index.arrays import list_offsets, numpy_view

    column = batch.schema.get_field_index("embeddings")
    if column < 0:  # a compressed-only shard: -1 would select the last column
        from tokembed.errors import VectorsDroppedError

        raise VectorsDroppedError(f"{where}: this shard holds no vectors (dropped by `tokembed compress --drop-vectors`)")
    embeddings = batch.column(column)
    value_type = embeddings.type.value_type
    if not pa.types.is_fixed_size_list(value_type) or value_type.list_size != dim:
        raise IndexCorruptError(f"{where}: embeddings column is {embeddings.type}, manifest says dim {dim}")
    rows = embeddings.values  # FixedSizeListArray, one entry per token
    flat = numpy_view(rows.values)
    return list_offsets(embeddings), flat[rows.offset * dim : (rows.offset + len(rows)) * dim].reshape(-1, dim)


class BlockBuilder:
    """Fills one reusable ``[block_tokens, D]`` buffer with whole documents."""

    def __init__(self, block_tokens: int, dim: int, dtype) -> None:
        self.buffer = np.empty((block_tokens, dim), dtype)
        self.fill = 0
        self.lengths: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []

    @property
    def room(self) -> int:
        return len(self.buffer) - self.fill

    @property
    def empty(self) -> bool:
        return not self.lengths

    def add(self, vectors: np.ndarray, lengths: np.ndarray, ids: np.ndarray) -> None:
        self.buffer[self.fill : self.fill + len(vectors)] = vectors  # the upcast happens here
        self.fill += len(vectors)
        self.lengths.append(lengths)
        self.ids.append(ids)

    def take(self) -> Block:
        block = Block(self.buffer[: self.fill], np.concatenate(self.lengths), np.concatenate(self.ids))
        self.fill, self.lengths, self.ids = 0, [], []
        return block


def iter_blocks(index, block_tokens: int, dtype, verify: bool = True) -> Iterator[Block]:
    """Blocks of at most ``block_tokens`` tokens in index order (a longer document is a block alone).

    A yielded block is a view of a buffer that the next block overwrites: finish with it first.
    """
    builder = BlockBuilder(max(1, min(block_tokens, index.tokens)), index.dim, dtype)  # never more than it holds
    for shard in index.shards:
        for batch in shard_batches(index, shard, verify, remembered=True):  # what each query process would hash again
            offsets, vectors, ids = batch_arrays(batch, index.dim, str(index.shard_path(shard)))
            yield from _fill(builder, offsets, vectors, ids, dtype)
    if verify:
        index.write_verified()
    if not builder.empty:
        yield builder.take()


def _fill(builder: BlockBuilder, offsets: np.ndarray, vectors: np.ndarray, ids: np.ndarray, dtype) -> Iterator[Block]:
    start, n_docs = 0, len(offsets) - 1
    while start < n_docs:
        # the documents start.. end-1 fit in the room left (0-token documents always fit)
        end = int(np.searchsorted(offsets, offsets[start] + builder.room, side="right")) - 1
        if end > start:
            builder.add(vectors[offsets[start] : offsets[end]], np.diff(offsets[start : end + 1]), ids[start:end])
            start = end
        elif not builder.empty:
            yield builder.take()
        else:  # one document longer than a whole block
            doc = vectors[offsets[start] : offsets[start + 1]].astype(dtype)
            yield Block(doc, np.array([len(doc)], np.int64), ids[start : start + 1])
            start += 1


def tiles(lengths: np.ndarray, tile_tokens: int) -> Iterator[tuple[int, int, int, int]]:
    """(first doc, end doc, first token, end token) of consecutive tiles of at most ``tile_tokens`` tokens."""
    ends = np.concatenate([[0], np.cumsum(lengths)])
    first = 0
    while first < len(lengths):
        end = int(np.searchsorted(ends, ends[first] + tile_tokens, side="right")) - 1
        end = max(end, first + 1)
        yield first, end, int(ends[first]), int(ends[end])
        first = end


# ---------------------------------------------------------------------------------------------- queries


@dataclass
class QueryChunk:
    """Consecutive queries whose tokens go through one GEMM: ``matrix`` is ``[sum of lengths, D]``."""

    lengths: np.ndarray  # [n_queries] int64 (0 allowed)
    matrix: object  # np.ndarray or torch.Tensor on the compute device; None if every query has 0 tokens

    @classmethod
    def build(cls, queries: list[np.ndarray], scorer) -> "QueryChunk":
        lengths = np.array([len(q) for q in queries], np.int64)
        if not lengths.sum():
            return cls(lengths, None)
        return cls(lengths, scorer.prepare(np.concatenate([np.asarray(q, np.float32) for q in queries])))

    @property
    def n_queries(self) -> int:
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())


def chunk_ranges(lengths: list[int], max_tokens: int = QUERY_CHUNK_TOKENS) -> list[tuple[int, int]]:
    """Split queries into consecutive chunks of about equal token counts, each <= ``max_tokens`` if possible."""
    total = sum(lengths)
    n_chunks = max(1, -(-total // max_tokens))
    target = -(-total // n_chunks)
    ranges, first, tokens = [], 0, 0
    for i, n in enumerate(lengths):
        if tokens and tokens + n > target:
            ranges.append((first, i))
            first, tokens = i, 0
        tokens += n
    ranges.append((first, len(lengths)))
    return ranges


def check_query_dims(queries: list[np.ndarray], dim: int) -> None:
    for i, q in enumerate(queries):
        if q.ndim != 2 or q.shape[1] != dim:
            raise ModelMismatchError(
                f"query {i}: vectors of shape {tuple(q.shape)}, the index holds {dim}-dimensional vectors",
                hint="encode queries with the index's model and settings (Embedder.for_index)",
            )


# ---------------------------------------------------------------------------------------------- scorers


def score_tile(scorer, chunk: QueryChunk, x, lengths: np.ndarray) -> np.ndarray:
    """[n_queries, n_docs] float32 MaxSim of a chunk of queries against the documents of one tile.

    A 0-token document scores -inf (max over an empty set); a 0-token query scores 0 (an empty sum).
    """
    out = np.full((chunk.n_queries, len(lengths)), -np.inf, np.float32)
    filled = lengths > 0
    if filled.any():
        out[:, filled] = 0.0 if chunk.matrix is None else scorer.maxsim(chunk, x, lengths, filled)
    return out


class NumpyScorer:
    """CPU: float32 products (stored float16 vectors are upcast per block) through numpy's BLAS."""

    buffer_dtype = np.float32
    tile_elements = SCORE_WORKSPACE

    def __init__(self) -> None:
        self.workspace = np.empty(0, np.float32)

    def prepare(self, queries: np.ndarray) -> np.ndarray:
        return queries

    def load_block(self, vectors: np.ndarray) -> np.ndarray:
        return vectors

    def maxsim(self, chunk: QueryChunk, x: np.ndarray, lengths: np.ndarray, filled: np.ndarray) -> np.ndarray:
        sims = self._sims(chunk.tokens, len(x))
        np.matmul(chunk.matrix, x.T, out=sims)  # [query tokens, tile tokens]
        starts = (np.cumsum(lengths) - lengths)[filled]  # reduceat cannot express an empty segment
        best = np.maximum.reduceat(sims, starts, axis=1)  # [query tokens, filled docs]
        return _sum_query_tokens(best, chunk.lengths)  # [queries, filled docs]

    def _sims(self, rows: int, cols: int) -> np.ndarray:
        if self.workspace.size < rows * cols:  # allocated once (a longer tile only for one huge document)
            self.workspace = np.empty(max(rows * cols, SCORE_WORKSPACE), np.float32)
        return self.workspace[: rows * cols].reshape(rows, cols)


def _sum_query_tokens(best: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[query tokens, docs] -> [queries, docs]: sum over each query's rows (0 for a 0-token query)."""
    if (lengths == lengths[0]).all():
        return best.reshape(len(lengths), int(lengths[0]), -1).sum(axis=1)
    out = np.zeros((len(lengths), best.shape[1]), np.float32)
    nonzero = lengths > 0
    starts = (np.cumsum(lengths) - lengths)[nonzero]
    out[nonzero] = np.add.reduceat(best, starts, axis=0)
    return out


class TorchScorer:
    """torch on any device, float32 products, maxes and sums on every one (the CPU scan's numbers to float32
    rounding; tests run it on the CPU). A block crosses to the device as stored (float16: half the bytes) and
    is upcast there."""

    def __init__(self, device: str, store_dtype: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        on_gpu = self.device.type != "cpu"
        self.buffer_dtype = np.float16 if store_dtype == "float16" else np.float32
        self.dtype = torch.float32  # float16 products would round every similarity before its max (~1e-3)
        self.tile_elements = SCORE_WORKSPACE * (8 if on_gpu else 1)  # 512 MiB of float32 scores on a GPU

    def prepare(self, queries: np.ndarray):
        return self.torch.from_numpy(queries).to(self.device, self.dtype)

    def load_block(self, vectors: np.ndarray):
        return self.torch.from_numpy(vectors).to(self.device).to(self.dtype)

    def maxsim(self, chunk: QueryChunk, x, lengths: np.ndarray, filled: np.ndarray) -> np.ndarray:
        torch = self.torch
        # segments along axis 0 with 1-D lengths: the layout segment_reduce supports on every device
        sims = x @ chunk.matrix.T  # [tile tokens, query tokens]
        doc_lengths = torch.as_tensor(lengths, device=self.device)
        best = torch.segment_reduce(sims, "max", lengths=doc_lengths, axis=0)  # [docs, query tokens], empty: -inf
        query_lengths = torch.as_tensor(chunk.lengths, device=self.device)
        scores = torch.segment_reduce(best.T.contiguous(), "sum", lengths=query_lengths, axis=0)
        return scores.cpu().numpy()[:, filled]  # [queries, filled docs]


# ---------------------------------------------------------------------------------------------- top-k


class TopK:
    """The best ``k`` (score, id) per query so far, best first; ties keep arrival (= index) order."""

    def __init__(self, n_queries: int, k: int) -> None:
        self.k = k
        self.scores = np.empty((n_queries, 0), np.float32)
        self.ids = np.empty((n_queries, 0), object)

    def merge(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """``scores`` [n_queries, n_docs] for documents ``ids`` that come after every one seen so far."""
        all_scores = np.concatenate([self.scores, scores], axis=1)
        all_ids = np.concatenate([self.ids, np.broadcast_to(ids, scores.shape)], axis=1)
        # stable: among equal scores, kept entries (earlier rows) stay before new ones, new ones in row order
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(all_scores, order, axis=1)
        self.ids = np.take_along_axis(all_ids, order, axis=1)

    def results(self) -> list[list[tuple[str, float]]]:
        return [[(str(i), float(s)) for i, s in zip(ids, scores)] for ids, scores in zip(self.ids, self.scores)]


# ---------------------------------------------------------------------------------------------- scan


def scan(
    index,
    queries: list[np.ndarray],
    top_k: int,
    block_tokens: int = DEFAULT_BLOCK_TOKENS,
    scorer=None,
    progress=None,
    verify: bool = True,
) -> tuple[list[list[tuple[str, float]]], ScanStats]:
    """Exact MaxSim top-k of every query over the whole index, streaming; returns hits and what was scanned."""
    from tokembed.index.format import require_vectors

    require_vectors(index, "the exhaustive scan")
    scorer = scorer or NumpyScorer()
    check_query_dims(queries, index.dim)
    ranges = chunk_ranges([len(q) for q in queries])
    chunks = [QueryChunk.build(queries[a:b], scorer) for a, b in ranges]
    tops = [TopK(c.n_queries, top_k) for c in chunks]
    widest = max(c.tokens for c in chunks) or 1
    tile_tokens = min(block_tokens, max(MIN_TILE_TOKENS, scorer.tile_elements // widest))
    stats = ScanStats()
    if progress is not None:  # anything with start(total_rows) and advance(rows, tokens), as for encode
        progress.start(index.rows)
    for block in iter_blocks(index, block_tokens, scorer.buffer_dtype, verify):
        x = scorer.load_block(block.vectors)
        for first, end, t0, t1 in tiles(block.lengths, tile_tokens):
            for chunk, top in zip(chunks, tops):
                top.merge(score_tile(scorer, chunk, x[t0:t1], block.lengths[first:end]), block.ids[first:end])
        stats.rows += len(block.lengths)
        stats.tokens += len(block.vectors)
        if progress is not None:
            progress.advance(len(block.lengths), len(block.vectors))
    return [hits for top in tops for hits in top.results()], stats
