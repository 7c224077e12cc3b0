"""When the command started, so that ``load_seconds`` covers start-up (interpreter, imports) as cron sees it.

``tokembed`` run as a program counts from the process start (Linux ``/proc``); ``cli.main.run`` called
in-process (tests, scripts) counts from that call.
"""

from __future__ import annotations

import os
import time

_started: float | None = None  # a time.perf_counter() value


def mark_start(at: float | None = None) -> None:
    global _started
    _started = time.perf_counter() if at is None else at


def since_start() -> float:
    """Seconds since the command started (0 if nothing marked the start)."""
    return 0.0 if _started is None else time.perf_counter() - _started


def process_start() -> float:
    """The ``time.perf_counter()`` value at which this process started; now where /proc cannot say."""
    now = time.perf_counter()
    try:
        with open("/proc/self/stat") as handle:
            start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return now
    age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    return now - age if 0 <= age < 3600 else now
