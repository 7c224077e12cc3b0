"""SIGTERM (a cron or systemd timeout, ``kill``) stops a command as Ctrl-C does: exit 130, the previous index untouched
(or, landing from the commit on, held until its clean-up is done: ``tokembed/index/commit_window.py``).

Once the command's work is done (``work_done``: its index committed, its export published, its results printed),
both are ignored: the summary still to print and the process's exit (interpreter teardown: torch, lance) take up
to a second, and a signal landing there made a success exit 130/143, so that a wrapper redid the work (and an
export's re-run then met its own output as "already exists").

The handlers are set for one command only, and only from the main thread (Python sets signal handlers
nowhere else): a script or test that calls ``cli.main.run`` keeps its own SIGINT/SIGTERM handling afterwards; the
``tokembed`` program itself (``through_exit``) ignores both from the end of the command until it has exited, whatever
the command's outcome: a second ``kill`` landing while an interrupted run prints its message and exits made it die of
SIGTERM (143) instead of exit 130.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

HANDLED = (signal.SIGINT, signal.SIGTERM)
_work = {"running": False}  # a command inside command_signals, in the main thread


@contextmanager
def command_signals(through_exit: bool = False):
    """SIGTERM raises KeyboardInterrupt (as SIGINT does) while the body runs; on leaving, the handlers from before are
    back, unless ``through_exit``: then the process exits with both ignored (its exit status is already decided)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    _work["running"] = True
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        _work["running"] = False
        if through_exit:
            _ignore_both()
        else:
            _restore(previous)


def work_done() -> None:
    """The command's work is done: a SIGINT/SIGTERM from here on is ignored (a signal held by a commit window was
    delivered at its end, before this). Outside ``command_signals`` (the typer app or a command called directly) it
    does nothing: nothing would put the caller's handlers back."""
    if _work["running"] and threading.current_thread() is threading.main_thread():
        _ignore_both()


def _ignore_both() -> None:
    for signum in HANDLED:
        signal.signal(signum, signal.SIG_IGN)


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():  # None: a handler Python did not install; the default is the closest
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
