"""Per-shard code files: row for row with one Arrow shard, each token's centroid id and residual code,
plus the shard's inverted lists (centroid -> the shard's rows holding a token of that centroid).

    plaid/codes-<shard sha256[:24]>-<codec sha256[:12]>.safetensors  (a compressed-only shard's, where other codes
        hold that name: -<its own sha256[:12]> before .safetensors; see ``drop._link_codes``)
        doc_lengths    [rows]            uint8   tokens of each row (the shard's list lengths); uint16 or
                                                 uint32 when a row has more than 255 / 65,535 tokens
        centroid_ids   [tokens]          uint16  (when the codec has more than 32,768 centroids)
        centroid_ids_packed  [bytes]     uint8   (otherwise) each id in ``centroid_id_bits`` bits (the
                                                 file's metadata: 12 for 4,096 centroids), a little-endian
                                                 bit stream, then 2 zero bytes
        residuals      [tokens, bytes]   uint8   nbits per dimension, packed (``codec.pack``: the first dimension
                                                 in a byte's high bits, each bucket most significant bit first)
        list_counts    [K]               uint8   rows of centroid c: the next list_counts[c] entries of
                                                 list_rows; uint16 or uint32 when a centroid's list holds
                                                 more than 255 / 65,535 rows
        list_rows      [pairs]           uint16  row numbers within the shard, ascending per centroid
                                                 (uint32 when the shard has more than 65,536 rows)
        vector_norms   [tokens]          float16 each stored vector's length, where the codec keeps them
                                                 (``Codec.vector_norms``: an un-normalized or pooled index)

Lengths and counts rather than offsets: 1-2 bytes each instead of 8 and 4 (0.17 B/token at 1M documents);
opening a file turns them into offsets (``ShardCodes``). Packed ids save 2 - bits/8 bytes per token (0.5
with 4,096 centroids). Files written before this layout hold ``doc_offsets`` (int64) and ``list_offsets``
(uint32) instead, or uint16 ids with fewer centroids, or list counts in uint16 even where every list holds
at most 255 rows (0.033 B/token more at 1M documents), and are read as they are.

The name is a function of the shard's bytes and the codec: an unchanged shard keeps its file, and a file
that exists was written whole (temp, fsync, rename), so a run killed half way resumes by skipping it.
Coding streams the shard one record batch at a time; a row whose codes the previous generation already
holds (same id, same content hash, same codec) is copied instead of coded.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Protocol

import numpy as np

from tokembed.errors import IndexCorruptError
from tokembed.search.plaid.lists import ragged
from tokembed.search.plaid.codec import Codec
from tokembed.search.plaid.files import map_tensors, verify_file, write_tensors

CODES_DIR = "plaid"


def codes_name(shard_sha256: str, codec_sha256: str, codes_sha256: str = "") -> str:
    """``codes_sha256``: only for a shard without vectors whose name is taken by other codes (``drop._link_codes``)."""
    own = f"-{codes_sha256[:12]}" if codes_sha256 else ""
    return f"{CODES_DIR}/codes-{shard_sha256[:24]}-{codec_sha256[:12]}{own}.safetensors"


def shard_codes_name(entry: dict) -> str:
    """The name ``codes_name`` gives a committed ``search.shards`` entry's shard and codec, without the codes' own
    sha256 a compressed-only shard's file may carry: what a run looks its shard's committed codes up by."""
    own = f"-{entry['sha256'][:12]}.safetensors"
    return entry["file"].removesuffix(own) + ".safetensors" if entry["file"].endswith(own) else entry["file"]


@dataclass
class ShardCodes:
    """One shard's codes: the ids, residuals and lists memory-mapped when read from disk, the offsets in memory."""

    doc_offsets: np.ndarray  # [rows + 1] int64
    centroid_ids: np.ndarray
    residuals: np.ndarray
    list_offsets: np.ndarray  # [K + 1] int64 (uint32 as ``inverted_lists`` computes them)
    list_rows: np.ndarray
    id_bits: int = 16  # how the file stores the ids: packed when under 16
    vector_norms: np.ndarray | None = None  # [tokens] float16, where the codec keeps the vectors' lengths

    @classmethod
    def open(cls, path, opened=None) -> "ShardCodes":
        tensors, metadata = map_tensors(path, opened)
        for counts, offsets in (("doc_lengths", "doc_offsets"), ("list_counts", "list_offsets")):
            if counts in tensors:
                tensors[offsets] = _offsets(tensors.pop(counts))
        if "centroid_ids_packed" in tensors and "doc_offsets" in tensors:
            try:
                tensors["id_bits"] = int(metadata.get("centroid_id_bits", 0))
                tensors["centroid_ids"] = PackedIds(tensors.pop("centroid_ids_packed"), tensors["id_bits"],
                                                    int(tensors["doc_offsets"][-1]))
            except ValueError as exc:
                raise IndexCorruptError(f"{path}: {exc}") from None
        missing = [item.name for item in fields(cls) if item.default is MISSING and item.name not in tensors]
        if missing:
            raise IndexCorruptError(f"{path}: a code file layout this release cannot read (no {', '.join(missing)}): "
                                    "written by a newer tokembed? Upgrade, or search with --exact")
        return cls(**{name: tensors[name] for name in cls.__dataclass_fields__ if name in tensors})

    @property
    def rows(self) -> int:
        return len(self.doc_offsets) - 1

    def row_codes(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = int(self.doc_offsets[row]), int(self.doc_offsets[row + 1])
        return self.centroid_ids[start:end], self.residuals[start:end]

    def row_norms(self, row: int) -> np.ndarray | None:
        if self.vector_norms is None:
            return None
        return self.vector_norms[int(self.doc_offsets[row]) : int(self.doc_offsets[row + 1])]

    def tensors(self) -> dict[str, np.ndarray]:
        """What the code file stores (see the module docstring)."""
        ids = {"centroid_ids": self.centroid_ids} if self.id_bits >= 16 else \
            {"centroid_ids_packed": pack_ids(self.centroid_ids, self.id_bits)}
        norms = {} if self.vector_norms is None else {"vector_norms": self.vector_norms}
        return {"doc_lengths": _narrowest(np.diff(self.doc_offsets)), **ids, "residuals": self.residuals,
                "list_counts": _narrowest(np.diff(self.list_offsets)), "list_rows": self.list_rows, **norms}

    def write(self, path) -> dict:
        """Write the code file durably; its manifest entry (bytes, sha256)."""
        metadata = {"centroid_id_bits": str(self.id_bits)} if self.id_bits < 16 else None
        return write_tensors(path, self.tensors(), metadata)


PACK_CHUNK = 1 << 20  # ids per packing step (a multiple of 8: each chunk ends on a byte)


def pack_ids(ids: np.ndarray, bits: int) -> np.ndarray:
    """Ids (each < 2**bits) as a little-endian stream of ``bits`` bits each, then 2 zero bytes (so that
    ``PackedIds`` can load 3 bytes at any id)."""
    out = np.zeros(-(-len(ids) * bits // 8) + 2, np.uint8)
    apart = -(-24 // bits)  # ids this far apart never share a byte: each such class is OR-ed in without clashes
    for first in range(apart):
        for start in range(first, len(ids), PACK_CHUNK):
            chosen = ids[start : start + PACK_CHUNK : apart].astype(np.uint32)
            bit = np.arange(start, start + len(chosen) * apart, apart, dtype=np.int64)[: len(chosen)] * bits
            at, word = bit >> 3, chosen << (bit & 7).astype(np.uint32)
            for byte in range(3):
                out[at + byte] |= ((word >> (8 * byte)) & 0xFF).astype(np.uint8)
    return out


class PackedIds:
    """``pack_ids``' stream read back: ``[positions]`` and ``[start:end]`` give uint16 ids, ``len`` the count."""

    def __init__(self, data: np.ndarray, bits: int, count: int) -> None:
        if not 1 <= bits < 16:
            raise ValueError(f"packed centroid ids of {bits} bits (the file's centroid_id_bits, 0 where it has none): "
                             "not a width of 1 to 15")
        stream = -(-count * bits // 8)
        if len(data) != stream + 2:  # the stream alone too: reading its last ids would run past the end
            raise ValueError(f"packed centroid ids: {len(data)} bytes where {count} ids of {bits} bits take {stream + 2}, "
                             f"their {stream}-byte stream and the 2 zero bytes after it (each id is read as the 3 bytes "
                             "from its first)")
        self.data, self.bits, self.count = data, bits, count

    def __len__(self) -> int:
        return self.count

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:].astype(dtype or np.uint16, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        positions = np.arange(*key.indices(self.count)) if isinstance(key, slice) else np.asarray(key)
        bit = positions.astype(np.int64) * self.bits
        at = bit >> 3
        word = self.data[at].astype(np.uint32)
        word |= self.data[at + 1].astype(np.uint32) << 8
        word |= self.data[at + 2].astype(np.uint32) << 16
        return ((word >> (bit & 7).astype(np.uint32)) & ((1 << self.bits) - 1)).astype(np.uint16)


def vector_lengths(vectors: np.ndarray) -> np.ndarray:
    """[n, D] -> [n] float16 lengths, each row's sum on its own (the same bytes however rows are grouped). A length
    past float16's range (a ``--no-normalize`` vector longer than 65504) is refused: kept as inf, it decoded to inf
    and NaN scores."""
    x = np.asarray(vectors, np.float32)
    lengths = np.sqrt(np.add.reduce(x * x, axis=1))
    if len(lengths) and float(lengths.max()) > FLOAT16_MAX:
        from tokembed.errors import UsageError

        raise UsageError(f"a vector of length {float(lengths.max()):.6g} is past float16's range ({FLOAT16_MAX:g}), "
                         "in which the search structure keeps each vector's length",
                         hint="search this index with score --exact (no structure), or encode it normalized")
    return lengths.astype(np.float16)


FLOAT16_MAX = float(np.finfo(np.float16).max)


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


def _narrowest(counts: np.ndarray) -> np.ndarray:
    """``counts`` in the narrowest unsigned dtype that holds the largest."""
    top = int(counts.max()) if len(counts) else 0
    return counts.astype(np.min_scalar_type(top))


# A batch's unchanged rows: (ids, content hashes [rows, 32]) of the batch -> (the rows carried [k] (positions
# in the batch, ascending), their rows in the previous generation [k]); ``.codes``: that generation's codes.
class CarryLookup(Protocol):
    codes: "StoredCodes"

    def __call__(self, ids: list[str], hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class CodingStats:
    coded_tokens: int = 0  # tokens that went through the codec in this run
    carried_tokens: int = 0  # tokens whose codes were copied from the previous generation
    residual_norm_sum: float = 0.0  # over the coded tokens

    def add(self, other: "CodingStats") -> None:
        self.coded_tokens += other.coded_tokens
        self.carried_tokens += other.carried_tokens
        self.residual_norm_sum += other.residual_norm_sum


class StoredCodes:
    """A committed structure's codes, by global row: each shard's code file opened (size checked) on first use."""

    def __init__(self, folder, entries: list[dict]) -> None:
        self.folder = folder
        self.entries = entries
        self.starts = np.cumsum([0] + [entry["rows"] for entry in entries])
        self._opened: dict[int, ShardCodes] = {}

    def row_codes(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(centroid ids, packed residuals) of one row."""
        number = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self._shard(number).row_codes(row - int(self.starts[number]))

    def row_norms(self, row: int) -> np.ndarray | None:
        """The stored vector lengths of one row (None where its code file keeps none)."""
        number = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self._shard(number).row_norms(row - int(self.starts[number]))

    def copy_rows_into(self, rows: np.ndarray, lengths: np.ndarray, to: np.ndarray, ids: np.ndarray, residuals: np.ndarray) -> None:
        """Copy the codes of ``rows`` into ``ids`` / ``residuals`` from token position ``to[i]`` on, one slice
        copy per run of rows whose tokens lie back to back at both ends (an incremental run's unchanged rows
        are long such runs). Raises if a row's code count is not ``lengths[i]``, its token count now."""
        rows, to = np.asarray(rows, np.int64), np.asarray(to, np.int64)
        numbers = np.searchsorted(self.starts, rows, side="right") - 1
        for number in np.flatnonzero(np.bincount(numbers)).tolist():  # not np.unique: it imports numpy.ma (~0.08 s)
            codes, chosen = self._shard(number), np.flatnonzero(numbers == number)
            local = rows[chosen] - int(self.starts[number])
            firsts, ends, targets = codes.doc_offsets[local], codes.doc_offsets[local + 1], to[chosen]
            if not np.array_equal(ends - firsts, lengths[chosen]):
                raise IndexCorruptError("a carried row's code count differs from its token count in the previous generation")
            cuts = np.flatnonzero((firsts[1:] != ends[:-1]) | (targets[1:] != targets[:-1] + (ends[:-1] - firsts[:-1]))) + 1
            for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(chosen)]):
                start, end, at = int(firsts[a]), int(ends[b - 1]), int(targets[a])
                ids[at : at + end - start] = codes.centroid_ids[start:end]
                residuals[at : at + end - start] = codes.residuals[start:end]

    def rows_alike(self, rows: np.ndarray, lengths: np.ndarray, at: np.ndarray, ids: np.ndarray,
                   residuals: np.ndarray) -> np.ndarray:
        """Per row of ``rows``: whether its stored codes are ``ids`` / ``residuals`` from token position ``at[i]``
        on, ``lengths[i]`` tokens (a row stored with another token count is not)."""
        rows, lengths, at = (np.asarray(values, np.int64) for values in (rows, lengths, at))
        alike = np.zeros(len(rows), bool)
        numbers = np.searchsorted(self.starts, rows, side="right") - 1
        for number in np.flatnonzero(np.bincount(numbers)).tolist():  # not np.unique: see copy_rows_into
            codes, chosen = self._shard(number), np.flatnonzero(numbers == number)
            local = rows[chosen] - int(self.starts[number])
            firsts, ends = codes.doc_offsets[local], codes.doc_offsets[local + 1]
            fits = ends - firsts == lengths[chosen]
            chosen, firsts = chosen[fits], firsts[fits]
            stored, counts = ragged(firsts, firsts + lengths[chosen])
            now, _ = ragged(at[chosen], at[chosen] + lengths[chosen])
            differ = (codes.centroid_ids[stored] != ids[now]) | (codes.residuals[stored] != residuals[now]).any(axis=1)
            owner = np.repeat(np.arange(len(chosen)), counts)
            alike[chosen] = np.bincount(owner, weights=differ, minlength=len(chosen)) == 0
        return alike

    def _shard(self, number: int) -> ShardCodes:
        if number not in self._opened:
            verify_file(self.folder, self.entries[number], checksum=False)
            self._opened[number] = ShardCodes.open(self.folder / self.entries[number]["file"])
        return self._opened[number]


@dataclass
class CodeParts:
    """One shard's codes, record batch by record batch, until ``assemble`` joins them."""

    lengths: list[np.ndarray] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)
    residuals: list[np.ndarray] = field(default_factory=list)
    norms: list[np.ndarray] = field(default_factory=list)  # where the codec keeps vector lengths


def code_shard(codec: Codec, batches, carry: CarryLookup | None, stats: CodingStats, tokens: int,
               where: str = "shard", alike: CarryLookup | None = None) -> ShardCodes:
    """Codes for one shard of ``tokens`` tokens (its manifest's count) from its record batches
    (``shard_batches``), in row order, written straight into the shard's arrays; ``where`` names the shard
    in errors. ``alike`` (a full rebuild's, instead of ``carry``): the rows the replaced generation held
    unchanged, coded all the same; those whose codes come out as its stored ones count as carried, not coded
    (the drift: these tokens are not new to the centroids)."""
    from tokembed.search.maxsim import batch_arrays

    ids = np.empty(tokens, np.uint16)
    residuals = np.empty((tokens, codec.code_bytes), np.uint8)
    kept_lengths = np.empty(tokens, np.float16) if codec.vector_norms else None
    lengths, at = [], 0
    for batch in batches:
        offsets, vectors, _ = batch_arrays(batch, codec.dim, where)
        if at + len(vectors) > tokens:
            raise IndexCorruptError(f"{where}: holds more tokens than the {tokens} its manifest entry says")
        batch_lengths = np.diff(offsets)
        batch_ids, batch_residuals = ids[at : at + len(vectors)], residuals[at : at + len(vectors)]
        todo = np.ones(len(vectors), bool)
        if carry is not None:
            carried, previous_rows = carry(batch.column("id").to_pylist(), _hashes(batch))
            if len(carried):
                starts = offsets[carried] - offsets[0]
                carry.codes.copy_rows_into(previous_rows, batch_lengths[carried], starts, batch_ids, batch_residuals)
                todo[ragged(starts, starts + batch_lengths[carried])[0]] = False
        rows, coded = np.flatnonzero(todo), 0
        if len(rows):
            batch_ids[rows], batch_residuals[rows], norms = codec.encode(vectors[rows])
            if alike is not None:
                fresh = ~_coded_alike(alike, batch, offsets, batch_ids, batch_residuals)[rows]
                rows, norms = rows[fresh], norms[fresh]
            coded = len(rows)
            stats.coded_tokens += coded
            stats.residual_norm_sum += float(norms.sum(dtype=np.float64))
        stats.carried_tokens += len(vectors) - coded
        if kept_lengths is not None:  # every row's, carried ones too: the vectors are here
            kept_lengths[at : at + len(vectors)] = vector_lengths(vectors)
        lengths.append(batch_lengths)
        at += len(vectors)
    if at != tokens:
        raise IndexCorruptError(f"{where}: holds {at} tokens, its manifest entry says {tokens}")
    return shard_codes(np.concatenate(lengths) if lengths else np.zeros(0, np.int64), ids, residuals, codec, kept_lengths)


def _coded_alike(alike: CarryLookup, batch, offsets: np.ndarray, ids: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Per token of the batch (coded into ``ids`` / ``residuals``): whether its row is one ``alike`` holds
    unchanged, with these very codes."""
    tokens = np.zeros(len(ids), bool)
    rows, previous_rows = alike(batch.column("id").to_pylist(), _hashes(batch))
    if len(rows):
        starts, lengths = offsets[rows] - offsets[0], np.diff(offsets)[rows]
        same = alike.codes.rows_alike(previous_rows, lengths, starts, ids, residuals)
        tokens[ragged(starts[same], starts[same] + lengths[same])[0]] = True
    return tokens


def assemble(parts: CodeParts, codec: Codec) -> ShardCodes:
    """The shard's code file contents from its parts, joined."""
    lengths = np.concatenate(parts.lengths) if parts.lengths else np.zeros(0, np.int64)
    centroid_ids = np.concatenate(parts.ids) if parts.ids else np.zeros(0, np.uint16)
    residuals = np.concatenate(parts.residuals) if parts.residuals else np.zeros((0, codec.code_bytes), np.uint8)
    norms = (np.concatenate(parts.norms) if parts.norms else np.zeros(0, np.float16)) if codec.vector_norms else None
    return shard_codes(lengths, centroid_ids, residuals, codec, norms)


def shard_codes(lengths: np.ndarray, centroid_ids: np.ndarray, residuals: np.ndarray, codec: Codec,
                norms: np.ndarray | None = None) -> ShardCodes:
    """A shard's codes with its row offsets and inverted lists computed (``norms``: the vectors' lengths, where
    the codec keeps them)."""
    doc_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    list_offsets, list_rows = inverted_lists(centroid_ids, lengths, codec.k)
    return ShardCodes(doc_offsets, centroid_ids, residuals, list_offsets, list_rows, codec.id_bits, norms)


def inverted_lists(centroid_ids: np.ndarray, lengths: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [k + 1] uint32, rows [pairs] uint16/uint32): each (centroid, row) pair once, sorted."""
    ids = np.asarray(centroid_ids, np.uint16)
    # A stable sort of 16-bit keys is numpy's radix sort: (centroid, row) order in one linear pass, the rows
    # already ascending within a centroid; then a neighbour test drops repeated pairs.
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    rows = np.repeat(np.arange(len(lengths), dtype=np.uint32), lengths)[order]
    if len(rows):
        first = np.concatenate([[True], (ids[1:] != ids[:-1]) | (rows[1:] != rows[:-1])])
        ids, rows = ids[first], rows[first]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=k))]).astype(np.uint32)
    return offsets, rows.astype(np.uint16 if len(lengths) <= 1 << 16 else np.uint32)


def _hashes(batch) -> np.ndarray:
    """[rows, 32] uint8: the batch's content hashes (a view of its buffer)."""
    column = batch.column("content_hash")
    return np.frombuffer(column.buffers()[1], np.uint8).reshape(-1, 32)[column.offset : column.offset + len(column)]
