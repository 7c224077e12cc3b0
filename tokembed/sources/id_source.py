"""Where a run's ids come from: the id column (JSONL: field) of its Parquet/JSONL files, or their row numbers.

The manifest records the column when every such file has it (``id_column``), so that a column renamed upstream
is refused rather than every id silently replaced by a row number (every row deleted and added again). A file
that cannot be read is left to its reader, which says why.
"""

from __future__ import annotations

from pathlib import Path

from tokembed.errors import BadInputError
from tokembed.sources.base import DATA_SUFFIXES, SourceOptions
from tokembed.sources.files import files_of


def id_column_read(inputs: list[Path], options: SourceOptions, committed: str | None) -> str | None:
    """The id column every Parquet/JSONL input has, which its ids are read from; None when one has none (its
    rows are numbered) or there is none. ``committed``: the column the committed index's ids were read from
    (None: row numbers, or an index of an earlier release): an input without this run's id column is then
    refused (``BadInputError``)."""
    every = None
    for file in data_files(inputs, options.walks):
        names = _id_candidates(file)
        if names is None:
            continue
        has = options.id_column in names
        if not has and committed is not None:
            raise _renamed(file, names, options.id_column, committed)
        every = has if every is None else every and has
    return options.id_column if every else None


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
    whose first record has none from row numbers); None when the file gives none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokembed.sources.files import arrow_readable, special_file_problem
    from tokembed.sources.jsonl import first_record_fields

    if special_file_problem(file):  # never opened (a FIFO blocks): its reader names it
        return None
    try:
        return pq.ParquetFile(arrow_readable(file)).schema_arrow.names if file.suffix == ".parquet" else first_record_fields(file)
    except (pa.ArrowException, OSError, ValueError):  # not readable: its reader names the file and the reason
        return None


def _renamed(file: Path, names: list[str], column: str, committed: str) -> BadInputError:
    what = "field" if file.suffix == ".jsonl" else "column"
    lacking = f"{file}: its first record has no id field" if what == "field" else f"{file}: no id column"  # JSONL: the
    # first record decides the file's ids
    return BadInputError(
        f"{lacking} {column!r} ({what}s: {', '.join(names)}); the index's ids were read from {what} "
        f"{committed!r}, and this run would number the file's rows instead (their ids replaced)",
        hint="name the id column with --id-column, or pass --full to rebuild the index with row numbers as ids",
    )
