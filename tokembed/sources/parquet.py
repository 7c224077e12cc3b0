"""Parquet reader: streams record batches with pyarrow, reading only the id, text and/or image columns.

The image column may hold binary bytes, a path string (relative to the Parquet file's folder) or the
Hugging Face ``datasets`` Image struct ``{bytes, path}``; images are decoded here (see ``images.py``).
A cell holding a PDF (the ``--pdf-column``, or an image cell whose bytes or path are a PDF) becomes one
item per page (see ``pdf.py``), so a chunk may span rows or part of one row.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from tokembed.errors import BadInputError
from tokembed.open_files import refuse_out_of_descriptors
from tokembed.sources.base import Item, SourceOptions, id_problem, wanted_columns
from tokembed.sources.chunks import chunk_size, chunked
from tokembed.sources.files import arrow_readable, refuse_special_file
from tokembed.sources.parquet_pages import CorruptPage, InvalidUtf8, Unsupported, is_huge_text, text_cells


def read_parquet(path: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    refuse_special_file(path)
    try:
        handle = pq.ParquetFile(arrow_readable(path))
    except (pa.ArrowException, OSError) as exc:
        refuse_out_of_descriptors(path, exc)
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
    _check_columns(path, handle.schema_arrow, columns, options, handle.metadata.num_rows, either=use_text and use_image)
    size = chunk_size(options, use_image or use_video or (use_pdf and options.modality == "image"))
    from tokembed.sources.images import in_order

    rows = _rows(path, handle, columns, options, offset, use_text, use_image, use_pdf, has_ids, use_video)
    pixels = options.image_chunk_pixels
    return chunked(in_order(rows, pixels) if use_image else rows, size, pixels)  # image rows decode on threads


def _check_columns(path: Path, schema, columns: list[str], options: SourceOptions, rows: int, either: bool) -> None:
    """``BadInputError`` for a column read that the file has twice (which one is meant?), or whose type makes every
    row a bad row (a text column of binary, integers or lists; an image column of numbers; an id column of binary,
    lists or booleans; a column of type null in a file with rows, but for the text or image column of a run that
    takes ``either``): with --on-error skip the run would delete every row of the file from the index, as a missing
    column would."""
    import pyarrow as pa

    names = schema.names
    for column in dict.fromkeys(columns):
        if names.count(column) > 1:
            raise BadInputError(f"{path}: column {column!r} appears {names.count(column)} times (columns: "
                                f"{', '.join(names)}): which one to read is ambiguous",
                                hint="write the file with distinct column names")
    kinds = {options.text_column: ("text", _is_text_type, "a string")}
    media = "bytes, a path or {bytes, path}"
    kinds.update({name: (what, _is_media_type, media) for name, what in
                  ((options.image_column, "image"), (options.pdf_column, "PDF"), (options.video_column, "video"))})
    kinds.setdefault(options.id_column, ("id", _is_id_type, "a string or a number"))  # also text: a string
    for column in columns:
        what, fits, expected = kinds[column]
        column_type = schema.field(column).type
        if not fits(column_type):
            raise BadInputError(f"{path}: {what} column {column!r} is of type {column_type}, not {expected}: every row "
                                "would be a bad row", hint=_TYPE_HINT.get(what))
        alone = not (either and column in (options.text_column, options.image_column))
        if rows and alone and pa.types.is_null(column_type):  # an empty file's all-None column (pandas) is typed null too
            raise BadInputError(f"{path}: {what} column {column!r} is of type null (every cell null): every row "
                                "would be a bad row")


_CAST_HINT = "(a binary column of UTF-8 text: CAST(col AS STRING), or pyarrow's .cast(pa.string()))"
_TYPE_HINT = {"text": f"cast the column to string where the file is written {_CAST_HINT}",
              "id": f"cast the id column to string where the file is written {_CAST_HINT}"}


def _cell_type(column_type):
    """The type a column's cells are read as: a dictionary's values; an extension type's storage (a Parquet file
    keeps the Arrow extension types pyarrow registers), but bool8's cells are booleans and uuid's are UUIDs (an id,
    whose text is the UUID's)."""
    import pyarrow as pa

    if pa.types.is_dictionary(column_type):
        column_type = column_type.value_type
    if not isinstance(column_type, pa.BaseExtensionType) or column_type.extension_name == "arrow.uuid":
        return column_type
    return pa.bool_() if column_type.extension_name == "arrow.bool8" else _cell_type(column_type.storage_type)


def _is_text_type(column_type) -> bool:
    import pyarrow as pa

    column_type = _cell_type(column_type)
    string = pa.types.is_string(column_type) or pa.types.is_large_string(column_type) or pa.types.is_string_view(column_type)
    return string or pa.types.is_null(column_type)  # no rows, or each a "null text": see _check_columns


def _is_id_type(column_type) -> bool:
    """Not a type whose every cell is a bad row's id (``id_problem``): bytes, a list, an object, a boolean."""
    import pyarrow as pa

    column_type = _cell_type(column_type)
    binary = (pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type)
              or pa.types.is_binary_view(column_type) or pa.types.is_fixed_size_binary(column_type))
    nested = pa.types.is_nested(column_type)  # lists, structs, maps
    return not (binary or nested or pa.types.is_boolean(column_type))


def _is_media_type(column_type) -> bool:
    """What an image, PDF or video cell may hold: bytes, a path (or data URI) string, the ``{bytes, path}`` struct."""
    import pyarrow as pa

    column_type = _cell_type(column_type)
    binary = (pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type)
              or pa.types.is_binary_view(column_type) or pa.types.is_fixed_size_binary(column_type))
    return binary or _is_text_type(column_type) or pa.types.is_struct(column_type)


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

    from tokembed.sources.images import attach_image, in_background
    from tokembed.sources.pdf import pdf_in_value, row_pages
    from tokembed.sources.video import video_in_value, video_item

    row = 0
    paged = use_text and not (use_image or use_pdf or use_video) and options.text_column != options.id_column
    size = chunk_size(options, use_image or use_video or use_pdf)
    try:
        for batch, paged_texts in _batches(path, handle, columns, size, options.text_column, paged):
            count = batch.num_rows
            texts = paged_texts if paged_texts is not None else _cells(batch, options.text_column) if use_text else [None] * count
            ids = _id_cells(batch, options.id_column) if has_ids else range(offset + row, offset + row + count)
            images = _cells(batch, options.image_column) if use_image else None
            pdfs = _cells(batch, options.pdf_column) if use_pdf else None
            videos = _cells(batch, options.video_column) if use_video else None
            del batch  # its Arrow buffers: a huge text would otherwise be held twice while its items are planned
            for i, (raw_id, text) in enumerate(zip(ids, texts)):
                if (bad_id := _bad_id(path, row + i, raw_id)) is not None:
                    yield bad_id  # its image, PDF or video is not read
                    continue
                item = _item(path, row + i, str(raw_id), text, check_text=use_text)
                if pdfs is not None:
                    yield from row_pages(item, pdfs[i], path.parent, options)
                elif videos is not None:
                    yield video_item(item, videos[i], path.parent, options)
                elif images is not None and video_in_value(images[i], path.parent):  # an image cell holding a video
                    yield video_item(item, images[i], path.parent, options)
                elif images is not None and pdf_in_value(images[i], path.parent) is not None:
                    yield from row_pages(item, images[i], path.parent, options)
                else:
                    yield item if images is None else in_background(attach_image, item, images[i], path.parent, options.max_image_pixels, use_text)
            row += count
    except (pa.ArrowException, OSError, CorruptPage, Unsupported) as exc:
        refuse_out_of_descriptors(path, exc)
        raise BadInputError(f"{path}: cannot read row group after row {row} ({exc})") from exc


def _batches(path, handle, columns: list[str], size: int, text_column: str, paged: bool) -> Iterator:
    """(record batch, None), or (record batch of the other columns, its texts) for a row group whose text
    column is huge: that column is read page by page (see ``parquet_pages``)."""
    groups = range(handle.metadata.num_row_groups)
    huge = {group for group in groups if paged and is_huge_text(path, handle, group, text_column)}
    if not huge:
        yield from ((batch, None) for batch in handle.iter_batches(batch_size=size, columns=columns))
        return
    others = [column for column in columns if column != text_column]
    for group in groups:
        if group not in huge:
            yield from ((batch, None) for batch in handle.iter_batches(batch_size=size, row_groups=[group], columns=columns))
            continue
        cells = text_cells(path, handle, group, text_column)
        for batch in handle.iter_batches(batch_size=size, row_groups=[group], columns=others):
            texts = list(islice(cells, batch.num_rows))
            if len(texts) != batch.num_rows:  # never a row silently dropped: the pages hold fewer cells than rows
                raise CorruptPage(f"row group {group}'s text column has fewer cells than rows")
            yield batch, texts


def _cells(batch, column: str) -> list:
    """The column's cells as Python values; a string cell that is not valid UTF-8 as ``InvalidUtf8`` (a bad
    row: ``to_pylist`` would raise for the whole batch)."""
    values = batch.column(column)
    try:
        return values.to_pylist()
    except UnicodeDecodeError:
        return [_cell(value) for value in values]


def _id_cells(batch, column: str) -> list:
    """The id column's cells; a float32 (float16) id as the shortest text of its own precision ("0.1", as JSONL's
    0.1 is), not of the float64 it widens to ("0.10000000149011612"); a temporal id as its text (``_temporal_ids``)."""
    import numpy as np
    import pyarrow as pa

    column_type = batch.schema.field(column).type
    if pa.types.is_temporal(_cell_type(column_type)):
        return _temporal_ids(batch.column(column))
    cells = _cells(batch, column)
    narrow = {pa.float32(): np.float32, pa.float16(): np.float16}.get(_cell_type(column_type))  # dictionary<float32> too
    if narrow is None:
        return cells
    return [value if value is None or not np.isfinite(value) else float(str(narrow(value))) for value in cells]


def _temporal_ids(values) -> list:
    """A timestamp, date, time or duration id as the text of its Python value (a datetime's, date's, time's,
    timedelta's), with nine fraction digits where a nanosecond unit's value has a part under a microsecond (pandas'
    Timestamp text). pyarrow reads a nanosecond unit through pandas where it is installed (a duration's text was
    '0 days 01:00:00', a time lost its nanoseconds) and fails for such a part without it: the ids would change
    when pandas is installed or removed. A value Python cannot hold (year 10000) is ``OutOfRange``, a bad row."""
    import pyarrow as pa

    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if isinstance(values.type, pa.BaseExtensionType):
        values = values.storage
    if getattr(values.type, "unit", None) != "ns":
        return [_id_text(value) for value in _python_values(values)]
    nanoseconds = values.cast(pa.int64()).to_pylist()
    microseconds = pa.array([None if n is None else n // 1000 for n in nanoseconds], _in_microseconds(values.type))
    return [_id_text(value, n % 1000 if n is not None else 0) for value, n in zip(_python_values(microseconds), nanoseconds)]


def _in_microseconds(column_type):
    import pyarrow as pa

    if pa.types.is_timestamp(column_type):
        return pa.timestamp("us", column_type.tz)
    return pa.time64("us") if pa.types.is_time(column_type) else pa.duration("us")


def _python_values(values) -> list:
    """The cells as Python values; one Python cannot hold as ``OutOfRange`` (``to_pylist`` raises for the batch)."""
    try:
        return values.to_pylist()
    except (OverflowError, ValueError):
        return [_python_value(scalar) for scalar in values]


def _python_value(scalar):
    try:
        return scalar.as_py()
    except (OverflowError, ValueError) as exc:
        return OutOfRange(f"id is a {scalar.type} value Python cannot hold ({exc})")


def _id_text(value, nanoseconds: int = 0):
    """The text of a datetime, time or timedelta id, with its ``nanoseconds`` (0-999) after its microseconds."""
    import datetime

    if value is None or isinstance(value, OutOfRange):
        return value
    if not nanoseconds:
        return str(value)
    if isinstance(value, datetime.timedelta):  # '-1 day, 23:59:59.999999' + '999'
        return f"{value}{'' if value.microseconds else '.000000'}{nanoseconds:03d}"
    naive = value.replace(tzinfo=None)  # a datetime or a time
    offset = str(value)[len(str(naive)):]  # '+00:00', '' where naive
    digits = naive.isoformat(" ", "microseconds") if isinstance(naive, datetime.datetime) else naive.isoformat("microseconds")
    return f"{digits}{nanoseconds:03d}{offset}"


class OutOfRange:
    """A temporal id cell that no Python value holds (a bad row, for the ``reason``)."""

    def __init__(self, reason: str):
        self.reason = reason


def _cell(scalar):
    import pyarrow as pa

    try:
        return scalar.as_py()
    except UnicodeDecodeError as exc:
        return InvalidUtf8(exc.start, scalar.cast(pa.large_binary()).as_py())


def _bad_id(path: Path, row: int, raw_id) -> Item | None:
    """The row as a bad row when its id cell cannot be an id (recorded with no id: ``Item.id``), else None."""
    if isinstance(raw_id, InvalidUtf8):
        return Item(raw_id.printable(), None, str(path), row, error=f"id is not valid UTF-8 (byte {raw_id.byte})")
    if isinstance(raw_id, OutOfRange):
        return Item(None, None, str(path), row, error=raw_id.reason)
    if problem := id_problem(raw_id):
        return Item(None, None, str(path), row, error=problem)
    return None


def _item(path: Path, row: int, item_id: str, text, check_text: bool = True) -> Item:
    source = str(path)
    if not check_text:
        return Item(item_id, None, source, row)
    if text is None:
        return Item(item_id, None, source, row, error="null text")
    if isinstance(text, InvalidUtf8):
        return Item(item_id, None, source, row, error=f"text is not valid UTF-8 (byte {text.byte})")
    if not isinstance(text, str):
        return Item(item_id, None, source, row, error=f"text is {type(text).__name__}, not a string")
    return Item(item_id, text, source, row)

