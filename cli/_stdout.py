"""Standard output that cannot be written (``>/dev/full``, a reader that closed the pipe), for every command alike.

Nor can a character its encoding lacks (``PYTHONIOENCODING=ascii``, a Latin-1 terminal) stop a command: what people
read (tables, summaries) has such characters escaped (``\\u6771``), as Python's stderr has; what programs read
(score's jsonl, tsv and trec) is UTF-8 bytes whatever the encoding, as ``score -o FILE`` writes it.

What a command prints to stdout comes last (its summary, its results): when that write fails, the command's work
is done (an index it wrote is committed). A reader that went away (``| head``) ends the output quietly, exit 0; any
other failure (a full disk) is a write error (exit 8) naming standard output, never a traceback.
"""

from __future__ import annotations

import codecs
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
        try:
            return self._guarded(self.stream.write, text)
        except UnicodeEncodeError:  # nothing of ``text`` was written: the wrapper encodes all of it first
            return self._guarded(self.stream.write, _escaped(text, self.stream.encoding))

    def write_utf8(self, text: str) -> None:
        """``text`` as UTF-8 whatever the stream's encoding: the lines of a file other programs read (score's jsonl,
        tsv, trec). A stream with no bytes underneath (a test's captured one) takes the text as it is."""
        buffer = getattr(self.stream, "buffer", None)
        if buffer is None or codecs.lookup(self.stream.encoding or "utf-8").name == "utf-8":
            self._guarded(self.stream.write, text)
            return
        self._guarded(self.stream.flush)  # what print() left in the text layer goes first
        self._guarded(buffer.write, text.encode("utf-8"))

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


def as_stdout_holds(text: str) -> str:
    """``text`` with what standard output's encoding lacks escaped: a table's cell, whose width rich measures before
    it writes (escaping it as it is written would shift the columns)."""
    return _escaped(text, getattr(sys.stdout, "encoding", None) or "utf-8")


def _escaped(text: str, encoding: str) -> str:
    """``text`` with what ``encoding`` cannot hold as ``\\xe9``, ``\\u6771`` escapes, as Python writes stderr."""
    return text.encode(encoding, "backslashreplace").decode(encoding)


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


@contextmanager
def stderr_or_devnull():
    """A closed stderr (``2>&-``, a supervisor that closes descriptor 2: ``sys.stderr`` is None) is /dev/null
    inside: the run's lines (progress, warnings, an error) are dropped, where ``sys.stderr.isatty()`` raised, and
    ``print(..., file=None)`` would have written them into stdout's results. So is a descriptor 2 open for reading
    only (a pyenv shim, a shell script, hands ``2>&-`` on as its own file read-only; ``2</dev/null``), whose
    first write failed the command. Descriptor 2 becomes /dev/null too (as long as the process lives), so that no
    file the run opens (a shard) takes it, for native libraries and worker processes to write their messages into.
    A stderr that can be written is a ``GuardedStderr`` inside: it becomes /dev/null at its first failed write."""
    previous = sys.stderr
    if previous is not None and _descriptor(previous) != 2:  # a test's captured stream: kept
        yield
        return
    if previous is not None and _writable(2):
        sys.stderr = GuardedStderr(previous)
        try:
            yield
        finally:
            sys.stderr = previous
        return
    devnull = open(os.devnull, "w")
    if not _writable(2):
        os.dup2(devnull.fileno(), 2)
    sys.stderr = devnull
    try:
        yield
    finally:
        sys.stderr = previous
        devnull.close()


class GuardedStderr:
    """``sys.stderr`` whose first failed write (its reader gone: ``2>&1 | head``, a dead log pipe; a log file on a
    full disk or past ``ulimit -f``) turns it into /dev/null for the rest of the run, descriptor 2 included: the
    run's lines are dropped as for a closed stderr, and the work goes on, its exit code its own (click made any
    broken pipe exit 1, and a resumed run stopped at its first progress line)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            self._to_devnull()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)

    def _to_devnull(self) -> None:
        devnull = open(os.devnull, "w")
        os.dup2(devnull.fileno(), 2)  # native libraries' and Python's own last writes (its flush at exit) too
        self.stream = devnull


def _descriptor(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _writable(descriptor: int) -> bool:
    """Whether ``descriptor`` is open for writing (not closed, not read-only)."""
    import fcntl

    try:
        mode = fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        return False
    return mode != os.O_RDONLY


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
    descriptor = _descriptor(sys.stdout)
    if descriptor is None:  # a test's captured stdout: no descriptor to replace
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, descriptor)
    finally:
        os.close(devnull)
