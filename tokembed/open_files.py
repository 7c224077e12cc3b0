"""The process's limit on open files (``ulimit -n``, RLIMIT_NOFILE).

An open index holds a descriptor for each shard, and a search through its structure two more for each code file
(the file and its map), so an index of many shards reaches a low limit. The OS then refuses the next open
(EMFILE; ENFILE where the whole system's table is full): that is reported as the limit it is, naming it, never as
a missing or corrupt file of an intact index, nor as a bad input file or row (``refuse_out_of_descriptors``).
"""

from __future__ import annotations

import errno
import os
import re
import resource
from contextlib import contextmanager

from tokembed.errors import OpenFilesLimitError


def raise_soft_limit() -> None:
    """The CLI's start: the soft limit up to the hard one, as Go's runtime and many servers do (the usual soft
    1024 stopped an index of ~500 shards). Not for a library user's process: its limits are its own."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # a hard limit the kernel caps lower (macOS: unlimited past OPEN_MAX): keep the soft one
        pass


def out_of_descriptors(exc: BaseException) -> bool:
    return _errno(exc) in (errno.EMFILE, errno.ENFILE)


# Rust's io::Error as text (``Too many open files (os error 24)``): safetensors' SafetensorError and LanceDB's
# RuntimeError keep no errno of their own.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _errno(exc: BaseException) -> int | None:
    """An OSError's errno; the one a library's own error names in its text, Rust's way, or by the C library's own
    words (torch's ``unable to open file <...>: Too many open files (24)``)."""
    if isinstance(exc, OSError):
        return exc.errno
    text = str(exc)
    found = _RUST_OS_ERROR.search(text)
    if found:
        return int(found.group(1))
    for code in (errno.ENFILE, errno.EMFILE):  # ENFILE's words hold EMFILE's ("... open files in system")
        if os.strerror(code) in text:
            return code
    return None


def refuse_out_of_descriptors(path, exc: BaseException) -> None:
    """``limit_error`` naming ``path`` when ``exc`` is EMFILE/ENFILE. Every reader calls it before it makes an
    OSError a bad row or a bad file: the limit says nothing of the file, and with ``--on-error skip`` an incremental
    run would delete every row whose file it could not open. (A writer's failure goes through ``atomic.write_error``.)"""
    if out_of_descriptors(exc):
        raise limit_error(path, exc) from None


def limit_error(path, exc: BaseException) -> OpenFilesLimitError:
    """What the OS refused (``exc``: EMFILE or ENFILE) opening ``path``, with the limit reached and how to raise it."""
    where = f"{path}: cannot be opened" if path else "a file cannot be opened"
    if _errno(exc) == errno.ENFILE:
        return OpenFilesLimitError(f"{where}: the system's table of open files is full (ENFILE)",
                                   hint="raise the system's limit (sysctl fs.file-max) or close other programs' files")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raise_it = "ulimit -n (up to its hard limit; beyond it ulimit -Hn as root, LimitNOFILE= in a systemd unit, docker --ulimit nofile=)"
    return OpenFilesLimitError(
        f"{where}: this process may hold {soft} open files (ulimit -n; hard limit {_shown(hard)}) and holds that many",
        hint=f"raise it with {raise_it}: an index holds a file open for each shard, a structure search about three for each shard")


def _shown(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


@contextmanager
def descriptors_named(path):
    """An EMFILE/ENFILE raised in the block is ``limit_error`` naming ``path``; other errors pass as they are."""
    try:
        yield
    except OSError as exc:
        if out_of_descriptors(exc):
            raise limit_error(path, exc) from None
        raise
