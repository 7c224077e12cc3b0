"""Durable file operations: write to a temp name in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tokembed.errors import IndexWriteError, OpenFilesLimitError
from tokembed.open_files import descriptors_named, limit_error, out_of_descriptors
from tokembed.path_kind import FOLDER, kind_at


# fsync of a folder on a file system that has none (vboxsf, some CIFS/9p and FUSE mounts): its renames are as
# durable as it makes them, nothing to report
_NO_FOLDER_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EISDIR}
_unsynced: list[str] = []  # commit_sync's failures in this process, for the CLI's exit code


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename in it); skipped where the file system cannot fsync a folder."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FOLDER_FSYNC:
            raise
    finally:
        os.close(fd)


def commit_sync(final: Path, done: str, *folders: Path) -> None:
    """fsync of the folders (default ``final``'s) once ``final`` is renamed into place as a commit (``done``: "the new
    index was committed"): from the rename on the commit stands, so this never raises. A failure (EIO) is recorded,
    not logged: the CLI then exits 8 saying the commit was made (``unsynced_commits``), a library caller asks."""
    for folder in folders or (final.parent,):
        try:
            fsync_dir(folder)
        except OSError as exc:
            _unsynced.append(f"{final}: {done} (it is in place), but the fsync of the folder {folder} failed "
                             f"({exc.strerror or exc}): it may not survive a power loss; nothing to redo")
            return


def unsynced_commits() -> list[str]:
    """What ``commit_sync`` could not flush in this process (one message each)."""
    return list(_unsynced)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, commit: str = "") -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a part.
    A full disk or a read-only folder raises ``IndexWriteError`` (exit 8), ``path`` unchanged. ``commit``: see
    ``publish``."""
    with replacing(path, commit=commit) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            raise write_error(path, exc) from exc


@contextmanager
def replacing(final: Path, tmp: Path | None = None, commit: str = "") -> Iterator[Path]:
    """A temp path beside ``final`` for the block to write (``tmp``, or ``temp_beside``); when the block ends without
    an error the file replaces ``final`` durably (``publish``). The temp file never outlives the block (one left by a
    killed run of the same pid is removed first). Its own steps failing (a read-only folder, a full disk at the fsync)
    raise ``IndexWriteError``; what the block raises is the block's, never hidden by the temp file's removal.
    ``commit``: see ``publish``."""
    tmp = tmp or temp_beside(final)
    try:
        tmp.unlink(missing_ok=True)
    except OSError as exc:  # EROFS even when there is no such file
        raise write_error(final, exc) from exc
    try:
        yield tmp
        try:
            publish(tmp, final, commit)
        except OSError as exc:
            raise write_error(final, exc) from exc
    finally:
        remove_unused(tmp)


def temp_beside(final: Path) -> Path:
    """The temp file ``replacing`` writes ``final``'s new content to: ``.NAME.tmp-PID-THREAD`` in its folder (the
    thread's too: two threads of one library caller writing one file, the record of hashed files, took each other's
    temp file away)."""
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{threading.get_native_id()}"


def write_error(path, exc: BaseException, message: str | None = None) -> IndexWriteError | OpenFilesLimitError:
    """The write error (exit 8) for ``path`` that ``exc`` (ENOSPC, EROFS, EACCES) failed to write: ``message``, by
    default ``PATH: cannot write (REASON)``. Where the process ran out of descriptors (EMFILE, ENFILE) it is the
    limit's error instead, which names the limit and how to raise it: every write maps its failure through here."""
    if out_of_descriptors(exc):
        return limit_error(path, exc)
    return IndexWriteError(message or f"{path}: cannot write ({getattr(exc, 'strerror', None) or exc})")


def remove_dead_replacements(folder: Path) -> None:
    """Temp files ``replacing`` left in ``folder`` when its process was killed (a journal or manifest written at
    the moment of a SIGKILL); those of a live process are left to it.

    Judged by the pid in the name, which the files beside a user's file or in a shared folder are not
    (``held.py``): this runs in an index folder under its lock, where no other process writes (the record of
    hashed files is in the cache), so a file of a process in another pid space cannot be there."""
    for path in folder.iterdir() if folder.is_dir() else ():
        match = _REPLACEMENT.match(path.name)
        if match and not _alive(int(match.group(1))):
            path.unlink(missing_ok=True)


_REPLACEMENT = re.compile(r"^\..+\.tmp-(\d+)(?:-\d+)?$", re.DOTALL)  # an earlier release named no thread


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < (1 << 22)  # another user's process is alive; an impossible pid is not
    return True


def publish(tmp: Path, final: Path, commit: str = "") -> None:
    """Make a fully written temp file durable under its final name, never renamed over a device, a named pipe or a
    socket (``refuse_replacing_special``). With ``commit`` (what the rename did: "the new index was committed") the
    rename is the commit: the folder's fsync failing after it raises nothing (``commit_sync``), the caller must not
    undo what is in place."""
    fsync_file(tmp)
    refuse_replacing_special(final)
    os.replace(tmp, final)
    if commit:
        commit_sync(final, commit)
    else:
        fsync_dir(final.parent)


def refuse_replacing_special(final: Path) -> None:
    """``IndexWriteError`` (exit 8) where ``final`` itself (a link not followed: renaming replaces the link) is a
    device, a named pipe or a socket: renamed over, /dev/null would become a file of the results for every
    program on the host. A caller writes such a path in place (``score -o /dev/null``); here it only arrives
    by a race (the path checked before and changed since). A folder is left to the rename, which refuses it."""
    import stat

    try:
        mode = os.lstat(final).st_mode
    except OSError:  # nothing there; another error is the rename's to say
        return
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode):
        return
    kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    raise IndexWriteError(f"{final}: cannot write (not a regular file ({kind}): it is never replaced)")


def sha256_file(path_or_fd, block: int = 1 << 22) -> str:
    """sha256 of the file at a path, or of the very file an open descriptor names (whatever is at its path now).
    A path that cannot be opened for want of descriptors is the limit's error (``descriptors_named``)."""
    if isinstance(path_or_fd, int):
        return _sha256_open(path_or_fd, block)
    digest = hashlib.sha256()
    with descriptors_named(path_or_fd), open(path_or_fd, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_open(fd: int, block: int) -> str:
    """From byte 0 with positioned reads: the descriptor's offset, which its owner may be using, stays as it was."""
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(fd, block, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def remove_unused(path: Path) -> None:
    """Delete a file of ours that nothing reads any more (after a commit, a failed run's own files, a temp file).

    Never raises: by then the commit stands, or the run is failing with an error of its own, and a failed
    clean-up must neither fail (or undo) the run nor hide that error. A folder under that name is not ours and
    is left alone; a file that cannot be removed only takes space."""
    log = logging.getLogger("tokembed")
    if _is_folder_not_link(path):
        log.warning("%s: a folder among tokembed's own files; left alone (move it out of the index)", path)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        if os.path.lexists(path):  # a read-only folder refuses (EROFS) even to remove a file it does not hold
            log.warning("%s: cannot remove it (%s); nothing reads it, it only takes space", path, exc.strerror or exc)


def _is_folder_not_link(path: Path) -> bool:
    """A folder (not a link to one) at ``path``; False where that cannot be known (EACCES): the unlink then says."""
    try:
        return kind_at(path, follow_links=False) == FOLDER
    except OSError:
        return False
