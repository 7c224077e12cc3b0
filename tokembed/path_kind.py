"""What is at a path: a folder, a file, something else, or nothing; or why the OS cannot say.

pathlib's ``exists()``, ``is_dir()`` and ``is_file()`` answer False for a missing entry (ENOENT, ENOTDIR, ELOOP)
and raise every other error: a name longer than the file system takes (ENAMETOOLONG: a component over 255 bytes,
a path over PATH_MAX) ended ``info``, ``encode -o``, ``export --to`` and ``score -o`` in a traceback, and the
clean-up of a run already failing with its own error too. Here such a name is nothing there (no file can have
it: the mkdir or open that follows says so, with the caller's exit code). An error that says something may be
there but cannot be reached (EACCES: a folder on the way this user may not search; EIO) is raised, for the
caller to name with its own exit code (a read: ``reader.read_error``; a write: ``atomic.write_error``).
"""

from __future__ import annotations

import errno
import os
import stat

FOLDER, FILE, OTHER = "folder", "file", "other"  # OTHER: a FIFO, a device, a socket (a link, not followed)

_NOTHING_THERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG})


def kind_at(path, follow_links: bool = True) -> str | None:
    """``FOLDER``, ``FILE`` (a regular file), ``OTHER``, or None where nothing is at ``path`` (module doc); the
    OSError of a path the OS cannot look up for another reason (EACCES) is raised."""
    try:
        mode = (os.stat if follow_links else os.lstat)(path).st_mode
    except OSError as exc:
        if exc.errno in _NOTHING_THERE:
            return None
        raise
    except ValueError:  # a NUL byte: no file has that name
        return None
    if stat.S_ISDIR(mode):
        return FOLDER
    return FILE if stat.S_ISREG(mode) else OTHER


def exists(path) -> bool:
    """``kind_at(path) is not None``: an error other than "nothing there" is raised, as there."""
    return kind_at(path) is not None


def is_folder(path) -> bool:
    return kind_at(path) == FOLDER


def kind_or_refused(path, error: type[Exception], named: str) -> str | None:
    """``kind_at(path)``; a path in a folder this user may not search (another user's home) raised as ``error``
    (the caller's exit code) naming ``named``, not a PermissionError traceback."""
    try:
        return kind_at(path)
    except PermissionError as exc:
        raise error(f"{named}: cannot look it up ({exc.strerror}: a folder on the way this user may not search?)"
                    ) from exc
