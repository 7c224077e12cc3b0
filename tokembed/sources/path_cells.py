"""The file a Parquet/JSONL path cell names (an image, video or PDF cell holding text), and why it cannot be read.

A path cell is a path relative to the Parquet/JSONL file's folder, or an absolute one. ``~/...`` is the user's home,
as every earlier release read it (an index built from such cells keeps its rows); ``~name/...`` is a name like any
other, relative to the file (a folder ``~old`` beside it), never user ``name``'s home: pathlib's ``expanduser``
ended the run (RuntimeError) where no such user existed, and read ``~bin/a.png`` as ``/bin/a.png``.

Whatever the OS says of the path is the row's reason (``file_problem``), shared by the image, video and PDF readers
(a PDF given as INPUT or found in a folder too): not found, a folder, a pipe, a name too long for the file system (a
``data:`` URI of a video), a NUL character, a lone surrogate, a folder on the way this user may not search. None of
them ends the run, nor, read from a Parquet file, blames the file as unreadable.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from tokembed.locale_names import refuse_misread_cell
from tokembed.sources.base import unicode_problem
from tokembed.sources.files import special_file_problem

_NOT_FOUND = frozenset({errno.ENOENT, errno.ENOTDIR})


def cell_path(value: str, base: Path) -> Path:
    """The path a cell ``value`` names, ``base`` being the folder of its Parquet/JSONL file (module doc)."""
    if value == "~" or value.startswith("~/"):
        value = os.path.expanduser(value)  # unchanged where no home is known: then a file not found
    path = Path(value)
    return path if path.is_absolute() else base / path


def cell_file(value: str, base: Path, what: str, where: str) -> tuple[Path, str | None]:
    """(the ``what`` file, ``image``, ``video`` or ``PDF``, that the cell ``value`` of the row at ``where`` names,
    ``file_problem``'s reason or None). A name the locale would misread is the whole run's ``UsageError``."""
    path = cell_path(value, base)
    refuse_misread_cell(path, f"{where}: {what} file")
    return path, file_problem(path, value, what)


def file_problem(path: Path, name: str, what: str) -> str | None:
    """Why ``path`` is no ``what`` file to read, its messages calling it ``name`` (``shown``); None for a regular
    file (a read that fails all the same is its reader's to name)."""
    name = shown(name)
    if "\0" in str(path):
        return f"{what} path holds a NUL character, which no file name can: {name!r}"
    try:
        mode = os.stat(path).st_mode
    except UnicodeEncodeError:  # JSON's "\ud800", which no name holds (one that is not UTF-8 encodes back to its bytes)
        return unicode_problem(name, f"the {what} path") or f"the {what} path cannot be encoded for the file system"
    except OSError as exc:
        if exc.errno in _NOT_FOUND:
            return f"{what} file not found: {name}"
        return f"cannot read {what} file {name} ({exc.strerror or exc})"  # ENAMETOOLONG, EACCES, ELOOP
    if stat.S_ISDIR(mode):
        return f"{what} path is a folder: {name}"
    if problem := special_file_problem(path):  # never opened: a FIFO would block the read forever
        return f"{what} file {name}: {problem}"
    return None


SHOWN_CHARACTERS = 60
_LONGEST_PATH = 4096  # Linux's PATH_MAX: a real path, however deep, is shown whole


def shown(name: str) -> str:
    """``name`` as a message shows it: its first characters where it is longer than any path (inline data taken
    for a path, such as a 76 KB base64 image, would fill the reason, the manifest and the terminal)."""
    if len(name) <= _LONGEST_PATH:
        return name
    return f"{name[:SHOWN_CHARACTERS]}... ({len(name)} characters)"
