"""Files and folders a process works in where other processes look too: an export's staging folder, the temp file
``score --output`` writes beside the user's file, an OpenVINO save's staging folder in the cache, a PDF's temp copy.

Each is held by an exclusive ``flock`` on a lock file beside it, ``NAME.lock`` (the mechanism of an index's lock,
``lock.py``): made and locked before the entry, removed after it. The kernel releases the lock when its process
dies, however it dies, so a later run that takes the lock without waiting knows that the entry's process is gone
and removes both (``remove_abandoned``). The pid in the name is for a human and decides nothing: a process in
another container or pod sharing the volume, or on another host sharing it over NFS (v4 maps ``flock`` to its own
locks), has a pid this process cannot see, or the very same pid.

On a file system without locks (``flock`` fails with ``ENOLCK``/``ENOSYS``/``EOPNOTSUPP``: NFSv3 without a lock
daemon, Lustre mounted without ``-o flock``, some FUSE or 9p mounts) an entry is still made and used, its lock file
kept unlocked: a sweep's ``flock`` fails alike there, so it leaves every entry alone, a killed run's too.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path

from tokembed.index.lock import open_for_flock

LOCK_SUFFIX = ".lock"
# What follows a held name's prefix: ``PID-RANDOM`` (8 hex digits), unique across pid spaces.
UNIQUE = r"\d+-[0-9a-f]{8}"
# The bytes of a user's name kept whole in a held name: the rest of it (``.``, ``.export-tmp-``, the pid, the random
# part, ``.lock``) must fit in the 255 bytes of a file name (NAME_MAX) with it.
_STEM_BYTES = 200
# What ``flock`` raises where the file system has no locks (the list above): the entry is held by its lock file only.
_NO_LOCKS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})


def short_stem(name: str) -> str:
    """``name`` for a held name made from it: whole, or where it is longer than ``_STEM_BYTES`` bytes its prefix
    and ``~`` and 8 hex digits of its sha256 (still recognisably that name's, and the same on every run)."""
    if len(os.fsencode(name)) <= _STEM_BYTES:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    stem = name
    while len(os.fsencode(stem)) > _STEM_BYTES - 9:
        stem = stem[:-1]
    return f"{stem}~{digest}"


def held_pattern(prefix: str, suffix: str = "") -> re.Pattern:
    """The names ``HeldEntry(folder, prefix, suffix)`` gives (without their ``.lock``)."""
    return re.compile(re.escape(prefix) + UNIQUE + re.escape(suffix), re.DOTALL)


class HeldEntry:
    """A new name in ``folder``, ``PREFIX PID-RANDOM SUFFIX`` (``path``), held by this process until ``release``:
    its lock file is created and locked here, for the caller to make the entry (a file or a folder) under that
    name. Creating the lock file raises ``OSError`` (a read-only or missing folder), as does locking it where the
    file system has locks (then the lock file is removed); where it has none the lock file stays unlocked."""

    def __init__(self, folder: Path, prefix: str, suffix: str = "") -> None:
        while True:
            self.path = folder / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}{suffix}"
            try:
                fd = os.open(_lock_path(self.path), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue  # another process's name, by a one in four billion chance
            _lock_unless_unsupported(fd, _lock_path(self.path))
            if _is_at(fd, _lock_path(self.path)):
                self._fd: int | None = fd
                return
            os.close(fd)  # a sweep took it for a dead process's lock in the moment before it was locked: anew

    def release(self) -> None:
        """Remove whatever is left under ``path`` (nothing once it was published under another name), then the
        lock file; the lock goes last, so no sweep ever finds the entry unlocked."""
        if self._fd is None:
            return
        _remove(self.path)
        try:
            os.unlink(_lock_path(self.path))
        except OSError:
            pass  # a read-only folder: the next sweep here removes it
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_unless_unsupported(fd: int, lock: Path) -> None:
    """Lock ``fd``, the lock file ``lock`` just created; left unlocked where the file system has no locks. Any
    other failure (an interrupt too) closes ``fd`` and removes ``lock`` before it is raised: nothing is left."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException as exc:
        if isinstance(exc, OSError) and exc.errno in _NO_LOCKS:
            return
        _discard(fd, lock)
        raise


def _discard(fd: int, lock: Path) -> None:
    if _is_at(fd, lock):
        try:
            os.unlink(lock)
        except OSError:
            pass  # a read-only folder: a later sweep removes it (its lock is free)
    os.close(fd)


def remove_abandoned(folder: Path, pattern: re.Pattern) -> None:
    """Remove the entries in ``folder`` whose whole name ``pattern`` matches and whose process is gone, with their
    lock files: those whose lock this process takes without waiting (another user's too, as far as this one may
    remove them: a group-shared folder), or that have none and are this user's (a ``HeldEntry`` makes its lock
    before the entry and removes it after). A live process's, in any pid space, keeps its lock. A name that only
    looks like one (not ``PID-RANDOM``) is not matched."""
    try:
        names = {entry.name for entry in folder.iterdir()}
    except OSError:
        return
    held = {name.removesuffix(LOCK_SUFFIX) for name in names if name.endswith(LOCK_SUFFIX)}
    for name in sorted(held | names):
        if pattern.fullmatch(name):
            try:
                _remove_if_abandoned(folder / name)
            except OSError:
                continue


def _remove_if_abandoned(path: Path) -> None:
    lock = _lock_path(path)
    try:
        fd = open_for_flock(lock, os.O_RDWR)
    except FileNotFoundError:  # its process removed it (and the entry, just now) or died before making it
        if path.lstat().st_uid == os.getuid():
            _remove(path)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise  # ENOLCK (a file system without locks): whether it lives is unknown, it is left
        return  # its process is alive
    try:
        if _is_at(fd, lock):  # another user's too (a group-shared folder), where this one may remove it
            _remove(path)
            if not os.path.lexists(path):
                os.unlink(lock)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def _is_at(fd: int, path: Path) -> bool:
    """The file open as ``fd`` is still the one at ``path`` (not removed, or replaced, by another process)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except OSError:
        return False


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + LOCK_SUFFIX)
