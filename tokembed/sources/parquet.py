"""Parquet reader: streams record batches with pyarrow, reading only the id, text and/or image columns.

The image column may hold binary bytes, a path string (relative to the Parquet file's folder) or the
Hugging Face ``datasets`` Image struct ``{bytes, path}``; images are decoded here (see ``images.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tokembed.errors import BadInputError
from tokembed.sources.base import Item, SourceOptions, chunk_size, wanted_columns


def read_parquet(path: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(f"{path}: not a readable Parquet file ({exc})") from exc
    names = handle.schema_arrow.names
    use_text, use_image = wanted_columns(str(path), names, options)
    has_ids = options.id_column in names
    if options.id_column_given and not has_ids:
        raise BadInputError(f"{path}: no id column {options.id_column!r} (columns: {', '.join(names)})")
    columns = (
        ([options.text_column] if use_text else [])
        + ([options.image_column] if use_image else [])
        + ([options.id_column] if has_ids else [])
    )
    row = 0
    try:
        for batch in handle.iter_batches(batch_size=chunk_size(options, use_image), columns=columns):
            count = batch.num_rows
            texts = batch.column(options.text_column).to_pylist() if use_text else [None] * count
            ids = batch.column(options.id_column).to_pylist() if has_ids else [None] * count
            images = batch.column(options.image_column).to_pylist() if use_image else None
            chunk = []
            for i, (raw_id, text) in enumerate(zip(ids, texts)):
                item = _item(path, row + i, offset + row + i, raw_id, text, check_text=use_text)
                if images is not None:
                    item = _with_image(item, images[i], path, options, either=use_text)
                chunk.append(item)
            row += len(chunk)
            yield chunk
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(f"{path}: cannot read row group after row {row} ({exc})") from exc


def _item(path: Path, row: int, global_row: int, raw_id, text, check_text: bool = True) -> Item:
    source = str(path)
    if raw_id is None and global_row is not None:
        raw_id = global_row
    if not check_text:
        return Item(str(raw_id), None, source, row)
    if text is None:
        return Item(str(raw_id), None, source, row, error="null text")
    if not isinstance(text, str):
        return Item(str(raw_id), None, source, row, error=f"text is {type(text).__name__}, not a string")
    return Item(str(raw_id), text, source, row)


def _with_image(item: Item, value, path: Path, options: SourceOptions, either: bool) -> Item:
    from tokembed.sources.images import attach_image

    return attach_image(item, value, path.parent, options.max_image_pixels, either=either)
