"""One writer per index: an OS file lock (``flock``) on ``INDEX_DIR/.lock`` that dies with its process.

The holder's pid is written into the lock file so a second run can name it. No stale lock survives a
SIGKILL: the kernel releases ``flock`` locks when the process's file descriptors close.

A first run that fails before committing removes the folder it created (``remove_if_unused``), lock file
included; a run that was waiting on that lock file then finds it gone and takes the lock anew.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from tokembed.errors import IndexLockedError, UsageError
from tokembed.index.atomic import write_error
from tokembed.path_kind import FOLDER, exists, kind_at

LOCK_NAME = ".lock"


def refuse_if_locked(folder: Path) -> None:
    """Raise ``IndexLockedError`` now if another run holds ``folder``'s lock: a second cron run learns it before
    loading a model for seconds. Only a probe (the lock is taken for real later, which decides); creates nothing."""
    try:
        fd = open_for_flock(folder / LOCK_NAME, os.O_RDWR)
    except OSError:
        return  # no lock file (a new index) or an unreadable one: the real attempt will say
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise _locked(folder, _read_pid(fd)) from None
    except OSError:
        pass  # no locks on this file system (ENOLCK): the real attempt says so
    finally:
        os.close(fd)


def open_for_flock(path: Path, flags: int) -> int:
    """``path`` opened with ``flags`` (and created 0666 less the umask, where they say so); where it is there but
    this user may not write it (another group member's lock file of an earlier release, 0644) in a folder it may
    write, opened read-only: ``flock`` takes a lock on any descriptor, and that lock excludes every other process's
    alike. In a folder this user may not write (another's index) the run could write nothing: refused at once."""
    try:
        return os.open(path, flags, 0o666)
    except PermissionError:
        if not (os.path.isfile(path) and _writable(Path(path).parent)):
            raise
        return os.open(path, os.O_RDONLY)


def _writable(folder: Path) -> bool:
    effective = os.access in os.supports_effective_ids
    return os.access(folder, os.W_OK, effective_ids=effective)


def _locked(folder: Path, holder, waited: float = 0.0) -> IndexLockedError:
    if waited:
        return IndexLockedError(f"{folder}: still locked by another tokembed run (pid {holder or 'unknown'}) after "
                                f"waiting {waited:g} s", hint="wait for it to finish, or pass a longer --wait")
    return IndexLockedError(f"{folder}: locked by another tokembed run (pid {holder or 'unknown'})",
                            hint="wait for it to finish, or pass --wait SECONDS")


def check_wait(seconds: float) -> None:
    """``--wait``: seconds, finite and not negative (``nan`` waited forever, a negative value gave up at once)."""
    import math
    import numbers

    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not (math.isfinite(seconds) and seconds >= 0):
        from tokembed.errors import UsageError

        raise UsageError(f"--wait must be a number of seconds, 0 or more; got {seconds!r}")


class IndexLock:
    def __init__(self, folder: Path, wait_seconds: float = 0.0) -> None:
        check_wait(wait_seconds)
        self.path = folder / LOCK_NAME
        self.wait_seconds = wait_seconds
        self.created: Path | None = None  # the top folder this run created (--output, or a missing parent of it)
        self._fd: int | None = None

    def __enter__(self) -> "IndexLock":
        deadline = time.monotonic() + self.wait_seconds
        fd = self._open()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_pid(fd)
                    os.close(fd)
                    raise _locked(self.path.parent, holder, self.wait_seconds) from None
                time.sleep(0.2)
                continue
            except OSError as exc:
                self._give_up(fd)
                raise self._no_locks(exc) from exc
            if self._still_there(fd):
                break
            os.close(fd)  # the holder removed the folder it had created (its run failed): start again
            fd = self._open()
        self._fd = fd
        self._write_pid()
        return self

    def _write_pid(self) -> None:
        """The holder's pid, for a second run to name; not where the lock file could be opened read-only only."""
        try:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass

    def _no_locks(self, exc: OSError) -> Exception:
        """A file system without locks (``flock``: ENOLCK, ENOSYS, EOPNOTSUPP: NFSv3 without a lock daemon, Lustre
        without ``-o flock``): one writer cannot be made sure of, so no run writes there (exit 8)."""
        folder = self.path.parent
        why = (": its file system has no file locks (NFSv3 without a lock daemon? Lustre without -o flock?)"
               if exc.errno in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP) else "")
        return write_error(self.path, exc, f"{folder}: cannot lock the index ({exc.strerror or exc}){why}")

    def _give_up(self, fd: int) -> None:
        """Close ``fd`` unlocked, removing the folders this run created if they hold nothing but the lock file."""
        self._fd = fd
        self.remove_if_unused()
        os.close(fd)
        self._fd = None

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def remove_if_unused(self) -> None:
        """Remove the folders this run created when they hold nothing but the lock file and empty folders (a first
        run that failed before committing): no half-made index is left for ``info`` or the next run to stumble on."""
        folder = self.path.parent
        if self.created is None or self._fd is None or not _holds_nothing(folder):
            return
        try:
            for root, folders, _files in os.walk(folder, topdown=False):
                for name in folders:
                    os.rmdir(os.path.join(root, name))
            self.path.unlink()
            for path in (folder, *folder.parents):
                path.rmdir()
                if path == self.created:
                    break
        except OSError:  # best effort: what is left is only empty folders
            pass

    def _still_there(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except OSError:
            return False

    def _open(self) -> int:
        folder = self.path.parent
        try:
            if kind_at(folder) not in (None, FOLDER):
                raise UsageError(f"{folder}: exists and is not a folder (an index is a folder)", hint="choose another --output")
            self.created = _first_missing(folder)
            folder.mkdir(parents=True, exist_ok=True)
            return open_for_flock(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            what = "its lock file" if self.created is None else "the index folder or its lock file"
            raise write_error(self.path, exc, f"{folder}: cannot create {what} ({exc.strerror})") from exc


def _first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist (what ``mkdir(parents=True)`` creates)."""
    missing = None
    for path in (folder, *folder.parents):
        if exists(path):
            break
        missing = path
    return missing


def _holds_nothing(folder: Path) -> bool:
    """``folder`` holds no file but its lock file, however deep (empty folders only)."""
    for root, folders, files in os.walk(folder):
        if any(not (Path(root) == folder and name == LOCK_NAME) for name in files):
            return False
        if any(os.path.islink(os.path.join(root, name)) for name in folders):
            return False
    return True


def _read_pid(fd: int) -> str | None:
    try:
        return os.pread(fd, 32, 0).decode().strip() or None
    except OSError:
        return None
