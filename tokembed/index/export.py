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

Memory stays one record batch (for LanceDB, the few copies its writer queues): nothing holds the whole index.
A writer holding the index's lock is not waited for: its uncommitted shards are not in the manifest, so they are
never read.

Both formats are written into a hidden staging folder on ``PATH``'s file system and published only once every
shard is written (``publish.py``): a failed or interrupted export (a corrupt shard, disk full, Ctrl-C, SIGTERM)
leaves ``PATH`` as it was.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tokembed._testhooks import fault_point
from tokembed.errors import UsageError, VectorsDroppedError
from tokembed.index.atomic import write_error
from tokembed.index.export_target import refuse_inside_index, refuse_uri
from tokembed.index.publish import is_staging, names_but_lone_staging_locks, published, remove_dead_staging
from tokembed.path_kind import FOLDER, kind_at

FORMATS = ("parquet", "lance")
DTYPES = ("float32", "float16")
DEFAULT_TABLE = "documents"
# LanceDB's rule (lancedb.util.validate_table_name), checked here so that a bad name is exit 2 before any work.
TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
NOT_UNIT_LENGTH_WARNING = (
    "warning: this index's vectors are not unit length (--no-normalize or --pool-factor): LanceDB's multivector "
    "search is cosine only, so it will not rank as `tokembed score` (dot products) does"
)
VECTORS_DROPPED_HINT = (
    "export writes the stored vectors and cannot rebuild them from the codes; encode the corpus into a new "
    "index folder and export that (next time, export before `tokembed compress --drop-vectors`)"
)


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


def check_export_options(fmt: str, dtype: str, table: str = DEFAULT_TABLE) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: must be one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: must be one of {', '.join(DTYPES)}")
    if fmt == "lance" and (not TABLE_NAME.fullmatch(table) or table in (".", "..")):
        raise UsageError(
            f"--table {table!r}: a LanceDB table name is one or more letters, digits, underscores, hyphens "
            "and periods (not '.' or '..')"
        )


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
    progress: Callable[[str], None] | None = None,
) -> ExportSummary:
    """Write the committed generation of the index at ``index_path`` to ``to`` as ``fmt``; see the module doc.
    ``log`` takes the run's notices, ``progress`` a line per file written (default: ``log``)."""
    from tokembed.index import open_index
    from tokembed.index.format import require_vectors
    from tokembed.search.plaid.codec import needs_vector_norms

    check_export_options(fmt, dtype, table)
    refuse_uri(to)
    started = time.perf_counter()
    index = open_index(index_path, structure=False)  # holds every listed shard open: a later commit cannot pull them away
    try:
        require_vectors(index, "export")
    except VectorsDroppedError as exc:
        exc.hint = VECTORS_DROPPED_HINT  # the generic hint is about search, which export is not
        raise
    to = Path(to)
    refuse_inside_index(to, index.folder)
    _require_reachable(to)
    log = log or (lambda message: None)
    progress = progress or log
    schema = export_schema(index.dim, dtype, pages=has_pdf_pages(index))
    if fmt == "parquet":
        files, written = _write_parquet(index, to, schema, progress)
    else:
        if needs_vector_norms(index.manifest):
            log(NOT_UNIT_LENGTH_WARNING)
        files, written = _write_lance(index, to, table, schema)
    return ExportSummary(
        index=str(index_path), to=str(to), format=fmt, dtype=dtype, rows=index.rows, tokens=index.tokens,
        files=files, bytes=written, seconds=round(time.perf_counter() - started, 3),
    )


def export_batches(index, schema) -> Iterator:
    """The index's rows as record batches of ``schema``, shard by shard, each shard verified first."""
    for number, shard in enumerate(index.shards, start=1):
        yield from _shard_export_batches(index, shard, schema)
        fault_point("export", number)


def _shard_export_batches(index, shard: dict, schema) -> Iterator:
    import pyarrow as pa

    from tokembed.search.maxsim import shard_batches  # drops each batch's mapped pages once it is used

    for batch in shard_batches(index, shard, verify=True):
        columns = [_column(batch, field) for field in schema]
        _refuse_float16_overflow(index, shard, batch, columns[schema.get_field_index("embeddings")])
        yield pa.record_batch(columns, schema=schema)


def _refuse_float16_overflow(index, shard: dict, batch, exported) -> None:
    """A stored value beyond float16's range (an un-normalized float32 index) would be exported as inf."""
    import numpy as np
    import pyarrow as pa

    from tokembed.search.maxsim import batch_vectors

    values = exported.flatten().flatten()
    if values.type != pa.float16() or not _holds_inf(values):
        return
    stored = batch_vectors(batch, index.dim, str(index.shard_path(shard)))[1]
    stored = stored[np.isfinite(stored)]
    largest = float(np.abs(stored).max()) if stored.size else 0.0
    with np.errstate(over="ignore"):
        overflows = bool(np.isinf(np.float16(largest)))
    if overflows:  # else the inf is one the index itself holds, exported as it is
        raise UsageError(
            f"{index.shard_path(shard)}: holds a vector value of magnitude {largest:g}, beyond float16's largest "
            "(65504): --dtype float16 would write it as inf",
            hint="export with --dtype float32 (the default)",
        )


def _holds_inf(values) -> bool:
    """Whether a float16 Arrow array holds an inf, told by numpy: pyarrow's ``is_inf`` has no float16 kernel in
    pyarrow 16, the declared floor. Nulls (a shard written without vectors) are no inf."""
    import numpy as np

    from tokembed.index.arrays import numpy_view

    return bool(np.isinf(numpy_view(values.drop_null())).any())


def _column(batch, field):
    """``field`` of a shard's batch, cast to the export's type; nulls for a shard written before the column."""
    import pyarrow as pa

    position = batch.schema.get_field_index(field.name)
    return pa.nulls(batch.num_rows, field.type) if position < 0 else batch.column(position).cast(field.type)


# ---------------------------------------------------------------------------------------------- staging


def _require_reachable(to: Path) -> None:
    """Whether ``to`` is there must be knowable before anything is staged: a folder on the way that this user may not
    search (EACCES) is a write error (exit 8) naming it. A name too long for the file system is nothing there
    (``path_kind``): creating it says so."""
    try:
        kind_at(to)
    except OSError as exc:
        raise write_error(to, exc, f"--to {to}: cannot look it up ({exc.strerror or exc})") from exc


# ---------------------------------------------------------------------------------------------- parquet


def _write_parquet(index, to: Path, schema, progress) -> tuple[int, int]:
    """A new ``to``: staged beside it and renamed into place. An existing empty folder (the shell's working folder,
    a mount point, a folder whose owner, group or ACLs matter) is kept: staged inside it and published file by
    file."""
    remove_dead_staging(to)
    _require_empty_folder(to)
    with published(to) as staging:
        written = _write_parquet_files(index, staging, to, schema, progress)
    return max(1, len(index.shards)), written


def _write_parquet_files(index, folder: Path, to: Path, schema, progress) -> int:
    """One Parquet file per shard in ``folder`` (one file of no rows for an empty index, so that a glob over
    the folder finds the schema); returns the bytes written."""
    import pyarrow.parquet as pq

    from tokembed.index.atomic import fsync_dir, fsync_file

    written = 0
    for number, shard in enumerate(index.shards, start=1):
        name = Path(shard["file"]).stem + ".parquet"
        try:
            with pq.ParquetWriter(folder / name, schema) as writer:
                for batch in _shard_export_batches(index, shard, schema):
                    writer.write_batch(batch)
            fsync_file(folder / name)
        except OSError as exc:  # the output's: a shard that cannot be read is IndexCorruptError (arrow_file.py)
            raise write_error(folder / name, exc, f"--to {to}: cannot write {name} ({exc.strerror or exc})") from exc
        written += (folder / name).stat().st_size
        progress(f"{name}: {shard['rows']} rows, {shard['tokens']} tokens ({number}/{len(index.shards)})")
        fault_point("export", number)
    if not index.shards:
        pq.write_table(schema.empty_table(), folder / "part-000000.parquet")
        fsync_file(folder / "part-000000.parquet")
        written = (folder / "part-000000.parquet").stat().st_size
    try:
        fsync_dir(folder)
    except OSError as exc:
        raise write_error(folder, exc, f"--to {to}: cannot write ({exc.strerror or exc})") from exc
    return written


def _require_empty_folder(to: Path) -> None:
    """``to`` is new or an empty folder (a lone staging lock file counts as nothing: ``names_but_lone_staging_locks``);
    one that holds only a live export's staging folder (the dead ones' were removed) is named as such, not as a folder
    holding something."""
    kind = kind_at(to)
    names = names_but_lone_staging_locks(to) if kind == FOLDER else []
    if kind is not None and (kind != FOLDER or names):
        if names and all(is_staging(name) for name in names):
            raise UsageError(f"--to {to}: another export is staging into this folder ({names[0]})",
                             hint="wait for it to finish, or choose a new path")
        raise UsageError(f"--to {to}: already exists and is not an empty folder", hint="choose a new path or remove it")


# ---------------------------------------------------------------------------------------------- lance


def _write_lance(index, to: Path, table: str, schema) -> tuple[int, int]:
    """The table is created in a staging LanceDB folder and moved into ``to`` once LanceDB has committed it: a new
    ``to`` is staged beside it and renamed into place; in an existing database folder the staging folder is inside
    it (on its file system, a mount point too) and the table's folder is moved out of it by one rename."""
    import pyarrow as pa

    lancedb = _import_lancedb()
    remove_dead_staging(to)
    _require_database_folder(to, table)
    source = _BatchSource(_copied_out_of_the_map(export_batches(index, schema)))
    with published(to) as staging:
        try:
            reader = pa.RecordBatchReader.from_batches(schema, iter(source))
            lancedb.connect(str(staging)).create_table(table, data=reader, schema=schema)
        except BaseException as exc:
            source.stop()  # an interrupt leaves LanceDB's background thread writing: end its input
            if source.error is not None and isinstance(exc, Exception):
                raise source.error from exc  # LanceDB's "RuntimeError: Arrow error: C Data interface error"
            if isinstance(exc, OSError) or _is_lance_io_error(exc):
                raise write_error(to, exc, f"--to {to}: cannot write the LanceDB table ({exc})") from exc
            raise
        written = _folder_bytes(staging / f"{table}.lance")
    return 1, written


def _copied_out_of_the_map(batches: Iterator) -> Iterator:
    """Each batch copied into memory of its own. LanceDB reads a batch from its own threads while it takes the next
    few (about four batches behind), after ``shard_batches`` has dropped the batch's mapped pages: a zero-copy view
    would fault them back in for good, and the whole index would end up resident. LanceDB frees a copy once written."""
    import pyarrow as pa

    for batch in batches:
        yield pa.record_batch([pa.concat_arrays([column]) for column in batch.columns], schema=batch.schema)


def _is_lance_io_error(exc: BaseException) -> bool:
    """LanceDB reports a failed read or write (disk full, permission) as a RuntimeError carrying Rust's I/O error,
    e.g. ``lance error: LanceError(IO): No space left on device (os error 28)``; any other RuntimeError is a bug."""
    return isinstance(exc, RuntimeError) and bool(re.search(r"LanceError\(IO\)|\(os error \d+\)", str(exc)))


class _BatchSource:
    """Record batches for LanceDB that keep the error raised while reading the index, which LanceDB would
    otherwise turn into a RuntimeError naming neither the shard nor the cause."""

    def __init__(self, batches: Iterator) -> None:
        self.batches, self.error, self.stopped = batches, None, False

    def __iter__(self) -> Iterator:
        try:
            for batch in self.batches:
                if self.stopped:
                    raise RuntimeError("export stopped")
                yield batch
        except Exception as exc:
            if not self.stopped:
                self.error = exc
            raise

    def stop(self) -> None:
        self.stopped = True


def _require_database_folder(to: Path, table: str) -> None:
    """``to`` is new, or a LanceDB database folder (tables, ``*.lance`` folders, and exports' staging folders only)
    that does not hold ``table`` yet."""
    kind = kind_at(to)
    if kind not in (None, FOLDER):
        raise UsageError(f"--to {to}: exists and is not a folder (a LanceDB database is a folder)")
    others = sorted(entry.name for entry in to.iterdir() if not _is_table_or_staging(entry)) if kind == FOLDER else []
    if others:
        what = "a tokembed index folder" if "manifest.json" in others else "not a LanceDB database folder"
        raise UsageError(
            f"--to {to}: {what}: it holds {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}, "
            "not only LanceDB tables (*.lance folders)",
            hint="choose a new folder, or a LanceDB database folder",
        )
    if (to / f"{table}.lance").exists():
        raise UsageError(f"--to {to}: LanceDB table {table!r} already exists", hint="choose another --table or path")


def _is_table_or_staging(entry: Path) -> bool:
    """A table, or a hidden entry (an export's staging folder, macOS's ``.DS_Store``)."""
    return entry.name.startswith(".") or (entry.is_dir() and entry.name.endswith(".lance"))


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
