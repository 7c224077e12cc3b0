"""File names under a locale whose encoding is not UTF-8 (``LANG=en_US.ISO-8859-1``; ``LC_ALL=C`` with
``PYTHONUTF8=0``), for library callers.

A name is its bytes taken as UTF-8 (README "Paths"). Python decodes names with the locale's encoding instead, so
a name that is not ASCII becomes other text: another id for a text, image, PDF or video file (a re-run would
delete it and add it again), an index path under which Arrow, which encodes the text as UTF-8 again, finds no
shards, and a file that is not there for a path cell (an image, video or PDF file a Parquet/JSONL row names) or a
``--model`` folder. The ``tokembed`` command runs in Python's UTF-8 mode whatever the locale (``cli/_utf8.py``); a
library caller under such a locale is refused such a name (``UsageError``), never given other ids. ASCII names read
alike in every encoding, so they are taken as ever.
"""

from __future__ import annotations

import codecs
import locale
import os
import sys
from pathlib import Path

from tokembed.errors import UsageError

_ANOTHER_ID = "another id, another file for Arrow"


def refuse_misread_path(path: Path | str, what: str, becomes: str = _ANOTHER_ID) -> None:
    """``UsageError`` naming ``what`` (``output``, ``inputs[0]``, ``--model``) where file names are not read as UTF-8
    and ``path``, resolved (the current folder's name is part of it), is not ASCII; ``becomes``: what the misread
    name would be."""
    if not names_read_as_utf8() and not (full := _resolved(path)).isascii():
        raise _misread(what, full, becomes)


def refuse_misread_cell(path: Path, what: str) -> None:
    """The same for the file a Parquet/JSONL cell names (an image, video or PDF), before it is opened: a whole run's
    error, not a bad row (``--on-error skip`` would drop a file that is there). ``path`` as the cell and the input's
    folder make it: not resolved, since the name in the cell is what the locale misreads, not a link's."""
    if not names_read_as_utf8() and not str(path).isascii():
        raise _misread(what, str(path), "a file that is not there, or another file")


def refuse_misread_names(files: list[Path], folder: Path) -> None:
    """The same for the files a walk of ``folder`` found, whose names are ids and source paths."""
    if names_read_as_utf8():
        return
    for file in files:
        if not str(file).isascii():
            raise _misread(f"{file.relative_to(folder)} in input folder", str(folder))


def names_read_as_utf8() -> bool:
    return bool(sys.flags.utf8_mode) or codecs.lookup(sys.getfilesystemencoding()).name == "utf-8"


def _resolved(path: Path | str) -> str:
    """``path`` with its links resolved; only made absolute where the locale cannot encode it at all (``LC_ALL=C``:
    ``realpath`` would raise ``UnicodeEncodeError`` looking it up)."""
    try:
        return os.path.realpath(path)
    except UnicodeEncodeError:
        return os.path.abspath(path)


def _misread(what: str, path: str, becomes: str = _ANOTHER_ID) -> UsageError:
    return UsageError(
        f"{what} {path!r}: this locale ({locale.setlocale(locale.LC_CTYPE)}) reads file names as "
        f"{sys.getfilesystemencoding()}, not as UTF-8: the name would be read as other characters ({becomes})",
        hint="run Python in UTF-8 mode (PYTHONUTF8=1, or python -X utf8), as the tokembed command does")
