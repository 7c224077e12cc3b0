"""Id lookups in bounded memory: 64-bit id hashes in sorted numpy runs, ~16 bytes per id.

A run over millions of rows must not hold every id as a Python string (~200 bytes each with its dict
slot): ``KeyIndex`` keeps ``uint64`` hashes and ``int64`` values in sorted arrays instead. A hash match
is only a candidate; callers confirm it against the real id (two ids can share a 64-bit hash).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def id_keys(ids: Iterable[str | None]) -> np.ndarray:
    """64-bit hashes of ids (blake2b), as a uint64 array; a bad row's None (it has no id, and is never looked up
    nor added: ``SeenIds``) hashes as ""."""
    digests = b"".join(hashlib.blake2b((item_id or "").encode("utf-8", "surrogatepass"), digest_size=8).digest()
                       for item_id in ids)
    return np.frombuffer(digests, dtype=np.uint64).copy()


class KeyIndex:
    """Append-only multimap ``uint64 key -> int64 value`` as sorted runs of geometric sizes (an in-memory
    LSM tree): adding n keys costs O(n log n) in all, a lookup one binary search per run."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        run = (keys[order], np.asarray(values, dtype=np.int64)[order])
        self._size += len(keys)
        while self._runs and len(self._runs[-1][0]) <= len(run[0]):
            run = _merge(self._runs.pop(), run)
        self._runs.append(run)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """For each key, the value of one entry with that key (the oldest run's), or -1."""
        found = np.full(len(keys), -1, dtype=np.int64)
        for run_keys, run_values in self._runs:
            at = np.minimum(np.searchsorted(run_keys, keys), len(run_keys) - 1)
            hit = (run_keys[at] == keys) & (found < 0)
            found[hit] = run_values[at[hit]]
        return found


def _merge(older: tuple[np.ndarray, np.ndarray], newer: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    keys = np.concatenate([older[0], newer[0]])
    values = np.concatenate([older[1], newer[1]])
    order = np.argsort(keys, kind="stable")  # equal keys keep insertion order
    return keys[order], values[order]
