"""Which input files are read, and how many times: regular files only, each real file once.

Stage: sources. In: paths an input folder's walk lists (``walk_paths``) or the inputs themselves. Out: why a
path is no file to read (a FIFO, a socket, a device: opening one for reading blocks, or streams forever), and the
paths that reach a file already read (a link ``latest.parquet -> 2024-06.parquet``, a hard link), whose rows
would otherwise be read twice.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from tokembed.errors import BadInputError, UsageError
from tokembed.locale_names import refuse_misread_names
from tokembed.open_files import refuse_out_of_descriptors


def special_file_problem(path: Path | str) -> str | None:
    """Why ``path`` (its links followed) is no file to read, or None: a regular file, a folder, or a path that
    cannot be looked at (its reader names why)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    return f"not a regular file ({kind})"


def refuse_special_file(path: Path) -> None:
    """``BadInputError`` naming ``path`` (an input, or a data file of an input folder) when it is no file to read."""
    if problem := special_file_problem(path):
        raise BadInputError(f"{path}: {problem}")


def arrow_readable(path: Path):
    """``path`` opened for Arrow's readers (``pq.ParquetFile``, ``pq.read_schema``). Arrow takes a path given as text
    only as UTF-8, which a file name that is not (Latin-1 bytes: Python holds them as lone surrogates) cannot be
    written in: the file is opened by its bytes, so that it is read as any other (as a JSONL file is)."""
    import pyarrow as pa

    return pa.OSFile(os.fsencode(path))


def file_key(path: Path | str) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` leads to, or None: nothing (a link to a file that is gone)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def each_file_once(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """(the paths, each real file once; (path, the path kept for its file) for the others). As for folders, a file
    keeps its own path (a link renames nothing), and one reached only through links, the first link in path order;
    a path that leads nowhere is kept (its reader names it)."""
    kept: list[Path] = []
    twice: list[tuple[Path, Path]] = []
    first: dict[tuple[int, int], Path] = {}
    for _, path, key in sorted((_keyed(path) for path in paths), key=lambda entry: (entry[0], entry[1].parts)):
        if key is not None and key in first:
            twice.append((path, first[key]))
            continue
        if key is not None:
            first[key] = path
        kept.append(path)
    return kept, sorted(twice)


class FolderWalks:
    """One run's walks of its input folders (``encode_corpus`` makes one per run: files change between runs): each
    folder is walked once, leaving out ``skip`` (the run's index), and every later look at it (the input checks, the
    readers, the ignored-files list, the journal's signature, the id column check) sees the files of that one walk.
    A copy (pickled) starts with no walks."""

    def __init__(self, skip: Path | None = None) -> None:
        self.skip = skip
        self._walks: dict[Path, tuple[list[Path], list[tuple[Path, Path]]]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"skip": self.skip}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["skip"])

    def files(self, folder: Path) -> list[Path]:
        """``walk_files(folder, self.skip)``, walked once."""
        return list(self._walk(folder)[0])

    def linked_twice(self, folder: Path) -> list[tuple[Path, Path]]:
        """The paths ``files`` leaves out, each with the path its file is read under."""
        return list(self._walk(folder)[1])

    def _walk(self, folder: Path) -> tuple[list[Path], list[tuple[Path, Path]]]:
        with self._lock:
            if folder not in self._walks:
                self._walks[folder] = _walk_once(folder, self.skip)
            return self._walks[folder]


def in_path_order(path: Path) -> tuple[str, ...]:
    """Sort key giving ``Path``'s own order (by parts), several times faster than comparing ``Path`` objects."""
    return path.parts


def _keyed(path: Path) -> tuple[bool, Path, tuple[int, int] | None]:
    """(whether ``path`` is a link, it, ``file_key``), with one ``lstat`` for a path that is no link."""
    try:
        info = os.lstat(path)
    except (OSError, ValueError):
        return False, path, None
    if stat.S_ISLNK(info.st_mode):
        return True, path, file_key(path)
    return False, path, (info.st_dev, info.st_ino)


def files_linked_twice(inputs: list[Path], output: Path | None = None, walks: FolderWalks | None = None) -> list[str]:
    """What the manifest's ``ignored`` lists for the paths of input folders that ``walk_files`` leaves out (a second
    path to a file), each with the path its file is read under."""
    walks = walks or FolderWalks(output)
    return [f"{path} (the same file as {first}, read once)" for given in inputs if given.is_dir()
            for path, first in walks.linked_twice(given)]


def refuse_inputs_given_twice(inputs: list[Path], walks: FolderWalks | None = None) -> None:
    """An input given twice (or a file inside a folder also given) would read its rows twice: every id a duplicate."""
    for position, path in enumerate(inputs):
        for other in inputs[:position]:
            if inside(path, other) or inside(other, path):
                how = "the same as" if path.resolve() == other.resolve() else "inside" if inside(path, other) else "the folder of"
                raise UsageError(f"input {path} is {how} input {other}: its rows would be read twice", hint="give each input once")
    if repeated := file_in_two_inputs(inputs, walks):  # the same, through a link (or a hard link)
        raise UsageError(f"{repeated}: its rows would be read twice", hint="give each input once (a link in an input folder reaches its file again)")


def file_in_two_inputs(inputs: list[Path], walks: FolderWalks | None = None) -> str | None:
    """Which file two inputs reach (a folder holding a link to a file given directly, or to a file of another input
    folder), whose rows would be read twice; or None."""
    if len(inputs) < 2:
        return None  # one input reads each of its files once (``each_file_once``): no walk needed
    first: dict[tuple[int, int], tuple[Path, Path]] = {}
    for given in inputs:
        here = {}
        for path in [given] if given.is_file() else files_of(given, walks) if given.is_dir() else []:
            key = file_key(path)
            if key in first:
                return f"{_in_input(path, given)} is the same file as {_in_input(*first[key])}"
            if key is not None:
                here[key] = (path, given)
        first.update(here)
    return None


def _in_input(path: Path, given: Path) -> str:
    return f"input {path}" if path == given else f"{path} (in input {given})"


def folder_files(folder: Path, wanted=lambda path: True, walks: FolderWalks | None = None) -> list[Path]:
    """The files under ``folder`` that ``wanted`` takes, in path order (see ``walk_files``)."""
    return [path for path in files_of(folder, walks) if wanted(path)]


def files_of(folder: Path, walks: FolderWalks | None, skip: Path | None = None) -> list[Path]:
    """``walk_files(folder, skip)``, or the run's walk of it (which leaves out the run's index) when it has one."""
    return walks.files(folder) if walks is not None else walk_files(folder, skip)


def walk_files(folder: Path, skip: Path | None = None) -> list[Path]:
    """Every file under ``folder``, in path order, as every reader, the journal and the ignored-files list see
    the folder. Hidden entries (a name starting with ".": ``.git/``, macOS's ``._report.pdf`` AppleDouble
    files) are left out. Linked folders are followed, each real folder once and under one path whatever the
    directory order: every real folder under ``folder`` by its own path first, then the links to folders
    outside it, in path order. A link to a file that is gone, or to itself, is listed: its reader names it as a
    bad row (cannot read) instead of it vanishing from the run unsaid. Each real file is listed once, under one
    path (``files.each_file_once``). A folder that cannot be listed is exit 3 (its documents would otherwise be
    deleted from the index unsaid). ``skip``: a folder left out (the index)."""
    return _walk_once(folder, skip)[0]


def _walk_once(folder: Path, skip: Path | None) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """(``walk_files``' list, the paths it leaves out each with the path its file is read under)."""
    kept, twice = each_file_once(walk_paths(folder, skip))
    refuse_misread_names(kept, folder)
    return sorted(kept, key=in_path_order), twice


def walk_paths(folder: Path, skip: Path | None = None) -> list[Path]:
    """Every path ``walk_files`` looks at, a file reached through two paths under both."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set() if skip is None or file_key(skip) is None else {file_key(skip)}
    links: list[Path] = []
    try:
        _walk_real_folders(folder, seen, found, links)
        while links:
            links.sort()
            _walk_real_folders(links.pop(0), seen, found, links)
    except RecursionError:
        raise BadInputError(f"{folder}: the folder tree is too deep to walk") from None
    return found


def _walk_real_folders(top: Path, seen: set, found: list[Path], links: list[Path]) -> None:
    """Files of ``top`` and the real folders under it (each once: ``seen``); links to folders go to ``links``."""

    def unlistable(exc: OSError) -> None:
        refuse_out_of_descriptors(exc.filename, exc)
        if isinstance(exc, FileNotFoundError) and not os.path.lexists(exc.filename):
            raise BadInputError(f"{exc.filename}: no such file or folder")
        raise BadInputError(f"{exc.filename}: cannot list the folder ({exc.strerror or exc})")

    for root, folders, files in os.walk(top, onerror=unlistable):
        key = file_key(root)
        if key is None or key in seen:
            folders[:] = []
            continue
        seen.add(key)
        real = []
        for name in sorted(folders):
            if name.startswith("."):
                continue
            if os.path.islink(os.path.join(root, name)):
                links.append(Path(root, name))  # walked after every real folder: one path per folder, always the same
            else:
                real.append(name)
        folders[:] = real
        found += [Path(root, name) for name in files if not name.startswith(".")]


def inside(path: Path, folder: Path | None) -> bool:
    """Whether ``path`` lies in ``folder`` (None: no folder)."""
    return folder is not None and path.resolve().is_relative_to(folder.resolve())
