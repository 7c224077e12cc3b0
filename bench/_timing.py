"""Wall-clock timing and memory peaks shared by the bench scripts."""

from __future__ import annotations

import glob
import os
import statistics
import threading
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


class TreeMemoryPeak:
    """While inside: the peak, over samples every ``interval`` s, of the PSS of this process and its children
    summed (pages they share counted once between them: what the processes hold together, where the sum of
    their RSS would count the shared index maps and copy-on-write pages once per process)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval, self.peak_mb = interval, 0.0

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, sum(_pss_kb(pid) for pid in _process_tree()) / 1024)
            if self._stop.wait(self.interval):
                return


def _process_tree() -> list[int]:
    children = []
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(path) as listed:
            children += [int(pid) for pid in listed.read().split()]
    return [os.getpid(), *children]


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    except (FileNotFoundError, ProcessLookupError, StopIteration):  # a child that just ended
        return 0
