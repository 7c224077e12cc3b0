"""SIGINT/SIGTERM held from just before a commit until its clean-up is done, then delivered.

Before the manifest replace an interrupt leaves the previous index untouched; once it is replaced, it must not
stop the clean-up half way (the journal, the replaced shards, the structure files the new manifest no longer
lists) nor be reported as "untouched". ``commit_window`` records a signal that lands inside it and sends it
again once the body is done and the caller's handlers are back, so the run stops exactly as it would have,
only later: exit 130 from the CLI, whose message asks ``commits_finished`` whether a commit came first.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)
_finished = {"count": 0, "done": "the new index was committed"}  # windows run to their end in this process


def commits_finished() -> int:
    return _finished["count"]


def last_commit() -> str:
    """What the last window that ran to its end did, for the interrupt message ("the export was published")."""
    return _finished["done"]


@contextmanager
def commit_window(done: str = "the new index was committed"):
    """Hold SIGINT/SIGTERM while the body commits and cleans up; a body that fails delivers nothing (its error
    is what ends the run). Python sets signal handlers only from the main thread: elsewhere nothing is held.
    ``done``: what the body did, said by the CLI's message when a held signal then stops the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        _finished.update(count=_finished["count"] + 1, done=done)
        return
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in HELD}
    try:
        yield
    finally:
        for signum, handler in previous.items():  # None: not set from Python; the default is the closest
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    _finished.update(count=_finished["count"] + 1, done=done)
    if received:
        signal.raise_signal(received[0])  # the caller's handler runs now: KeyboardInterrupt, or the default
