"""The duplicate-id check of a run, in ~16 bytes per id however large the corpus.

Ids of earlier chunks are kept only as 64-bit hashes (``KeyIndex``). A hash hit is a candidate: it is
confirmed, and the earlier row found so the error can name both, by reading the inputs again up to
the current row. Only a real duplicate (which ends the run) or a 64-bit hash collision (which the
re-read clears) pays for that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokembed.index.keys import KeyIndex
from tokembed.sources.base import Item, SourceOptions, open_sources


class SeenIds:
    def __init__(self, inputs: list[Path], options: SourceOptions) -> None:
        self.inputs = inputs
        self.options = options
        self._keys = KeyIndex()
        self._count = 0  # items added so far: the next item's ordinal in the inputs

    def record(self, chunk: list[Item], keys: np.ndarray) -> dict[int, str]:
        """Add the chunk's ids (``keys``: their ``id_keys``); returns the positions whose id came earlier
        (in this chunk or before) -> that earlier row's location. Bad rows take no part: they are never
        indexed, and the id of one that has none (a null id, a line that is not JSON) is its row number,
        which a real id may equal."""
        found: dict[int, str] = {}
        first_here: dict[str, int] = {}
        candidates = self._keys.find(keys)
        for position, (item, candidate) in enumerate(zip(chunk, candidates.tolist())):
            if item.error is not None:
                continue
            if item.id in first_here:
                found[position] = chunk[first_here[item.id]].location
            elif candidate >= 0:
                earlier = self._earlier_location(item.id, self._count)
                if earlier is not None:
                    found[position] = earlier
            first_here.setdefault(item.id, position)
        good = np.array([item.error is None for item in chunk], dtype=bool)
        self._keys.add(keys[good], np.arange(self._count, self._count + len(chunk))[good])
        self._count += len(chunk)
        return found

    def _earlier_location(self, item_id: str, before: int) -> str | None:
        seen = 0
        for chunk in open_sources(self.inputs, self.options):
            for item in chunk[: before - seen]:
                if item.id == item_id and item.error is None:
                    return item.location
            seen += len(chunk)
            if seen >= before:
                return None
        return None
