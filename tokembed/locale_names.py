"""File names under a locale whose encoding is not UTF-8 (``LANG=en_US.ISO-8859-1``; ``LC_ALL=C`` with
``PYTHONUTF8=0``), for library callers.

A name is its bytes taken as UTF-8 (README "Paths"). Python decodes names with the locale's encoding instead, so
a name that is not ASCII becomes other text: another id for a text, image, PDF or video file (a re-run would
delete it and add it again), and an index path under which Arrow, which encodes the text as UTF-8 again, finds no
shards. The ``tokembed`` command runs in Python's UTF-8 mode whatever the locale (``cli/_utf8.py``); a library
caller under such a locale is refused such a name (``UsageError``), never given other ids. ASCII names read alike
in every encoding, so they are taken as ever.
"""

from __future__ import annotations

import codecs
import locale
import os
import sys
from pathlib import Path

from tokembed.errors import UsageError


def refuse_misread_path(path: Path | str, what: str) -> None:
    """``UsageError`` naming ``what`` (``output``, ``inputs[0]``) where file names are not read as UTF-8 and
    ``path``, resolved (the current folder's name is part of it), is not ASCII."""
    if not names_read_as_utf8() and not (full := os.path.realpath(path)).isascii():
        raise _misread(what, full)


def refuse_misread_names(files: list[Path], folder: Path) -> None:
    """The same for the files a walk of ``folder`` found, whose names are ids and source paths."""
    if names_read_as_utf8():
        return
    for file in files:
        if not str(file).isascii():
            raise _misread(f"{file.relative_to(folder)} in input folder", str(folder))


def names_read_as_utf8() -> bool:
    return bool(sys.flags.utf8_mode) or codecs.lookup(sys.getfilesystemencoding()).name == "utf-8"


def _misread(what: str, path: str) -> UsageError:
    return UsageError(
        f"{what} {path!r}: this locale ({locale.setlocale(locale.LC_CTYPE)}) reads file names as "
        f"{sys.getfilesystemencoding()}, not as UTF-8: the name would be read as other characters (another id, "
        "another file for Arrow)",
        hint="run Python in UTF-8 mode (PYTHONUTF8=1, or python -X utf8), as the tokembed command does")
