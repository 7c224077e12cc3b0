"""torch's OpenMP held to one thread in the calling thread while a lone query's search runs there.

A region on two OpenMP threads waits at its barrier until both are scheduled, and libgomp's threads spin ~10 ms
after each region: on a box where other work runs (a cron ``encode`` beside ``score`` or ``serve``) small work
loses far more than a second thread gives it on an idle box. Measured on the 2-core box (``bench/search_load.py``):
a lone query's structure search beside one busy process 124 ms on two threads against 40 on one (beside three:
325 against 83); idle, the second thread saved up to 24%. The thread count is an OpenMP setting of each calling
thread: other threads keep theirs.

Not used for a lone query's forward, though it suffers the same (36 against 14 ms beside a busy process): the
limit leaves MKL's own thread count, which torch sets process-wide, at two, and a forward run so gave other
float32 bits than on one thread or on two (1.8e-7), where the vectors must not depend on how a run was threaded.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

_POOLS = {"controller": None, "modules": 0}


def thread_pools():
    """threadpoolctl's view of the native thread pools loaded (a scan of the loaded libraries, ~0.6 ms): made
    again only when modules were imported since, which may have loaded another BLAS (scipy's, say)."""
    if _POOLS["controller"] is None or _POOLS["modules"] != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _POOLS["controller"] = ThreadpoolController()
        _POOLS["modules"] = len(sys.modules)
    return _POOLS["controller"]


@contextmanager
def one_openmp_thread(torch):
    """The calling thread's OpenMP regions on one thread while inside, its own count restored after (~10 us);
    nothing where ``torch`` is None (not imported: no OpenMP regions of its own to hold)."""
    if torch is None:
        yield
        return
    torch.get_num_threads()  # torch sets a thread's count on its first call there: before the limit, not after
    limit = thread_pools().limit(limits=1, user_api="openmp")
    try:
        yield
    finally:
        limit.restore_original_limits()
