"""The index a run starts from: which ids it holds with which content hash, and their rows.

Only the ``id`` and ``content_hash`` columns are read up front; a carried-over row's vectors are sliced
straight out of the memory-mapped shard when it is written again, never re-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokembed.index.reader import Index


@dataclass(frozen=True)
class PreviousRow:
    content_hash: bytes
    batch: int  # index into PreviousIndex._batches
    row: int


class PreviousIndex:
    def __init__(self, index: Index) -> None:
        self.index = index
        self.rows: dict[str, PreviousRow] = {}
        self._batches = []
        self._views: dict[int, tuple] = {}
        for batch in index.iter_batches():
            number = len(self._batches)
            self._batches.append(batch)
            ids = batch.column("id").to_pylist()
            hashes = batch.column("content_hash").to_pylist()
            for row, (item_id, digest) in enumerate(zip(ids, hashes)):
                self.rows[item_id] = PreviousRow(digest, number, row)

    def unchanged(self, item_id: str, content_hash: bytes) -> PreviousRow | None:
        found = self.rows.get(item_id)
        return found if found is not None and found.content_hash == content_hash else None

    def vectors(self, where: PreviousRow) -> tuple[np.ndarray, np.ndarray]:
        """(vectors [n, D], token ids [n]) of one stored row, zero-copy from the memory map."""
        offsets, values, token_ids = self._view(where.batch)
        start, end = offsets[where.row], offsets[where.row + 1]
        return values[start:end], token_ids[start:end]

    def _view(self, number: int) -> tuple:
        if number not in self._views:
            batch = self._batches[number]
            embeddings, tokens = batch.column("embeddings"), batch.column("token_ids")
            values = embeddings.values.values.to_numpy(zero_copy_only=False).reshape(-1, self.index.dim)
            self._views[number] = (embeddings.offsets.to_numpy(), values, tokens.values.to_numpy(zero_copy_only=False))
        return self._views[number]
