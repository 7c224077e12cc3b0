"""Several queries at once: one query per core, each on one BLAS thread.

One query's products are too small to keep two BLAS threads busy, and the rest of its work is numpy on one
thread; with 100 queries at 1M documents on 2 cores, 2 query threads on 1 BLAS thread each answered 42-46
queries/s where one query at a time on 2 BLAS threads answered 28-31 (two query threads with 2 BLAS threads
each: no faster than one, the four threads contend). A single query keeps the BLAS threads.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager

_LOCK = threading.Lock()
_STATE = {"users": 0, "limit": None, "pools": {}, "controller": None}


def map_queries(function, queries: list) -> list:
    """``[function(q) for q in queries]``, in order, on as many query threads as numpy's BLAS would use
    threads (``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` or the cores) when there are several queries."""
    count = min(len(queries), _blas_threads())
    if count < 2:
        return [function(q) for q in queries]
    with _one_blas_thread():
        return list(_pool(count).map(function, queries))


def _blas_threads() -> int:
    """The most threads a BLAS numpy loaded would use now (1 if threadpoolctl cannot tell)."""
    with _LOCK:
        if _STATE["controller"] is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:  # an optional speed-up: without it, one query at a time
                return 1
            _STATE["controller"] = ThreadpoolController()
        counts = [info["num_threads"] for info in _STATE["controller"].info() if info["user_api"] == "blas"]
    return min(max(counts, default=1), os.cpu_count() or 1)


@contextmanager
def _one_blas_thread():
    """numpy's BLAS on one thread while any caller is inside (callers in several threads share one limit, and
    the last one out restores the BLAS's own setting)."""
    with _LOCK:
        if _STATE["users"] == 0:
            from threadpoolctl import threadpool_limits

            _STATE["limit"] = threadpool_limits(limits=1, user_api="blas")
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

            pools[count] = ThreadPoolExecutor(count, thread_name_prefix="tokembed-query")
        return pools[count]
