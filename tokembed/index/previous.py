"""The index a run starts from: which ids it holds with which content hash, and their rows.

Only the ``id`` column is read up front, into 64-bit hashes (``KeyIndex``, ~16 bytes a row); ids,
content hashes and a carried-over row's vectors are read straight out of the memory-mapped shards
when needed, never copied whole and never re-encoded.
"""

from __future__ import annotations

import numpy as np

from tokembed.index.arrays import list_offsets, numpy_view, string_offsets
from tokembed.index.format import EMBEDDINGS, require_vectors
from tokembed.index.keys import KeyIndex, id_keys
from tokembed.index.pages import MappedPages
from tokembed.index.reader import Index


class PreviousIndex:
    def __init__(self, index: Index) -> None:
        self.index = index
        self._batches = []
        self._pages: list[MappedPages] = []  # per batch: its shard's mapped pages
        self._keys = KeyIndex()
        starts = [0]
        for shard in index.shards:
            pages, reader = index.shard_pages(shard), index.open_shard(shard)
            for number in range(reader.num_record_batches):
                batch = reader.get_batch(number, validated=True)  # a full rebuild reads ids of an unchecked index
                self._batches.append(batch)
                self._pages.append(pages)
                self._keys.add(id_keys(batch.column("id").to_pylist()), np.arange(starts[-1], starts[-1] + batch.num_rows))
                starts.append(starts[-1] + batch.num_rows)
                pages.release(batch)
        self._starts = np.asarray(starts, dtype=np.int64)
        self._views: dict[int, tuple] = {}
        self._touched: set[int] = set()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def find(self, ids: list[str], keys: np.ndarray) -> list[int | None]:
        """For each id (with its ``id_keys`` hash), its row number in this index, or None."""
        candidates = self._keys.find(keys)
        hit = np.flatnonzero(candidates >= 0)
        rows: list[int | None] = [None] * len(ids)
        for i, row, stored in zip(hit.tolist(), candidates[hit].tolist(), self.ids_at(candidates[hit])):
            if stored != ids[i]:  # two ids with one 64-bit hash: look it up for real
                row = self._find_by_scan(ids[i])
            rows[i] = row if row >= 0 else None
        return rows

    def ids_at(self, rows: np.ndarray) -> list[str]:
        """The ids of many rows at once, read from each record batch's offsets and UTF-8 bytes (Arrow's ``take``
        would import ``pyarrow.compute``: ~0.1 s of an incremental run's start)."""
        out: list = [None] * len(rows)
        for number, positions, local in self._by_batch(rows):
            column = self._batches[number].column("id")
            offsets = string_offsets(column)
            data = memoryview(column.buffers()[2] or b"")
            for position, start, end in zip(positions.tolist(), offsets[local].tolist(), offsets[local + 1].tolist()):
                out[position] = str(data[start:end], "utf-8")
        return out

    def content_hashes(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), 32] uint8: the stored content hashes of many rows at once."""
        out = np.empty((len(rows), 32), np.uint8)
        for number, positions, local in self._by_batch(rows):
            out[positions] = self._view(number)[3][local]
        return out

    def unchanged(self, rows: list[int | None], hashes) -> np.ndarray:
        """Per item, whether its stored row (None: not stored) holds the same content hash, a batch at a time.
        ``hashes``: each item's 32-byte digest, or all of them as one [items, 32] uint8 array."""
        out = np.zeros(len(rows), bool)
        found = [i for i, row in enumerate(rows) if row is not None]
        if found:
            if isinstance(hashes, np.ndarray):
                digests = hashes[found]
            else:
                digests = np.frombuffer(b"".join(hashes[i] for i in found), np.uint8).reshape(-1, 32)
            out[found] = (self.content_hashes(np.asarray([rows[i] for i in found], np.int64)) == digests).all(axis=1)
        return out

    def content_hash(self, row: int) -> bytes:
        return self.content_hashes(np.array([row]))[0].tobytes()

    def id_at(self, row: int) -> str:
        return self.ids_at(np.array([row]))[0]

    def vectors(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [n, D], token ids [n]) of one stored row, zero-copy from the memory map."""
        number, at = self._locate(row)
        offsets, values, token_ids, _ = self._view(number)
        if values is None:
            require_vectors(self.index, "carrying a row over into the next generation")
        start, end = offsets[at], offsets[at + 1]
        return values[start:end], token_ids[start:end]

    def token_ids(self, row: int) -> np.ndarray:
        number, at = self._locate(row)
        offsets, _, token_ids, _ = self._view(number)
        return token_ids[offsets[at] : offsets[at + 1]]

    def carried_row(self, row: int) -> tuple:
        """What an unchanged row brings into the next generation: (vectors, token ids) here; a compressed-only
        index's ``CodedPrevious`` brings its codes instead."""
        return self.vectors(row)

    def release_pages(self) -> None:
        """Drop the mapped pages read so far from resident memory (call once their rows are written):
        an incremental run over a large index would otherwise end up holding all of it."""
        for number in self._touched:
            self._pages[number].release(self._batches[number])
        self._touched.clear()

    def _by_batch(self, rows: np.ndarray):
        """(batch number, positions in ``rows``, rows within the batch) for each batch ``rows`` touch."""
        rows = np.asarray(rows, np.int64)
        numbers = np.searchsorted(self._starts, rows, side="right") - 1
        order = np.argsort(numbers, kind="stable")
        present, firsts = np.unique(numbers[order], return_index=True)
        for number, positions in zip(present.tolist(), np.split(order, firsts[1:])):
            self._touched.add(number)
            yield number, positions, rows[positions] - self._starts[number]

    def _locate(self, row: int) -> tuple[int, int]:
        number = int(np.searchsorted(self._starts, row, side="right")) - 1
        self._touched.add(number)
        return number, row - int(self._starts[number])

    def _find_by_scan(self, item_id: str) -> int:
        import pyarrow.compute as pc

        for number, batch in enumerate(self._batches):
            at = pc.index(batch.column("id"), item_id).as_py()
            self._pages[number].release(batch)
            if at >= 0:
                return int(self._starts[number]) + at
        return -1

    def _view(self, number: int) -> tuple:
        if number not in self._views:
            batch = self._batches[number]
            tokens = batch.column("token_ids")
            offsets, values = list_offsets(tokens), None  # a compressed-only shard has no vectors
            if EMBEDDINGS in batch.schema.names:
                embeddings = batch.column(EMBEDDINGS)
                offsets, values = list_offsets(embeddings), numpy_view(embeddings.values.values).reshape(-1, self.index.dim)
            hashes = batch.column("content_hash")
            digests = np.frombuffer(hashes.buffers()[1], dtype=np.uint8).reshape(-1, 32)[hashes.offset : hashes.offset + len(hashes)]
            if len(self._views) >= 8:  # rows are asked for in index order, mostly: a few batches' views do
                self._views.clear()
            self._views[number] = (offsets, values, numpy_view(tokens.values), digests)
        return self._views[number]
