"""Where a run's ids come from: the id column (JSONL: field) of its Parquet/JSONL files, or their row numbers.

The manifest records the column when every such file has it (``id_column``), so that a column renamed upstream
is refused rather than every id silently replaced by a row number (every row deleted and added again). Files
of which some have the column and some not are refused: a row number of the one could equal an id of the other,
and none of the column could be recorded. A file that cannot be read is left to its reader, which says why.
"""

from __future__ import annotations

from pathlib import Path

from tokembed.errors import BadInputError
from tokembed.sources.base import DATA_SUFFIXES, SourceOptions
from tokembed.sources.files import files_of


def id_column_read(inputs: list[Path], options: SourceOptions, committed: str | None) -> str | None:
    """The id column every Parquet/JSONL input has, which its ids are read from; None when none has it (their
    rows are numbered) or there is no such input. Inputs of which some have it and some not are refused
    (``refuse_mixed_ids``). ``committed``: the column the committed index's ids were read from (None: row
    numbers, or an index of an earlier release): an input without this run's id column is then refused
    (``BadInputError``)."""
    candidates = _readable_candidates(inputs, options)
    _refuse_mixed(candidates, options)
    for file, names in candidates:
        if options.id_column not in names and committed is not None:
            raise _renamed(file, names, options.id_column, committed)
    every = candidates and all(options.id_column in names for _, names in candidates)
    return options.id_column if every else None


def refuse_mixed_ids(inputs: list[Path], options: SourceOptions) -> None:
    """Refuse Parquet/JSONL inputs of which some have the id column and some not (``BadInputError``): the ones
    would be read for their ids, the others numbered by row."""
    _refuse_mixed(_readable_candidates(inputs, options), options)


def _readable_candidates(inputs: list[Path], options: SourceOptions) -> list[tuple[Path, list[str]]]:
    """Each Parquet/JSONL input that gives ids, with the names its id column could be (``_id_candidates``)."""
    candidates = [(file, _id_candidates(file)) for file in data_files(inputs, options.walks)]
    return [(file, names) for file, names in candidates if names is not None]


def _refuse_mixed(candidates: list[tuple[Path, list[str]]], options: SourceOptions) -> None:
    """An explicit ``--id-column`` is left to the readers: each refuses a file without it (no row numbers)."""
    having = [file for file, names in candidates if options.id_column in names]
    lacking = [(file, names) for file, names in candidates if options.id_column not in names]
    if options.id_column_given or not having or not lacking:
        return
    (file, names), with_ids = lacking[0], having[0]
    raise BadInputError(
        f"{_lacking(file, names, options.id_column)}, while {with_ids} has it: the run's ids would be the row "
        "numbers of the one and the id values of the other (a row number can equal another file's id, and a later "
        "rename of the id column could not be told from a file numbered by row)",
        hint=f"give every file the id column (name it with --id-column if it is named otherwise), or drop it from "
             f"{with_ids}{' and the other files that have it' if len(having) > 1 else ''} so all are numbered",
    )


def data_files(inputs: list[Path], walks=None) -> list[Path]:
    """The Parquet and JSONL files the inputs are read for (a folder's, in path order, as the readers take them)."""
    files = []
    for path in inputs:
        if path.is_file():
            files += [path] if path.suffix in DATA_SUFFIXES else []
        elif path.is_dir():
            files += [file for file in files_of(path, walks) if file.suffix in DATA_SUFFIXES]
    return files


def _id_candidates(file: Path) -> list[str] | None:
    """A Parquet file's column names; a JSONL file's first record's fields (its reader takes the ids of a file
    whose first record has none from row numbers); None when the file gives none (no rows: no ids either way)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokembed.sources.files import arrow_readable, special_file_problem
    from tokembed.sources.jsonl import first_record_fields

    if special_file_problem(file):  # never opened (a FIFO blocks): its reader names it
        return None
    try:
        if file.suffix == ".jsonl":
            return first_record_fields(file)
        handle = pq.ParquetFile(arrow_readable(file))
        return handle.schema_arrow.names if handle.metadata.num_rows else None
    except (pa.ArrowException, OSError, ValueError):  # not readable: its reader names the file and the reason
        return None


def _renamed(file: Path, names: list[str], column: str, committed: str) -> BadInputError:
    what = "field" if file.suffix == ".jsonl" else "column"
    return BadInputError(
        f"{_lacking(file, names, column)}; the index's ids were read from {what} {committed!r}, and this run would "
        "number the file's rows instead (their ids replaced)",
        hint="name the id column with --id-column, or pass --full to rebuild the index with row numbers as ids",
    )


def _lacking(file: Path, names: list[str], column: str) -> str:
    """A file without the id column, its names listed (JSONL: the first record decides the file's ids)."""
    if file.suffix == ".jsonl":
        return f"{file}: its first record has no id field {column!r} (fields: {', '.join(names)})"
    return f"{file}: no id column {column!r} (columns: {', '.join(names)})"
