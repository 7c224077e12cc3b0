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


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ``getrusage(RUSAGE_SELF).ru_maxrss``: Linux carries the forking
    parent's peak over fork and exec into it, so a small worker started by a big parent would report the parent's."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
