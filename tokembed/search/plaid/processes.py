"""Many queries at once in forked query processes, one per core, each on one thread.

Query threads share the GIL, and a query holds it for about half its time (numpy's segment maxima, its
repeats, torch's per-call work: ``py-spy --gil`` at 1M documents). Two query threads on 2 cores answered
47-49 queries/s where two forked processes answer 55-59 and one process alone 33-34 (README, "Batched
queries in processes"). Forked children share the parent's opened index, its memory maps, its joined
lists and its packed centroids copy-on-write: nothing is opened, read or pickled again but each query and
its hits. The children live for one batch; lists a child joins go with it.

Forking is safe only where nothing else in the process may hold a lock the child needs: the batch must
come from the main thread (``serve`` answers from other threads, and keeps query threads), on Linux, and
not on a GPU (a forked child must not touch CUDA).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from tokembed.errors import TokembedError
from tokembed.parent_death import die_with_parent
from tokembed.search.plaid.imported import imported_torch

# A fork and a pool cost ~15 ms at 1M documents (a 0.9 GB parent): a few queries' time. Below this many queries
# the query threads answer.
PROCESS_MIN_QUERIES = 24
QUERY_THREAD_PREFIX = "tokembed-query"  # the names of the query threads (threads.py)
_BATCH: dict = {}  # what the children answer, set before they fork: read by index, never pickled


class QueryWorkerError(TokembedError):
    """A query process ended without answering (killed, out of memory)."""


def can_fork() -> bool:
    """Linux, the main thread and no other Python thread, and not a daemonic process (a ``multiprocessing.Pool``
    worker may have no children). Another thread (a library caller's) may hold a lock at the moment of the fork
    (the import lock, while it imports a module lazily): the children would wait for it forever."""
    return (sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            and threading.current_thread() is threading.main_thread() and not _other_threads_alive()
            and not multiprocessing.current_process().daemon)


def _other_threads_alive() -> bool:
    """Whether a Python thread other than this one and tokembed's own query threads (idle while the main thread
    forks: a caller that gave them work is another thread) is alive."""
    return any(thread is not threading.current_thread() and not thread.name.startswith(QUERY_THREAD_PREFIX)
               for thread in threading.enumerate())


def map_in_processes(function, queries: list, count: int) -> list:
    """``[function(q) for q in queries]``, in order, on ``count`` forked processes."""
    _BATCH.update(function=function, queries=queries)
    pool = ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("fork"), initializer=_start_child, initargs=(os.getpid(),))
    try:
        return list(pool.map(_answer, range(len(queries))))
    except BrokenProcessPool as error:
        raise QueryWorkerError(f"a query process ended before it answered (killed, or out of memory?): {error}") from error
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an error or Ctrl-C: the queries not yet started are dropped
        _BATCH.clear()


def _answer(position: int):
    return _BATCH["function"](_BATCH["queries"][position])


def _start_child(parent: int) -> None:
    """A child ends with its parent (a parent killed by SIGKILL, say by a cron timeout, would otherwise leave it
    waiting for work forever); its BLAS, OpenMP and torch run on one thread; Ctrl-C is the parent's to handle
    (it stops the batch)."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch = imported_torch()
    if torch is not None:
        torch.set_num_threads(1)
    from tokembed.search.plaid.threads import one_thread_per_pool

    one_thread_per_pool()
