"""Search with the structure: candidates from the inverted lists, approximate scores, exact re-rank.

Per query ``Q`` [n, D]:

1. ``S = Q @ C.T`` [n, K]; each query token probes its best ``probe`` centroids.
2. An approximate MaxSim of every document that holds a token of a probed centroid, from centroids only
   (WARP's imputation): for query token i, a document's best probed centroid score if it has one, else
   the score of i's last probed centroid (an upper bound on what it misses). Documents no probe reaches
   cannot be candidates.
3. The best ``CENTROID_POOL * candidates`` by that score are scored again with every token replaced by its
   centroid (PLAID's centroid interaction, from the uint16 centroid ids: no vectors read).
4. The best ``candidates`` of those are re-ranked with exact MaxSim from the stored vectors
   (``rerank="vectors"``) or from the decompressed codes (``rerank="codes"``, for compressed-only use).
(``candidates.py`` holds stages 1-3.)

With ``probe >= K`` and ``candidates >= rows`` every document with a token is re-ranked exactly: the result
is the exhaustive scan's (tests check it). Ties break by index order, as in the scan. The structure's files
are memory-mapped; per query only the probed lists and the candidates' rows are read.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokembed.errors import IndexCorruptError, UsageError
from tokembed.index.format import EMBEDDINGS, require_vectors
from tokembed.index.pages import MappedPages
from tokembed.search.plaid.build import SEARCH
from tokembed.search.plaid.candidates import best_by_centroids, candidate_rows, ragged
from tokembed.search.plaid.codec import Codec
from tokembed.search.plaid.codes import ShardCodes
from tokembed.search.plaid.files import map_tensors, verify_files

DEFAULT_PROBE = 16
DEFAULT_CANDIDATES = 128  # with probe 16: recall@10 0.985 vs exact in bench/search.py at 20k documents (README)
CENTROID_POOL = 4  # stage 1 keeps this many times ``candidates`` for the centroid-interaction stage
_OPEN_ATTEMPTS = 5
RELEASE_BYTES = 64 << 20  # vector bytes the re-rank reads before the pages they came from are dropped


@dataclass
class Structure:
    codec: Codec
    shards: list[ShardCodes]
    starts: np.ndarray  # [n_shards + 1] first global row of each shard
    _vectors: dict = field(default_factory=dict, repr=False)  # shard number -> [(first row, offsets, vectors, ids)]
    _lists: object = field(default=None, repr=False)  # candidates.GlobalLists, joined on first use
    _read: dict = field(default_factory=dict, repr=False)  # shard number -> record batches read since the last release
    _read_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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
    if [entry["shard"] for entry in entries] != [shard["file"] for shard in index.shards]:
        raise IndexCorruptError(f"{index.folder}: the search structure does not list the manifest's shards")
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
) -> list[list[tuple[str, float]]]:
    """Per query the best ``top_k`` (doc id, score), best first (see the module docstring)."""
    from tokembed.search.maxsim import check_query_dims

    check_search_options(probe, candidates)
    check_query_dims(queries, index.dim)
    return [_one_query(index, structure, np.asarray(q, np.float32), top_k, probe, max(candidates, top_k), rerank) for q in queries]


def _one_query(index, structure: Structure, q: np.ndarray, top_k: int, probe: int, candidates: int, rerank: str):
    if not len(q):  # an empty query scores 0 against every document: the first ones in index order
        rows = np.arange(min(top_k, structure.rows))
        return [(_doc_id(index, structure, int(r)), 0.0) for r in rows]
    sims = q @ structure.codec.centroids.T  # [n, K]
    pool = candidate_rows(structure, sims, probe, CENTROID_POOL * candidates)
    rows = best_by_centroids(structure, sims, pool, candidates)
    if not len(rows):
        return []
    scores = _exact_scores(index, structure, q, rows, rerank)
    order = np.lexsort((rows, -scores))[:top_k]  # best first; equal scores in index order
    return [(_doc_id(index, structure, int(rows[i])), float(scores[i])) for i in order]


def _exact_scores(index, structure: Structure, q: np.ndarray, rows: np.ndarray, rerank: str) -> np.ndarray:
    """Exact MaxSim of ``q`` with each row (sorted, each with at least one token), float32."""
    x, lengths = _gather(index, structure, rows, rerank)  # [tokens, D] float32, [rows]
    sims = q @ x.T  # [query tokens, candidate tokens]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.maximum.reduceat(sims, starts, axis=1).sum(axis=0, dtype=np.float32)


# float16 bit patterns -> float32: a table lookup is several times faster than numpy's float16 cast
_F16_TO_F32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def _gather(index, structure: Structure, rows: np.ndarray, rerank: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows' token vectors concatenated in row order, from the shards or decoded from the codes."""
    pieces, lengths = [], []
    numbers = np.searchsorted(structure.starts, rows, side="right") - 1
    for number in np.unique(numbers):
        local = rows[numbers == number] - structure.starts[number]
        if rerank == "codes":
            codes = structure.shards[number]
            take, count = ragged(codes.doc_offsets[local], codes.doc_offsets[local + 1])
            pieces.append(structure.codec.decode(codes.centroid_ids[take], codes.residuals[take]))
            lengths.append(count)
            continue
        batches = _batches(index, structure, int(number))
        at = np.searchsorted(batches.firsts, local, side="right") - 1
        for b in np.unique(at):
            offsets, vectors = batches.offsets[b], batches.vectors[b]
            if vectors is None:
                require_vectors(index, "re-ranking from the stored vectors")
            mine = local[at == b] - batches.firsts[b]
            take, count = ragged(offsets[mine] - offsets[0], offsets[mine + 1] - offsets[0])
            picked = vectors[take]  # a copy: the mapped pages it came from can go
            _note_read(structure, int(number), int(b), picked.nbytes)
            pieces.append(_F16_TO_F32[picked.view(np.uint16)] if picked.dtype == np.float16 else picked.astype(np.float32))
            lengths.append(count)
    return np.concatenate(pieces), np.concatenate(lengths)


def _note_read(structure: Structure, number: int, batch: int, size: int) -> None:
    """Remember a record batch the re-rank read; past ``RELEASE_BYTES`` read, drop every such batch's mapped
    pages (one madvise per batch; per query that cost more than the re-rank itself at 1M documents), so the
    resident memory of many queries stays bounded instead of growing towards the whole index."""
    with structure._lock:
        structure._read.setdefault(number, set()).add(batch)
        structure._read_bytes += size
        if structure._read_bytes < RELEASE_BYTES:
            return
        for shard, read in structure._read.items():
            batches = structure._vectors[shard]
            for b in read:
                batches.pages.release(batches.batches[b])
        structure._read.clear()
        structure._read_bytes = 0


@dataclass
class _ShardBatches:
    firsts: np.ndarray  # first row (within the shard) of each record batch
    offsets: list  # per batch: token offsets [rows + 1]
    vectors: list  # per batch: [tokens, D] zero-copy (None: a compressed-only shard)
    batches: list  # the record batches: their ids, and their mapped pages to drop once read
    pages: MappedPages


def _batches(index, structure: Structure, number: int) -> _ShardBatches:
    if number not in structure._vectors:
        shard = index.shards[number]
        reader = index.open_shard(shard)
        records = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        firsts = np.cumsum([0] + [batch.num_rows for batch in records], dtype=np.int64)[: len(records)]
        offsets, vectors = [], []
        for batch in records:
            if EMBEDDINGS not in batch.schema.names:  # a compressed-only index (compress --drop-vectors): ids only
                offsets.append(None)
                vectors.append(None)
                continue
            embeddings = batch.column(EMBEDDINGS)
            flat = embeddings.values.values.to_numpy(zero_copy_only=True).reshape(-1, index.dim)
            offsets.append(embeddings.offsets.to_numpy().astype(np.int64))
            vectors.append(flat[embeddings.values.offset : embeddings.values.offset + len(embeddings.values)])
        pages = MappedPages(index.shard_path(shard))
        structure._vectors[number] = _ShardBatches(firsts, offsets, vectors, records, pages)
    return structure._vectors[number]


def _doc_id(index, structure: Structure, row: int) -> str:
    number = int(np.searchsorted(structure.starts, row, side="right")) - 1
    local = row - int(structure.starts[number])
    batches = _batches(index, structure, number)
    at = int(np.searchsorted(batches.firsts, local, side="right")) - 1
    return batches.batches[at].column("id")[local - int(batches.firsts[at])].as_py()
