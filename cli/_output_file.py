"""Where ``score --output`` writes: checked before the run reads anything, then written whole or not at all.

A file (new or existing) is written under a temp name beside it and renamed over it once complete; through a
symlink, the file it names is replaced. What cannot be renamed over (a FIFO, a character device) is written
directly, and the rename itself refuses one (``atomic.refuse_replacing_special``: a path that changed kind since
it was checked), so that /dev/null never becomes a file.

A path is a descriptor path when, followed as the kernel follows it, its last name is looked up in a descriptor
folder of this process: the folder its parent resolves to is ``/proc/PID/fd`` (``/proc/PID/task/TID/fd``) with this
process's pid or a thread's, whatever the spelling (``/dev/stdout``, ``/dev/fd/N``, ``//dev/fd/N``,
``/proc/self/fd/N``, ``/proc/thread-self/fd/N``, a relative ``../../dev/fd/N``, ``fds/N`` with ``fds ->
/proc/self/fd``, a link ``out.jsonl -> /dev/stdout``). Such a path is that descriptor, to any user: it is written
itself (a duplicate of it, at its offset, ``O_APPEND`` kept), so that ``-o /dev/stdout >> log`` appends to the log;
descriptor 1 is written as ``-o -`` writes standard output (a closed pipe ends it quietly). Resolved, such a path
names the file behind the descriptor, which the rename would replace (the log's earlier lines gone), and opening it
with "w" truncates that file too. An open file named by its own path is no descriptor path (``-o results.jsonl``
is replaced whole, whatever has it open), nor is another process's ``/proc/PID/fd/N`` (the file behind it), nor a
procfs mounted elsewhere than /proc. The file behind a descriptor (standard output's too) is still judged as an
``--output`` is when it is a regular file: inside the index folder or the query file, exit 2.
"""

from __future__ import annotations

import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path


def refuse_output_over_inputs(output: Path | None, index: Path, query_file: Path | None) -> None:
    """Results written into a file the run reads would replace or corrupt it: the index's manifest or a shard (the
    index lost, a serve process's shard cut), anything else in the index folder, or the query file. Exit 2 before
    anything is read. Symlinks are followed, on either side; standard output (``output`` None) and a descriptor
    path are judged by the regular file behind the descriptor (``>> INDEX/manifest.json`` appended the results to
    the manifest; there only the index's own files are guarded: ``_overwrites_index``)."""
    from tokembed.errors import UsageError

    descriptor = 1 if output is None else descriptor_named(output)
    target = output.resolve() if descriptor is None else _file_behind(descriptor)
    if target is None:
        return
    named = "standard output" if output is None else f"--output {output}"
    if _overwrites_index(target, index.resolve(), through_descriptor=descriptor is not None):
        raise UsageError(f"{named}: inside the index folder {index}; the results would overwrite the index",
                         hint="write the results outside the index folder")
    if query_file is not None and target == query_file.resolve():
        raise UsageError(f"{named}: is the query file {query_file}; the results would replace the queries",
                         hint="write the results to another file")


def _overwrites_index(target: Path, index: Path, through_descriptor: bool) -> bool:
    """Whether results written to ``target`` would land on the index. ``--output`` anywhere in the folder: it is
    replaced, and the folder is the index's. Through a descriptor the shell opened (``> INDEX/results.txt``), the
    file was created or emptied before the run: only appending to the manifest or to a file of the index's own
    folders (``data/``, the structure's) would damage it; a file of the shell's beside the manifest is left alone."""
    if not target.is_relative_to(index):
        return False
    return not through_descriptor or target.parent != index or target.name == "manifest.json"


def _file_behind(descriptor: int) -> Path | None:
    """The regular file ``descriptor`` (standard output, or a descriptor path's) writes to; None for a pipe, a
    terminal, a socket, or a file no path names (deleted)."""
    try:
        opened = os.fstat(descriptor)
        behind = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
        same = stat.S_ISREG(opened.st_mode) and os.path.samestat(os.stat(behind), opened)
    except (OSError, ValueError):  # not open (refused later, naming it), or no /proc
        return None
    return behind if same else None  # " (deleted)", or a name from another mount namespace


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
    file as it was; once renamed, the new results stand (a failed fsync of the folder after it is exit 8 saying so).
    What cannot be renamed over (a character device such as /dev/null or /dev/full, a FIFO) is written directly; a descriptor (``/dev/stdout``) is written itself."""
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
    with _held_temp_file(output) as temp, replacing(final, temp, commit="the new results were written") as tmp:
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
    from tokembed.path_kind import FILE, kind_at

    if kind_at(final) == FILE:
        os.chmod(tmp, stat.S_IMODE(final.stat().st_mode))



_FD_FOLDER = re.compile(r"/+proc/(\d+)(?:/task/\d+)?/fd")  # realpath's /dev/fd, /proc/self/fd, /proc/thread-self/fd


def descriptor_named(output: Path) -> int | None:
    """The descriptor of this process that ``output`` names (module doc), or None. The path is followed as the kernel
    follows it: the folder of its last name resolved (``fds/1`` with ``fds -> /proc/self/fd``, ``//dev/fd/1``, a
    relative ``../../dev/fd/1``), and where that is no descriptor folder the last name, if a link, read and followed
    in turn (``out.jsonl -> /dev/stdout -> /proc/self/fd/1``). A descriptor's own link is never read: it names the
    file behind the descriptor, which is the path a descriptor path must not become."""
    path = str(output)
    for _ in range(40):  # the kernel's limit on links followed
        folder, name = os.path.split(path)
        folder = os.path.realpath(folder or ".")
        if match := _FD_FOLDER.fullmatch(folder):
            return int(name) if name.isdigit() and _is_this_process(int(match.group(1))) else None
        try:
            target = os.readlink(os.path.join(folder, name))
        except (OSError, ValueError):  # no link (EINVAL), nothing there, a NUL
            return None
        path = os.path.join(folder, target)
    return None


def is_standard_output(output: Path | None) -> bool:
    """No ``--output`` (``-o -``), or a path naming descriptor 1 (``/dev/stdout``): written as the command's standard
    output, a reader that closed the pipe (``| head``) ending it quietly (exit 0) as ``-o -`` does, not exit 8."""
    return output is None or descriptor_named(output) == 1


def _is_this_process(pid: int) -> bool:
    """``pid`` is this process or one of its threads (``/proc/TID/fd``: the same descriptors); another process's
    ``/proc/PID/fd/N`` is a path to the file behind its descriptor."""
    return pid == os.getpid() or os.path.isdir(f"/proc/self/task/{pid}")


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
