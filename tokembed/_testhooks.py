"""Fault injection for tests only: ``TOKEMBED_TEST_KILL_AT=event:N`` SIGKILLs the process, and
``TOKEMBED_TEST_PAUSE_AT=event:N`` sleeps, when ``event`` happens for the N-th time (``event`` alone
matches every time). Events: ``write`` (rows appended to an open shard), ``shard`` (a shard finished
and journaled), ``commit`` (just before the manifest is replaced). Unset in normal use: costs one
environment lookup per event.
"""

from __future__ import annotations

import os
import signal
import time

KILL_ENV = "TOKEMBED_TEST_KILL_AT"
PAUSE_ENV = "TOKEMBED_TEST_PAUSE_AT"


def fault_point(event: str, count: int) -> None:
    if _matches(os.environ.get(KILL_ENV), event, count):
        os.kill(os.getpid(), signal.SIGKILL)
    if _matches(os.environ.get(PAUSE_ENV), event, count):
        time.sleep(float(os.environ.get("TOKEMBED_TEST_PAUSE_SECONDS", "60")))


def _matches(wanted: str | None, event: str, count: int) -> bool:
    return bool(wanted) and wanted in (f"{event}:{count}", event)
