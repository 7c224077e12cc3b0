"""The duplicate-id check of a run, in ~16 bytes per id however large the corpus.

Ids of earlier chunks are kept only as 64-bit hashes (``KeyIndex``). A hash hit is a candidate: it is
confirmed, and the earlier row found so the error can name both, by reading the inputs again up to
the current row. Only a real duplicate (which ends the run) or a 64-bit hash collision (which the
re-read clears) pays for that. A re-read that no longer finds the id at all is a collision only when the
earlier row it hit still hashes the same; else that row changed since it was read (the file rewritten during
the run), and the run stops rather than take the id twice.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import numpy as np

from tokembed.errors import BadInputError
from tokembed.index.keys import KeyIndex, id_keys
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
        indexed, and one may have no id at all (None: a null id, a line that is not JSON)."""
        found: dict[int, str] = {}
        first_here: dict[str, int] = {}
        candidates = self._keys.find(keys)
        for position, (item, key, candidate) in enumerate(zip(chunk, keys.tolist(), candidates.tolist())):
            if item.error is not None:
                continue
            if item.id in first_here:
                found[position] = chunk[first_here[item.id]].location
            elif candidate >= 0:
                earlier = self._earlier_location(item, key, candidate, self._count)
                if earlier is not None:
                    found[position] = earlier
            first_here.setdefault(item.id, position)
        good = np.array([item.error is None for item in chunk], dtype=bool)
        self._keys.add(keys[good], np.arange(self._count, self._count + len(chunk))[good])
        self._count += len(chunk)
        return found

    def _earlier_location(self, item: Item, key: int, candidate: int, before: int) -> str | None:
        """The location of the earlier row with ``item``'s id (among the first ``before`` rows), or None for a
        hash collision: the row the hash hit (ordinal ``candidate``) reads as another id of the same hash."""
        seen, hit = 0, None
        with closing(open_sources(self.inputs, self.options)) as chunks:
            for chunk in chunks:
                for ordinal, earlier in enumerate(chunk[: before - seen], start=seen):
                    if earlier.id == item.id and earlier.error is None:
                        return earlier.location
                    hit = earlier if ordinal == candidate else hit
                seen += len(chunk)
                if seen >= before:
                    break
        if hit is not None and hit.error is None and int(id_keys([hit.id])[0]) == key:
            return None
        where = hit.location if hit is not None else f"row {candidate} of the inputs"
        raise BadInputError(f"input changed during the run: {where} no longer holds the id it was read with, so "
                            f"whether id {item.id!r} ({item.location}) came before cannot be checked",
                            hint="rerun once the input is no longer being rewritten")
