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
_STATE = {"users": 0, "limit": None, "pool": None}


def map_queries(function, queries: list) -> list:
    """``[function(q) for q in queries]``, in order, spread over the machine's cores when there are several
    queries (and threadpoolctl is there to hold numpy's BLAS to one thread meanwhile)."""
    threads = min(len(queries), os.cpu_count() or 1)
    if threads < 2 or not _can_limit_blas():
        return [function(q) for q in queries]
    with _one_blas_thread():
        return list(_pool().map(function, queries))


def _can_limit_blas() -> bool:
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return False
    return True


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


def _pool():
    with _LOCK:
        if _STATE["pool"] is None:
            from concurrent.futures import ThreadPoolExecutor

            _STATE["pool"] = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="tokembed-query")
        return _STATE["pool"]
