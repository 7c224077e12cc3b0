"""Parquet reader: streams record batches with pyarrow, reading only the id and text columns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tokembed.errors import BadInputError
from tokembed.sources.base import Item, SourceOptions


def read_parquet(path: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(f"{path}: not a readable Parquet file ({exc})") from exc
    names = handle.schema_arrow.names
    if options.text_column not in names:
        raise BadInputError(f"{path}: no text column {options.text_column!r} (columns: {', '.join(names)})")
    has_ids = options.id_column in names
    if options.id_column_given and not has_ids:
        raise BadInputError(f"{path}: no id column {options.id_column!r} (columns: {', '.join(names)})")
    columns = [options.text_column] + ([options.id_column] if has_ids else [])
    row = 0
    try:
        for batch in handle.iter_batches(batch_size=options.chunk_rows, columns=columns):
            texts = batch.column(options.text_column).to_pylist()
            ids = batch.column(options.id_column).to_pylist() if has_ids else [None] * len(texts)
            chunk = [_item(path, row + i, offset + row + i, raw_id, text) for i, (raw_id, text) in enumerate(zip(ids, texts))]
            row += len(chunk)
            yield chunk
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(f"{path}: cannot read row group after row {row} ({exc})") from exc


def _item(path: Path, row: int, global_row: int, raw_id, text) -> Item:
    source = str(path)
    if raw_id is None and global_row is not None:
        raw_id = global_row
    if text is None:
        return Item(str(raw_id), None, source, row, error="null text")
    if not isinstance(text, str):
        return Item(str(raw_id), None, source, row, error=f"text is {type(text).__name__}, not a string")
    return Item(str(raw_id), text, source, row)
