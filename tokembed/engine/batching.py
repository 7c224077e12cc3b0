"""Sorted-length batching under a token budget.

Items of a chunk are sorted by token count (longest first, stable) and cut into batches whose padded
size ``rows x longest`` stays within ``budget``. The plan depends only on the lengths and the budget,
never on how many devices run it. An item longer than the budget runs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    rows: np.ndarray  # indices into the chunk, longest first
    width: int  # padded length of every row

    @property
    def computed_tokens(self) -> int:
        return len(self.rows) * self.width


def plan_batches(lengths: np.ndarray, budget: int) -> list[Batch]:
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[Batch] = []
    start = 0
    while start < len(order):
        width = int(max(lengths[order[start]], 1))
        size = max(1, budget // width)
        rows = order[start : start + size]
        batches.append(Batch(rows=rows, width=width))
        start += len(rows)
    return batches


def useful_fraction(real_tokens: int, computed_tokens: int) -> float:
    return real_tokens / computed_tokens if computed_tokens else 1.0
