"""Standard output that cannot be written (``>/dev/full``, a reader that closed the pipe), for every command alike.

What a command prints to stdout comes last (its summary, its results): when that write fails, the command's work
is done (an index it wrote is committed). A reader that went away (``| head``) ends the output quietly, exit 0; any
other failure (a full disk) is a write error (exit 8) naming standard output, never a traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from contextlib import contextmanager

from cli._errors import exit_code_for, format_error


class GuardedStdout:
    """``sys.stdout`` as it was, remembering the first write to it that failed (so that the failure is told apart
    from any other ``OSError``, such as a worker's pipe)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.error: OSError | None = None

    def write(self, text: str) -> int:
        return self._guarded(self.stream.write, text)

    def writelines(self, lines) -> None:
        return self._guarded(self.stream.writelines, lines)

    def flush(self) -> None:
        return self._guarded(self.stream.flush)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except OSError as exc:
            self.error = self.error or exc
            raise


@contextmanager
def guarded_stdout():
    """``sys.stdout`` is a ``GuardedStdout`` inside; restored afterwards (click may have wrapped it meanwhile). A
    closed stdout (``>&-``: ``sys.stdout`` is None, print() writes nothing) writes to /dev/null meanwhile, so that
    what writes ``sys.stdout`` directly (score's results) writes nothing too."""
    closed = sys.stdout is None
    guard = GuardedStdout(open(os.devnull, "w") if closed else sys.stdout)
    sys.stdout = guard
    try:
        yield guard
    finally:
        sys.stdout = None if closed else guard.stream
        if closed:
            guard.stream.close()


def report_failed_stdout(error: OSError, code: int) -> int:
    """The exit code once writing to stdout failed: ``code`` (the command's own, 0 when click cut it short) for a
    closed pipe, else 8 with one line on stderr. Stdout then points at /dev/null: Python's own flush at exit would
    fail on what is left in its buffer, with a traceback of its own."""
    from tokembed.errors import IndexWriteError

    _stdout_to_devnull()
    if isinstance(error, BrokenPipeError) or error.errno == errno.EPIPE:
        return code
    failure = IndexWriteError(f"standard output: cannot write the command's output ({error.strerror or error})")
    print(format_error(failure), file=sys.stderr)
    return exit_code_for(failure)[0]


def _stdout_to_devnull() -> None:
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a test's captured stdout: no descriptor to replace
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)
