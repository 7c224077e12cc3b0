"""Parquet reader: streams record batches with pyarrow, reading only the id, text and/or image columns.

The image column may hold binary bytes, a path string (relative to the Parquet file's folder) or the
Hugging Face ``datasets`` Image struct ``{bytes, path}``; images are decoded here (see ``images.py``).
A cell holding a PDF (the ``--pdf-column``, or an image cell whose bytes or path are a PDF) becomes one
item per page (see ``pdf.py``), so a chunk may span rows or part of one row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tokembed.errors import BadInputError
from tokembed.sources.base import Item, SourceOptions, chunk_size, chunked, wanted_columns


def read_parquet(path: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(f"{path}: not a readable Parquet file ({exc})") from exc
    names = handle.schema_arrow.names
    use_pdf = options.pdf_column_given
    if use_pdf and options.pdf_column not in names:
        raise BadInputError(f"{path}: no PDF column {options.pdf_column!r} (columns: {', '.join(names)})")
    use_video = _use_video(path, names, options)
    use_text, use_image = (False, False) if use_pdf or use_video else wanted_columns(str(path), names, options)
    has_ids = options.id_column in names
    if options.id_column_given and not has_ids:
        raise BadInputError(f"{path}: no id column {options.id_column!r} (columns: {', '.join(names)})")
    columns = (
        ([options.text_column] if use_text else [])
        + ([options.image_column] if use_image else [])
        + ([options.pdf_column] if use_pdf else [])
        + ([options.video_column] if use_video else [])
        + ([options.id_column] if has_ids else [])
    )
    size = chunk_size(options, use_image or use_video or (use_pdf and options.modality == "image"))
    from tokembed.sources.images import in_order

    rows = _rows(path, handle, columns, options, offset, use_text, use_image, use_pdf, has_ids, use_video)
    return chunked(in_order(rows) if use_image else rows, size)  # image rows decode on threads


def _use_video(path: Path, names: list[str], options: SourceOptions) -> bool:
    """Read the video column: when ``--video-column`` is given, or for image models when the file has a video
    column and no image column."""
    if options.video_column_given and options.video_column not in names:
        raise BadInputError(f"{path}: no video column {options.video_column!r} (columns: {', '.join(names)})")
    has_video = options.video_column in names and options.image_column not in names and not options.image_column_given
    return options.video_column_given or (options.modality == "image" and has_video)


def _rows(path, handle, columns, options, offset, use_text, use_image, use_pdf, has_ids, use_video=False) -> Iterator:
    """Items row by row; a row whose PDF or image cell holds a PDF becomes one item per page; an image row is
    decoded in the background (a future, see ``images.in_order``)."""
    import pyarrow as pa

    from tokembed.sources.images import in_background
    from tokembed.sources.pdf import pdf_in_value, row_pages
    from tokembed.sources.video import attach_video, video_in_value

    row = 0
    try:
        for batch in handle.iter_batches(batch_size=chunk_size(options, use_image or use_video or use_pdf), columns=columns):
            count = batch.num_rows
            texts = batch.column(options.text_column).to_pylist() if use_text else [None] * count
            ids = batch.column(options.id_column).to_pylist() if has_ids else [None] * count
            images = batch.column(options.image_column).to_pylist() if use_image else None
            pdfs = batch.column(options.pdf_column).to_pylist() if use_pdf else None
            videos = batch.column(options.video_column).to_pylist() if use_video else None
            del batch  # its Arrow buffers: a huge text would otherwise be held twice while its items are planned
            for i, (raw_id, text) in enumerate(zip(ids, texts)):
                item = _item(path, row + i, offset + row + i, raw_id, text, check_text=use_text)
                if pdfs is not None:
                    yield from row_pages(item, pdfs[i], path.parent, options)
                elif videos is not None:
                    yield attach_video(item, videos[i], path.parent)
                elif images is not None and video_in_value(images[i], path.parent):  # an image cell holding a video
                    yield attach_video(item, images[i], path.parent)
                elif images is not None and pdf_in_value(images[i], path.parent) is not None:
                    yield from row_pages(item, images[i], path.parent, options)
                else:
                    yield item if images is None else in_background(_with_image, item, images[i], path, options, use_text)
            row += count
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
