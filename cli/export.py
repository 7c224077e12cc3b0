"""``tokembed export``: the index as Parquet files or a LanceDB table; the work is ``export_index``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from cli._paths import path_given
from cli._signals import work_done
from cli.progress import warnings_logged


def export(
    index: Path = typer.Argument(..., parser=path_given("INDEX", "the index folder", arrow=True),
                                 help="Index folder (holds manifest.json)."),
    to: Path = typer.Option(..., "--to", parser=path_given("--to", "the folder to export to", arrow=True),
                            help="Output: a new (or existing empty) folder of Parquet files, or a LanceDB database folder."),
    fmt: str = typer.Option(..., "--format", "-f", help="parquet (one file per shard) or lance (one LanceDB table)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (default; DuckDB has no float16) or float16."),
    table: Optional[str] = typer.Option(None, "--table", help="LanceDB table name (--format lance; default documents)."),
    log_format: str = typer.Option("text", help="text, or json: the summary is one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but the summary."),
) -> None:
    """Export the committed index (id, token_ids, embeddings) for DuckDB, Polars, Spark or LanceDB, shard by shard."""
    from tokembed.errors import UsageError
    from tokembed.index.export import check_export_options, export_index

    if log_format not in ("text", "json"):
        raise UsageError(f"--log-format {log_format!r}: must be text or json")
    if table is not None and fmt != "lance":
        raise UsageError(f"--table {table!r}: only --format lance writes a table (Parquet is one file per shard)")
    table = "documents" if table is None else table
    check_export_options(fmt, dtype, table)  # before the index is opened: a bad flag is exit 2 whatever the index
    log = (lambda message: None) if quiet else (lambda message: print(f"tokembed: {message}", file=sys.stderr))
    with warnings_logged(log):  # the library's warnings as lines, none with --quiet (as compress)
        summary = export_index(index, to, fmt=fmt, dtype=dtype, table=table, log=log,
                               progress=(lambda message: None) if log_format == "json" else log)
        work_done()  # published: a signal from here on must not make it exit 130
    if log_format == "json":
        print(json.dumps(summary.to_json()), flush=True)
        return
    where = f"{summary.to} (table {table})" if fmt == "lance" else f"{summary.to} ({summary.files} files)"
    print(
        f"tokembed: exported {summary.rows} rows, {summary.tokens} tokens as {fmt} {dtype} to {where}: "
        f"{summary.bytes} bytes in {summary.seconds}s",
        file=sys.stdout if quiet else sys.stderr,
    )
