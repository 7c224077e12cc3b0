"""Where ``score --output`` writes: checked before the run reads anything, then written whole or not at all.

A file (new or existing) is written under a temp name beside it and renamed over it once complete; through a
symlink, the file it names is replaced. What cannot be renamed over (a FIFO, a character device) is written
directly.

A path that names a descriptor this process has open, ``/dev/stdout``, ``/dev/stderr``, ``/dev/stdin``,
``/dev/fd/N``, ``/proc/self/fd/N`` (``/proc/thread-self/fd/N``, ``/proc/PID/fd/N`` with this process's pid), is
that descriptor, to any user: it is written itself (a duplicate of it, at its offset, ``O_APPEND`` kept), as
``-o -`` writes standard output, so that ``-o /dev/stdout >> log`` appends to the log. Resolved, such a path names
the file behind the descriptor, which the rename would replace (the log's earlier lines gone), and opening it
with "w" truncates that file too.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path


def refuse_output_over_inputs(output: Path | None, index: Path, query_file: Path | None) -> None:
    """An ``--output`` that is a file the run reads would be replaced by the results: the index's manifest or a
    shard (the index lost, a serve process's shard cut), anything else in the index folder, or the query file.
    Exit 2 before anything is read. Symlinks are followed, on either side."""
    from tokembed.errors import UsageError

    if output is None or descriptor_named(output) is not None:  # written as -o - is: nothing is replaced
        return
    target = output.resolve()
    if target.is_relative_to(index.resolve()):
        raise UsageError(f"--output {output}: inside the index folder {index}; the results would overwrite the index",
                         hint="write the results outside the index folder")
    if query_file is not None and target == query_file.resolve():
        raise UsageError(f"--output {output}: is the query file {query_file}; the results would replace the queries",
                         hint="write the results to another file")


def refuse_output_that_cannot_be_written(output: Path | None) -> None:
    """What the write would find only after the model load, the queries and the search: an ``--output`` that is a
    folder (exit 2), or one whose folder is missing, not a folder or not writable (exit 8), found now by creating
    and removing the temp file the results are written to. A FIFO or device is left to the write (opening a FIFO
    waits for its reader), as is what only writing finds (a full disk). A descriptor that is not open, or open
    for reading only, is exit 8 naming it."""
    if output is None:
        return
    if (descriptor := descriptor_named(output)) is not None:
        _refuse_descriptor_not_written(descriptor, output)
        return
    if _written_in_place(output):
        return
    with _held_temp_file(output) as probe:  # through a symlink, as the write: beside the file it names
        _open_for_writing(probe, output).close()


def _written_in_place(output: Path) -> bool:
    """Whether ``--output`` is written as it is (a FIFO, a character device such as /dev/null: nothing can be renamed
    over it) rather than through a temp file beside it; a folder is refused (exit 2)."""
    from tokembed.errors import UsageError
    from tokembed.index.atomic import write_error
    from tokembed.path_kind import FOLDER, OTHER, kind_at

    try:
        kind = kind_at(output)
    except OSError as exc:  # a folder on the way this user may not search
        raise write_error(output, exc, f"--output {output}: cannot write ({exc.strerror or exc})") from exc
    if kind == FOLDER:
        raise UsageError(f"--output {output}: is a folder; name a file")
    return kind == OTHER


@contextmanager
def open_output(output: Path):
    """``--output`` open for writing. A file (new or existing) is written under a temp name beside it and renamed
    over it once complete: a failed write (a full disk, an interrupt) leaves no part of the results and the previous
    file as it was. What cannot be renamed over (a character device such as /dev/null or /dev/full, a FIFO) is
    written directly; a descriptor (``/dev/stdout``) is written itself."""
    from tokembed.index.atomic import replacing
    from tokembed.index.held import held_pattern, remove_abandoned

    if (descriptor := descriptor_named(output)) is not None:
        with _open_descriptor(descriptor, output) as handle:
            yield handle
        return
    if _written_in_place(output):
        with _open_for_writing(output) as handle:
            yield handle
        return
    final = output.resolve()  # through a symlink: the file it names is replaced, the link is kept
    remove_abandoned(final.parent, held_pattern(_temp_prefix(final)))  # a killed run's temp file
    with _held_temp_file(output) as temp, replacing(final, temp) as tmp:
        with _open_for_writing(tmp, output) as handle:
            yield handle
        _keep_mode(final, tmp)


@contextmanager
def _held_temp_file(output: Path):
    """A new temp file name beside the file ``--output`` names, ``.FILE.tmp-PID-RANDOM``, held while the block runs
    (``held.HeldEntry``): a run in another container writing the same file neither takes nor removes it."""
    from tokembed.index.atomic import write_error
    from tokembed.index.held import HeldEntry

    final = output.resolve()
    try:
        held = HeldEntry(final.parent, _temp_prefix(final))
    except OSError as exc:
        raise write_error(output, exc, f"--output {output}: cannot write ({exc.strerror or exc})") from exc
    with held as temp:
        yield temp


def _temp_prefix(final: Path) -> str:
    from tokembed.index.held import short_stem

    return f".{short_stem(final.name)}.tmp-"


def _open_for_writing(path: Path, output: Path | None = None):
    from tokembed.index.atomic import write_error

    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise write_error(output or path, exc, f"--output {output or path}: cannot write ({exc.strerror})") from exc


def _keep_mode(final: Path, tmp: Path) -> None:
    """The replaced results file's permission bits for the new one (a new file gets the umask's, as ``open``)."""
    import stat

    from tokembed.path_kind import FILE, kind_at

    if kind_at(final) == FILE:
        os.chmod(tmp, stat.S_IMODE(final.stat().st_mode))



_DESCRIPTOR_PATH = re.compile(r"/dev/(?:(stdin|stdout|stderr)|fd/(\d+))|/proc/(?:self|thread-self|(\d+))/fd/(\d+)")
_STANDARD = {"stdin": 0, "stdout": 1, "stderr": 2}


def descriptor_named(output: Path) -> int | None:
    """The descriptor of this process that ``output`` names (module doc), through the user's symlinks too
    (``out.jsonl -> /dev/stdout``), or None."""
    path = str(output)
    for _ in range(40):  # the kernel's limit on links followed
        path = os.path.normpath(path)  # relative, it never matches: a link in it may lead to one that does
        if match := _DESCRIPTOR_PATH.fullmatch(path):
            standard, fd, pid, proc_fd = match.groups()
            if pid is not None and int(pid) != os.getpid():
                return None  # another process's descriptor: a path to the file behind it
            return _STANDARD[standard] if standard else int(fd or proc_fd)
        try:
            target = os.readlink(path)
        except OSError:  # no link (EINVAL), or nothing there
            return None
        path = os.path.join(os.path.dirname(path), target)
    return None


def _refuse_descriptor_not_written(descriptor: int, output: Path) -> None:
    import fcntl

    from tokembed.errors import IndexWriteError

    try:
        mode = fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        raise IndexWriteError(f"--output {output}: cannot write (descriptor {descriptor} is not open)") from None
    if mode == os.O_RDONLY:
        raise IndexWriteError(f"--output {output}: cannot write (descriptor {descriptor} is open for reading only)")


def _open_descriptor(descriptor: int, output: Path):
    """A UTF-8 text handle on a duplicate of ``descriptor`` (closing it leaves the descriptor open); what Python's
    own stream on it holds is written first."""
    import sys

    from tokembed.index.atomic import write_error

    _refuse_descriptor_not_written(descriptor, output)
    stream = {1: sys.stdout, 2: sys.stderr}.get(descriptor)
    try:
        if stream is not None:
            stream.flush()
        return open(os.dup(descriptor), "w", encoding="utf-8")
    except OSError as exc:
        raise write_error(output, exc, f"--output {output}: cannot write ({exc.strerror or exc})") from exc
