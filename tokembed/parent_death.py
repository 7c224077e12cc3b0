"""A child process that ends with its parent (Linux): one whose parent was SIGKILLed (a cron timeout) would otherwise
go on until it next talks to it: waiting for work forever, or loading a model that holds a device's memory."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread of ``parent`` (its pid) that started it ends; exit now if it is gone
    already. Callers start and stop their children from one thread, which outlives them."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)
