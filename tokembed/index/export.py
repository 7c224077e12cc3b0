"""Export an index for tools that do not read Arrow IPC files or float16: Parquet files, or a LanceDB table.

Input: the committed generation of an index (only the shards its manifest lists, each checked against
its sha256), read shard by shard through the memory map. Output, with the embeddings cast to ``dtype``
(float32 by default: DuckDB has no float16):

* ``parquet``: ``PATH/part-NNNNNN.parquet``, one file per shard (same number; one file of no rows for an
  empty index), rows in index order, columns ``id`` string, ``token_ids`` list<int32>, ``embeddings``
  list<fixed_size_list<float, D>> (DuckDB reads that as FLOAT[][], Polars as List(Array), pyarrow as it was
  written), and for an index of PDF pages ``source_file`` string and ``page`` int32 (null for rows that
  are not pages).
* ``lance``: a table in the LanceDB database folder ``PATH`` with the same three columns, ``embeddings``
  in LanceDB's multivector schema, so that ``table.search(query_vectors)`` runs MaxSim (cosine) over it.

Memory stays one record batch: nothing holds the whole index. A writer holding the index's lock is not
waited for: its uncommitted shards are not in the manifest, so they are never read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tokembed.errors import IndexWriteError, UsageError

FORMATS = ("parquet", "lance")
DTYPES = ("float32", "float16")
DEFAULT_TABLE = "documents"


@dataclass
class ExportSummary:
    index: str
    to: str
    format: str
    dtype: str
    rows: int
    tokens: int
    files: int  # Parquet files written, or 1 for the LanceDB table
    bytes: int
    seconds: float

    def to_json(self) -> dict:
        return asdict(self)


def check_export_options(fmt: str, dtype: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: must be one of {', '.join(DTYPES)}")


def export_schema(dim: int, dtype: str, pages: bool = False):
    """The export's columns; ``pages``: also a PDF page's ``source_file`` and ``page`` (null for other rows)."""
    import pyarrow as pa

    value = pa.float16() if dtype == "float16" else pa.float32()
    fields = [
        pa.field("id", pa.string()),
        pa.field("token_ids", pa.list_(pa.int32())),
        pa.field("embeddings", pa.list_(pa.list_(value, dim))),
    ]
    if pages:
        fields += [pa.field("source_file", pa.string()), pa.field("page", pa.int32())]
    return pa.schema(fields)


def has_pdf_pages(index) -> bool:
    return bool((index.manifest.get("pdf") or {}).get("pages"))


def export_index(
    index_path,
    to,
    fmt: str = "parquet",
    dtype: str = "float32",
    table: str = DEFAULT_TABLE,
    log: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Write the committed generation of the index at ``index_path`` to ``to`` as ``fmt``; see the module doc."""
    from tokembed.index import open_index
    from tokembed.index.format import require_vectors

    check_export_options(fmt, dtype)
    started = time.perf_counter()
    index = open_index(index_path)  # holds every listed shard open: a later commit cannot pull them away
    require_vectors(index, "export")
    to = Path(to)
    schema = export_schema(index.dim, dtype, pages=has_pdf_pages(index))
    if fmt == "parquet":
        files, written = _write_parquet(index, to, schema, log or (lambda message: None))
    else:
        files, written = _write_lance(index, to, table, schema)
    return ExportSummary(
        index=str(index_path), to=str(to), format=fmt, dtype=dtype, rows=index.rows, tokens=index.tokens,
        files=files, bytes=written, seconds=round(time.perf_counter() - started, 3),
    )


def export_batches(index, schema) -> Iterator:
    """The index's rows as record batches of ``schema``, shard by shard, each shard verified first."""
    for shard in index.shards:
        yield from _shard_export_batches(index, shard, schema)


def _shard_export_batches(index, shard: dict, schema) -> Iterator:
    import pyarrow as pa

    from tokembed.search.maxsim import shard_batches  # drops each batch's mapped pages once it is used

    for batch in shard_batches(index, shard, verify=True):
        columns = [_column(batch, field) for field in schema]
        yield pa.record_batch(columns, schema=schema)


def _column(batch, field):
    """``field`` of a shard's batch, cast to the export's type; nulls for a shard written before the column."""
    import pyarrow as pa

    position = batch.schema.get_field_index(field.name)
    return pa.nulls(batch.num_rows, field.type) if position < 0 else batch.column(position).cast(field.type)


# ---------------------------------------------------------------------------------------------- parquet


def _write_parquet(index, to: Path, schema, log) -> tuple[int, int]:
    import pyarrow.parquet as pq

    from tokembed.index.atomic import fsync_dir, replacing

    _require_empty_folder(to)
    written = 0
    for number, shard in enumerate(index.shards, start=1):
        final = to / (Path(shard["file"]).stem + ".parquet")
        try:
            with replacing(final) as tmp, pq.ParquetWriter(tmp, schema) as writer:
                for batch in _shard_export_batches(index, shard, schema):
                    writer.write_batch(batch)
        except OSError as exc:
            raise IndexWriteError(f"{final}: cannot write ({exc.strerror or exc})") from exc
        written += final.stat().st_size
        log(f"{final.name}: {shard['rows']} rows, {shard['tokens']} tokens ({number}/{len(index.shards)})")
    if not index.shards:  # an empty index: one file of no rows, so that a glob over the folder finds its schema
        empty = to / "part-000000.parquet"
        with replacing(empty) as tmp:
            pq.write_table(schema.empty_table(), tmp)
        written = empty.stat().st_size
    fsync_dir(to)
    return max(1, len(index.shards)), written


def _require_empty_folder(to: Path) -> None:
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise UsageError(f"--to {to}: already exists and is not an empty folder", hint="choose a new path or remove it")
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexWriteError(f"--to {to}: cannot create the folder ({exc.strerror or exc})") from exc


# ---------------------------------------------------------------------------------------------- lance


def _write_lance(index, to: Path, table: str, schema) -> tuple[int, int]:
    import pyarrow as pa

    lancedb = _import_lancedb()
    try:
        db = lancedb.connect(str(to))
        if table in db.list_tables().tables:
            raise UsageError(f"--to {to}: LanceDB table {table!r} already exists", hint="choose another --table or path")
        reader = pa.RecordBatchReader.from_batches(schema, export_batches(index, schema))
        db.create_table(table, data=reader, schema=schema)
    except OSError as exc:
        raise IndexWriteError(f"--to {to}: cannot write the LanceDB table ({exc})") from exc
    return 1, _folder_bytes(to / f"{table}.lance")


def _import_lancedb():
    try:
        import lancedb
    except ImportError as exc:
        raise UsageError(
            "--format lance needs the lancedb package", hint="pip install 'tokembed[lance]'"
        ) from exc
    return lancedb


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
