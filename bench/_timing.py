"""Wall-clock timing shared by the bench scripts."""

from __future__ import annotations

import statistics
import time


def timed_runs(fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_time(fn, repeats: int) -> float:
    return statistics.median(timed_runs(fn, repeats))
