"""Path arguments and options as the user typed them, checked before a command runs (typer ``parser=``).

An empty value (``-o "$OUT"`` with the variable unset) is exit 2 naming the flag: pathlib reads "" as ".", the
current folder, where encode would write its index and export its files. So is a blank one (``-o " "``): a file or
folder named by whitespace alone is a quoting slip, not a name anyone means. Index folders and export targets are
opened by Arrow (shards, Parquet files, LanceDB), which takes a path only as UTF-8 text: one whose bytes are not
UTF-8 (legal on Linux; Python holds those bytes as lone surrogates) is exit 2 naming it, not a traceback; a
name's bytes decide, whatever the locale reads them as. So is a relative path given in a current folder that was
deleted (a shell left in a removed build folder): it names nothing (``os.path.realpath`` and ``Path.resolve`` raise
FileNotFoundError).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def path_given(name: str, what: str, arrow: bool = False) -> Callable[[object], Path | None]:
    """A typer ``parser`` for the path option or argument ``name`` (``--output``, ``INDEX``): ``what`` it names,
    said when it is empty. ``arrow``: the path is opened by Arrow, so it must be UTF-8."""

    def parse(value: object) -> Path | None:
        if value is None or isinstance(value, Path):  # the option's default, never typed
            return value
        return checked_path(str(value), name, what, arrow)

    return parse


def checked_path(value: str, name: str, what: str, arrow: bool = False) -> Path:
    """``value`` as a ``Path``; ``UsageError`` (exit 2) naming ``name`` when it is empty or blank, relative to a
    deleted current folder, or not UTF-8 where ``arrow`` opens it."""
    from tokembed.errors import UsageError

    refuse_blank(value, name, what)
    if not os.path.isabs(value) and _current_folder_deleted():
        raise UsageError(f"{name} {value!r}: a relative path, and the current folder was deleted",
                         hint="cd to a folder that exists, or give an absolute path")
    if arrow and (problem := _not_utf8(value)):
        raise UsageError(f"{name} {value!r}: {problem}; Arrow, which reads and writes tokembed's files, takes UTF-8 "
                         "paths only", hint="rename it, or give another path")
    return Path(value)


def _not_utf8(value: str) -> str | None:
    """Why ``value`` is no path Arrow can open, or None. The library opens it resolved: a relative path in a
    folder whose name is not UTF-8 (the current one, a link's target) is not either."""
    if byte := _first_byte_not_utf8(value):
        return f"the path is not UTF-8 ({byte})"
    full = os.path.realpath(value)
    if byte := _first_byte_not_utf8(full):
        return f"the path is not UTF-8 once resolved, {full!r} ({byte})"
    return None


def _first_byte_not_utf8(path: str) -> str | None:
    """Where the name's bytes stop being UTF-8, or None. Its bytes, not its text: a locale that is not UTF-8
    decodes UTF-8 bytes to other characters (``tokembed.locale_names``)."""
    name = os.fsencode(path)
    try:
        name.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"byte 0x{name[exc.start]:02x} at character {len(name[:exc.start].decode('utf-8'))}"
    return None


def _current_folder_deleted() -> bool:
    try:
        os.getcwd()
    except FileNotFoundError:
        return True
    return False


def refuse_blank(value: str, name: str, what: str) -> None:
    """``UsageError`` (exit 2) naming ``name`` when ``value`` is empty or whitespace alone (an unset variable)."""
    from tokembed.errors import UsageError

    if not value.strip():
        raise UsageError(f"{name} is empty: give {what}", hint="an unset shell variable?")


def column_named(value: str | None, flag: str) -> str | None:
    """A column flag's value (``--id-column``); "" (an unset variable, too) is exit 2, not the default column."""
    if value is not None:
        refuse_blank(value, flag, "a column (field) name")
    return value


def query_texts(texts: list[str] | None) -> list[str]:
    """``--query`` values, each a text: a blank one (``--query "$Q"`` with the variable unset) is exit 2, not a query
    of special tokens alone that ranks every document by its closeness to them."""
    for text in texts or []:
        refuse_blank(text, "--query", "a query text")
    return texts or []


def refuse_columns_queries_lack(query_file: Path | None, id_column: str | None, text_column: str | None) -> None:
    """A column flag names a .jsonl/.parquet field (a .tsv header's): a .txt file or --query texts alone have none,
    and a flag silently ignored there would say the column was checked. Exit 2 naming the flag."""
    from tokembed.errors import UsageError

    if query_file is None:
        why = "--query texts have no columns (their ids are q1, q2, ...)"
    elif query_file.suffix.lower() == ".txt":
        why = f"{query_file} is a .txt query file, one query a line: it has no columns (its ids are line numbers)"
    else:
        return
    for flag, value in (("--id-column", id_column), ("--text-column", text_column)):
        if value is not None:
            raise UsageError(f"{flag} {value!r}: {why}", hint="drop it, or give a .jsonl or .parquet query file")
