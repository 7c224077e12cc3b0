"""Sorted-length batching under a token budget.

Items of a chunk are sorted by token count (longest first, stable), then cut into consecutive runs
so that each batch's padded size ``rows x longest`` stays within ``budget``. Where to cut is chosen
by dynamic programming to minimise padded positions plus a fixed per-batch cost, which keeps the
useful-token fraction near 1 without falling back to tiny batches. The plan depends only on the
lengths and the budget, never on how many devices run it. An item longer than the budget runs alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# One forward call costs about as much as this many padded positions (kernel launches, Python).
BATCH_OVERHEAD_TOKENS = 32


@dataclass(frozen=True)
class Batch:
    rows: np.ndarray  # indices into the chunk, longest first
    width: int  # padded length of every row

    @property
    def computed_tokens(self) -> int:
        return len(self.rows) * self.width


def plan_batches(lengths: np.ndarray, budget: int, overhead: int = BATCH_OVERHEAD_TOKENS) -> list[Batch]:
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return []
    order = np.argsort(-lengths, kind="stable")
    widths = np.maximum(lengths[order], 1)
    starts = _best_cuts(widths, budget, overhead)
    bounds = list(starts) + [len(order)]
    return [Batch(rows=order[a:b], width=int(widths[a])) for a, b in zip(bounds[:-1], bounds[1:])]


def _best_cuts(widths: np.ndarray, budget: int, overhead: int) -> list[int]:
    """Start indices of the batches minimising sum(rows * width) + overhead * batches (widths sorted desc)."""
    n = len(widths)
    cost = np.zeros(n + 1, dtype=np.int64)
    start_of = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        most_rows = max(1, budget // int(widths[end - 1]))
        first = max(0, end - most_rows)
        starts = np.arange(first, end)
        padded = (end - starts) * widths[starts]
        candidates = cost[starts] + padded + overhead
        candidates[(padded > budget) & (starts != end - 1)] = np.iinfo(np.int64).max  # over budget
        best = int(np.argmin(candidates))
        cost[end] = candidates[best]
        start_of[end] = starts[best]
    cuts = []
    end = n
    while end > 0:
        end = int(start_of[end])
        cuts.append(end)
    return cuts[::-1]


def useful_fraction(real_tokens: int, computed_tokens: int) -> float:
    return real_tokens / computed_tokens if computed_tokens else 1.0
