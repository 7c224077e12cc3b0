"""SIGTERM (a cron or systemd timeout, ``kill``) stops a command as Ctrl-C does: exit 130, the previous index untouched
(or, landing from the commit on, held until its clean-up is done: ``tokembed/index/commit_window.py``).

The handler is installed for one command only, and only from the main thread (Python sets signal handlers
nowhere else): a script or test that calls ``cli.main.run`` keeps its own SIGTERM handling afterwards.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def sigterm_interrupts():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:  # None: a handler Python did not install; the default is the closest it can restore
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
