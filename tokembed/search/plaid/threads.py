"""Several queries at once: one query per core, each on one BLAS thread.

One query's products are too small to keep two BLAS threads busy, and the rest of its work is numpy on one
thread; with 100 queries at 1M documents on 2 cores, 2 query threads on 1 BLAS thread each answered 42-46
queries/s where one query at a time on 2 BLAS threads answered 28-31 (two query threads with 2 BLAS threads
each: no faster than one, the four threads contend). A single query keeps the BLAS threads. The same holds
for OpenMP (torch's threads): each query thread runs its OpenMP regions on one thread. Query threads share the
GIL; many queries from the main thread go to forked query processes instead (``processes.py``).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

from tokembed.openmp import one_openmp_thread, thread_pools
from tokembed.search.plaid import processes as query_processes
from tokembed.search.plaid.imported import imported_torch

_LOCK = threading.Lock()
_STATE = {"users": 0, "limit": None, "blas_threads": 1, "pools": {}}
_THIS_THREAD = threading.local()


def _forget_threads_after_fork() -> None:
    """A forked child has none of its parent's threads: its pools would take work and never run it."""
    global _LOCK
    _LOCK = threading.Lock()
    _STATE.update(users=0, limit=None, pools={})


os.register_at_fork(after_in_child=_forget_threads_after_fork)


def map_queries(function, queries: list, processes: bool = False) -> list:
    """``[function(q) for q in queries]``, in order, on as many query threads as numpy's BLAS would use
    threads (``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` or the cores) when there are several queries; with
    ``processes``, many queries go to as many forked query processes where forking is safe (``processes.py``).
    Queries answered in the caller's thread run its OpenMP regions on one thread too (``_caller_on_one_openmp_thread``)."""
    count = _workers(len(queries))
    if count > 1:
        if processes and forks(len(queries)):
            return query_processes.map_in_processes(function, queries, count)
        with _one_blas_thread():
            return list(_pool(count).map(_on_one_openmp_thread(function), queries))
    with _caller_on_one_openmp_thread():
        return [function(q) for q in queries]


def forks(queries: int) -> bool:
    """Whether ``map_queries(..., processes=True)`` answers this many queries in forked query processes."""
    return _workers(queries) > 1 and queries >= query_processes.PROCESS_MIN_QUERIES and query_processes.can_fork()


def _workers(queries: int) -> int:
    """Query threads or processes for this many queries: one per thread numpy's BLAS would use, 1 for one query."""
    return min(queries, _blas_threads()) if queries > 1 else 1


def _blas_threads() -> int:
    """The most threads a BLAS numpy loaded would use, as set before query threads of another caller (a library
    user's other thread) limited it to one for their duration."""
    with _LOCK:
        if _STATE["users"]:
            return _STATE["blas_threads"]
        return _blas_threads_now()


def _blas_threads_now() -> int:
    counts = [info["num_threads"] for info in _controller().info() if info["user_api"] == "blas"]
    return min(max(counts, default=1), os.cpu_count() or 1)


def _controller():
    return thread_pools()


def one_thread_per_pool() -> None:
    """Every native thread pool loaded (BLAS, OpenMP) on one thread from now on, for this process (with the
    view of the loaded libraries kept since the first query: no fresh scan)."""
    _controller().limit(limits=1)


@contextmanager
def _one_blas_thread():
    """numpy's BLAS on one thread while any caller is inside (callers in several threads share one limit, and
    the last one out restores the BLAS's own setting)."""
    with _LOCK:
        if _STATE["users"] == 0:
            _STATE["blas_threads"] = _blas_threads_now()
            _STATE["limit"] = _controller().limit(limits=1, user_api="blas")
        _STATE["users"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["users"] -= 1
            if _STATE["users"] == 0:
                _STATE["limit"].restore_original_limits()
                _STATE["limit"] = None


def _pool(count: int):
    """A pool of ``count`` query threads, kept for the process's lifetime."""
    with _LOCK:
        pools = _STATE["pools"]
        if count not in pools:
            from concurrent.futures import ThreadPoolExecutor

            pools[count] = ThreadPoolExecutor(count, thread_name_prefix=query_processes.QUERY_THREAD_PREFIX)
        return pools[count]


def _caller_on_one_openmp_thread():
    """The calling thread's OpenMP regions (torch's products, ``products.py``) on one thread for its queries, its
    own count restored after (``score`` and ``serve`` encode queries in that thread next): ``tokembed.openmp``."""
    return one_openmp_thread(imported_torch())


def _on_one_openmp_thread(function):
    """``function`` run with this query thread's OpenMP regions (torch's oneDNN product, ``products.py``) on one
    thread. The thread count is an OpenMP setting of each calling thread, so the main thread's single queries
    keep both cores. Set on a thread's first query once torch is loaded (a pool made before torch was imported
    gets it too), with a fresh look at the loaded libraries: torch's OpenMP may be newer than ``_controller``.
    torch sets a thread's OpenMP count on its first torch call there (to the count last given to
    ``torch.set_num_threads``, which encoding calls), so that call is made first, then the limit."""

    def run(query):
        torch = imported_torch()
        if torch is not None and not getattr(_THIS_THREAD, "openmp_limited", False):
            from threadpoolctl import ThreadpoolController

            torch.get_num_threads()
            ThreadpoolController().limit(limits=1, user_api="openmp")
            _THIS_THREAD.openmp_limited = True
        return function(query)

    return run
