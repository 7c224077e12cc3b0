"""Which input files are read, and how many times: regular files only, each real file once.

Stage: sources. In: paths an input folder's walk lists (``base.walk_paths``) or the inputs themselves. Out: why a
path is no file to read (a FIFO, a socket, a device: opening one for reading blocks, or streams forever), and the
paths that reach a file already read (a link ``latest.parquet -> 2024-06.parquet``, a hard link), whose rows
would otherwise be read twice.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tokembed.errors import BadInputError


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
    """``BadInputError`` naming a data file (Parquet, JSONL) in an input folder that is no file to read."""
    if problem := special_file_problem(path):
        raise BadInputError(f"{path}: {problem}")


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
    for path in sorted(paths, key=lambda path: (os.path.islink(path), path)):
        key = file_key(path)
        if key is not None and key in first:
            twice.append((path, first[key]))
            continue
        if key is not None:
            first[key] = path
        kept.append(path)
    return kept, sorted(twice)


def files_linked_twice(inputs: list[Path], output: Path | None = None) -> list[str]:
    """What the manifest's ``ignored`` lists for the paths of input folders that ``walk_files`` leaves out (a second
    path to a file), each with the path its file is read under."""
    from tokembed.sources.base import walk_paths

    return [f"{path} (the same file as {first}, read once)" for given in inputs if given.is_dir()
            for path, first in each_file_once(walk_paths(given, output))[1]]


def file_in_two_inputs(inputs: list[Path]) -> str | None:
    """Which file two inputs reach (a folder holding a link to a file given directly, or to a file of another input
    folder), whose rows would be read twice; or None."""
    from tokembed.sources.base import walk_files

    if len(inputs) < 2:
        return None  # one input reads each of its files once (``each_file_once``): no walk needed
    first: dict[tuple[int, int], tuple[Path, Path]] = {}
    for given in inputs:
        here = {}
        for path in [given] if given.is_file() else walk_files(given) if given.is_dir() else []:
            key = file_key(path)
            if key in first:
                return f"{_in_input(path, given)} is the same file as {_in_input(*first[key])}"
            if key is not None:
                here[key] = (path, given)
        first.update(here)
    return None


def _in_input(path: Path, given: Path) -> str:
    return f"input {path}" if path == given else f"{path} (in input {given})"
