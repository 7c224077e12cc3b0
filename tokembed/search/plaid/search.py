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
(``candidates.py`` holds stages 1-3.)

With ``probe >= K`` and ``candidates >= rows`` every document with a token is re-ranked exactly: the result
is the exhaustive scan's (tests check it). Ties break by index order, as in the scan. The structure's files
are memory-mapped; per query only the probed lists and the candidates' rows are read. The candidates'
vectors and the hits' ids come from the shard files by positioned reads (the page cache, not the memory
map), so searching keeps no shard pages resident however many queries it answers.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from tokembed.errors import IndexCorruptError, UsageError
from tokembed.index.format import EMBEDDINGS, require_vectors
from tokembed.index.pages import MappedPages
from tokembed.search.maxsim import batch_vectors
from tokembed.search.plaid.build import SEARCH
from tokembed.search.plaid.candidates import best_by_centroids, candidate_rows, per_shard, scratches
from tokembed.search.plaid.lists import ragged
from tokembed.search.plaid.codec import Codec
from tokembed.search.plaid.codes import ShardCodes
from tokembed.search.plaid.files import check_structure_lists_shards, map_tensors, verify_files
from tokembed.search.plaid.products import centroid_scores, token_scores
from tokembed.search.plaid.threads import map_queries

DEFAULT_PROBE = 32
# bench/search.py at 1M documents on a real ``compress`` (65,536 centroids; README, "Search with the structure"):
# recall@10 with ties 0.966 at p50 27.2-27.5 ms a query on 2 cores in three runs (29.2-31.9 ms on one thread; every
# returned document scored exactly, so that which of many tied documents comes back does not count: 0.985). The
# earlier probe 16 / 320 candidates from 8x as many gave 0.913 there: probing more centroids finds more of the best
# documents than pre-scoring more of them from their centroids (probe 16 / 512 from 4,096: 0.946 at 30.1 ms)
DEFAULT_CANDIDATES = 512
CENTROID_POOL = 4  # stage 1 keeps this many times ``candidates`` for the centroid-interaction stage
_OPEN_ATTEMPTS = 5


@dataclass
class Structure:
    codec: Codec
    shards: list[ShardCodes]
    starts: np.ndarray  # [n_shards + 1] first global row of each shard
    _vectors: dict = field(default_factory=dict, repr=False)  # shard number -> _ShardBatches, read on first use
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
    from tokembed.index.reader import open_index, read_manifest

    for _ in range(_OPEN_ATTEMPTS):
        index = open_index(folder)
        if not has_structure(index):
            return index, None
        try:
            return index, open_structure(index, verify)
        except IndexCorruptError:
            if read_manifest(Path(folder)) == index.manifest:
                raise
    raise IndexCorruptError(f"{folder}: the index kept changing while it was being opened")


def open_structure(index, verify: bool = True) -> Structure:
    """Map the codec and every shard's code file (sizes always checked, sha256 when ``verify``)."""
    structure = index.manifest[SEARCH]
    entries = structure["shards"]
    check_structure_lists_shards(index.folder, index.manifest)
    verify_files(index.folder, [structure["codec"], *entries], verify)
    tensors, metadata = map_tensors(index.folder / structure["codec"]["file"])
    codec = Codec.from_tensors(tensors, metadata)
    shards = []
    for entry in entries:
        codes = ShardCodes.open(index.folder / entry["file"])
        if codes.rows != entry["rows"] or len(codes.centroid_ids) != entry["tokens"]:
            raise IndexCorruptError(f"{index.folder / entry['file']}: rows/tokens do not match the manifest")
        shards.append(codes)
    starts = np.cumsum([0] + [entry["rows"] for entry in entries]).astype(np.int64)
    return Structure(codec, shards, starts)


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
    return map_queries(lambda q: _one_query(index, structure, np.asarray(q, np.float32), top_k, probe, max(candidates, top_k), rerank, device), queries)


def _one_query(index, structure: Structure, q: np.ndarray, top_k: int, probe: int, candidates: int, rerank: str, device: str | None = None):
    if not len(q):  # an empty query scores 0 against every document: the first ones in index order
        rows = np.arange(min(top_k, structure.rows))
        return [(_doc_id(index, structure, int(r)), 0.0) for r in rows]
    if device is None:
        sims = centroid_scores(structure.codec, q, scratches.array("sims", (len(q), structure.codec.k), np.float32))
        pool = candidate_rows(structure, sims, probe, CENTROID_POOL * candidates, np.linalg.norm(q, axis=1))
        rows = best_by_centroids(structure, sims, pool, candidates)
    else:
        from tokembed.search.plaid.on_device import device_candidates

        rows = device_candidates(structure, q, probe, CENTROID_POOL * candidates, candidates, device)
    if not len(rows):
        return []
    scores = _exact_scores(index, structure, q, rows, rerank)
    order = np.lexsort((rows, -scores))[:top_k]  # best first; equal scores in index order
    return [(_doc_id(index, structure, int(rows[i])), float(scores[i])) for i in order]


def _exact_scores(index, structure: Structure, q: np.ndarray, rows: np.ndarray, rerank: str) -> np.ndarray:
    """Exact MaxSim of ``q`` with each row (sorted, each with at least one token), float32: every row's
    vectors gathered into one reused buffer, then one product (one BLAS call rather than one per shard)."""
    groups = per_shard(structure, rows, lambda number, local: (number, local, *_token_ranges(index, structure, number, local, rerank)))
    lengths = np.concatenate([ends - starts for _, _, starts, ends in groups])
    bounds = np.concatenate([[0], np.cumsum(lengths)])  # each row's tokens in the gathered matrix
    x = scratches.array("vectors", (int(bounds[-1]), index.dim), np.float32)
    norms = None
    if rerank == "vectors":
        _read_vectors_into(x, [_file_ranges(index, structure, number, local, starts, ends) for number, local, starts, ends in groups])
    else:
        norms, at = scratches.array("norms", len(x), np.float32), 0
        for number, local, starts, ends in groups:
            rows = slice(bounds[at], bounds[at + len(local)])
            _decode_into(x[rows], norms[rows], structure, number, starts, ends)
            at += len(local)
    sims = token_scores(q, x, scratches.array("rerank_sims", (len(q), len(x)), np.float32))
    if norms is not None:  # the decoded vectors' scores as of unit vectors
        sims /= norms
    return np.maximum.reduceat(sims, bounds[:-1], axis=1).sum(axis=0, dtype=np.float32)


# torch's float16 -> float32 cast runs ~30x faster than numpy's (or a table lookup): 0.33 vs 4.2 ms for 1.8M
# values on an AVX512 host. One cast of every candidate's vectors: a single query's may then run on torch's
# OpenMP threads, which spin a while afterwards; since the products run in torch too (``products.py``) no
# other thread pool loses its cores to them. At 1M documents (Intel host), one query at a time: p50 29.5-30.0
# ms where casting in pieces below torch's parallel grain took 30.8-32.8; 100 batched: 44-45 against 38-42
# queries/s. Only where torch is imported already (``score`` and ``serve`` encode queries with it): a process
# that only searches stored vectors does not pay torch's import (~3 s, ~200 MB) for it, and uses the table.
_F16_TO_F32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def float16_to_float32(values: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = values`` (float16 -> float32, exact), both 1-D and contiguous."""
    torch = sys.modules.get("torch")
    if torch is None:
        np.take(_F16_TO_F32, values.view(np.uint16), out=out, mode="clip")  # every uint16 is in range; "clip" is unbuffered
        return
    torch.from_numpy(out).copy_(torch.from_numpy(values))


def _token_ranges(index, structure: Structure, number: int, local: np.ndarray, rerank: str) -> tuple[np.ndarray, np.ndarray]:
    """Each of one shard's rows (local, sorted): (first token, end) in the codes, or within its record batch."""
    if rerank == "codes":
        offsets = structure.shards[number].doc_offsets
        return offsets[local], offsets[local + 1]
    batches = _batches(index, structure, number)
    if batches.row_starts is None:
        require_vectors(index, "re-ranking from the stored vectors")
    return batches.row_starts[local], batches.row_ends[local]


def _decode_into(out: np.ndarray, norms: np.ndarray, structure: Structure, number: int, starts: np.ndarray, ends: np.ndarray) -> None:
    """Fill ``out`` [tokens, D] with the vectors decoded from one shard's codes before their normalization,
    and ``norms`` [tokens] with their norms; token ranges in row order."""
    codes = structure.shards[number]
    take, _ = ragged(starts, ends)
    norms[:] = structure.codec.decode_unscaled(codes.centroid_ids[take], codes.residuals[take], out=out)[1]


def _file_ranges(index, structure: Structure, number: int, local: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """(the shard's batches, file position and byte size of each row's vectors) for one shard's rows."""
    batches = _batches(index, structure, number)
    at = np.searchsorted(batches.firsts, local, side="right") - 1
    row_bytes = index.dim * batches.itemsize
    return batches, batches.positions[at] + starts * row_bytes, (ends - starts) * row_bytes


def _read_vectors_into(out: np.ndarray, reads: list) -> None:
    """Fill ``out`` [tokens, D] with the stored vectors at the file ranges of each (shard batches, positions,
    sizes) in ``reads``, in order, as float32 (one cast of them all)."""
    for batches, positions, sizes in reads:  # every read in flight at once where the page cache lacks them
        _prefetch(batches, positions, sizes)
    itemsize = reads[0][0].itemsize if reads else 4
    for batches, _, _ in reads:  # an index stores one dtype (its manifest's ``embedding_dtype``)
        if batches.itemsize != itemsize:
            raise IndexCorruptError(f"{batches.path}: its vectors are {8 * batches.itemsize}-bit where other shards' are {8 * itemsize}-bit")
    raw = out.reshape(-1).view(np.uint8) if itemsize == 4 else scratches.array("raw", out.size * itemsize, np.uint8)
    at = 0
    for batches, positions, sizes in reads:  # float32 vectors are read straight into place
        size = int(sizes.sum())
        _read_ranges(batches, positions, sizes, raw[at : at + size])
        at += size
    if itemsize == 2:
        float16_to_float32(raw.view(np.float16), out.reshape(-1))


def _prefetch(batches: "_ShardBatches", positions: np.ndarray, sizes: np.ndarray) -> None:
    """Ask the kernel to read those ranges ahead (``POSIX_FADV_WILLNEED``): the candidates' vectors that are
    not in the page cache then come from disk in parallel rather than one read at a time. At 1M documents,
    the re-rank of 320 candidates after dropping the page cache: 33-36 -> 14-20 ms (p50); ~0.3 ms when cached."""
    if not hasattr(os, "posix_fadvise"):  # macOS
        return
    fd = batches.file.fileno()
    for position, size in zip(positions.tolist(), sizes.tolist()):
        os.posix_fadvise(fd, position, size, os.POSIX_FADV_WILLNEED)


def _read_ranges(batches: "_ShardBatches", positions: np.ndarray, sizes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The bytes at each (position, size) of a shard file, concatenated (into ``out`` if given): positioned
    reads from the page cache rather than through the memory map, whose touched pages (whole 2 MB folios on
    recent kernels) would otherwise stay in the process's resident memory until dropped again."""
    out = np.empty(int(sizes.sum()), np.uint8) if out is None else out
    ends = np.cumsum(sizes).tolist()
    view, fd = memoryview(out), batches.file.fileno()  # raises if the index's file was closed
    for position, size, end in zip(positions.tolist(), sizes.tolist(), ends):
        if _read_into(fd, view[end - size : end], position) != size:
            raise IndexCorruptError(f"{batches.path}: shorter than its record batches say")
    return out


def _read_into(fd: int, view: memoryview, position: int) -> int:
    if hasattr(os, "preadv"):  # Linux, the BSDs: straight into the buffer
        return os.preadv(fd, [view], position)
    data = os.pread(fd, len(view), position)  # macOS
    view[: len(data)] = data
    return len(data)


@dataclass
class _ShardBatches:
    firsts: np.ndarray  # first row (within the shard) of each record batch
    row_starts: np.ndarray | None  # per row of the shard: its first token within its batch's vectors (None: no vectors)
    row_ends: np.ndarray | None
    positions: np.ndarray  # per batch: the file position of its first vector (int64)
    itemsize: int  # 2: float16 vectors, 4: float32
    file: object  # the shard file the index holds open (pyarrow MemoryMappedFile; positioned reads)
    base: int  # the address of its byte 0 in the index's mapping
    path: Path
    batches: list  # the record batches (their id columns' buffers locate the ids)


def _batches(index, structure: Structure, number: int) -> _ShardBatches:
    if number not in structure._vectors:
        with structure._building:
            if number not in structure._vectors:
                structure._vectors[number] = _read_batches(index, number)
    return structure._vectors[number]


def _read_batches(index, number: int) -> _ShardBatches:
    shard = index.shards[number]
    reader = index.open_shard(shard)
    records = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    firsts = np.cumsum([0] + [batch.num_rows for batch in records], dtype=np.int64)[: len(records)]
    starts, ends, positions, itemsize = [], [], [], 2
    file, base = index.shard_file(shard)
    for batch in records:
        if EMBEDDINGS not in batch.schema.names:  # a compressed-only index (compress --drop-vectors): ids only
            break
        offsets, vectors = batch_vectors(batch, index.dim, str(index.shard_path(shard)))
        starts.append(offsets[:-1])
        ends.append(offsets[1:])
        positions.append(vectors.__array_interface__["data"][0] - base)  # zero-copy: its address less the file's
        if positions[-1] < 0:  # not in the mapped file (a compressed IPC file is decoded into memory)
            raise IndexCorruptError(f"{index.shard_path(shard)}: its vectors are not stored uncompressed in the file")
        itemsize = vectors.itemsize
    complete = bool(records) and len(starts) == len(records)
    row_starts, row_ends = (np.concatenate(starts), np.concatenate(ends)) if complete else (None, None)
    pages = MappedPages(index.shard_path(shard))
    if pages.locate(base):  # drop what reading the batches' metadata and offsets mapped: nothing else maps them
        pages.release_ranges([pages.span[0]], [pages.span[1]])
    return _ShardBatches(firsts, row_starts, row_ends, np.array(positions, np.int64), itemsize, file, base,
                         index.shard_path(shard), records)


def _doc_id(index, structure: Structure, row: int) -> str:
    number = int(np.searchsorted(structure.starts, row, side="right")) - 1
    local = row - int(structure.starts[number])
    batches = _batches(index, structure, number)
    at = int(np.searchsorted(batches.firsts, local, side="right")) - 1
    ids = batches.batches[at].column("id")  # offsets, then the UTF-8 bytes: positioned reads, as the vectors
    width = np.dtype(np.int64 if pa.types.is_large_string(ids.type) else np.int32)
    offsets, data = ids.buffers()[1], ids.buffers()[2]
    at_offset = offsets.address - batches.base + (ids.offset + local - int(batches.firsts[at])) * width.itemsize
    start, end = np.frombuffer(_read_ranges(batches, np.array([at_offset]), np.array([2 * width.itemsize])), width).tolist()
    return _read_ranges(batches, np.array([data.address - batches.base + start]), np.array([end - start])).tobytes().decode("utf-8")
