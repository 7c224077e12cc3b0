"""JSONL reader: one JSON object per line, read line by line.

The image field may hold a path (relative to the JSONL file's folder), a ``data:image/...;base64,`` URI,
or the ``datasets`` Image struct ``{"bytes": <base64>, "path": ...}`` (JSON cannot hold raw bytes).
A field holding a PDF (the ``--pdf-column``, or an image field whose value is a PDF) becomes one item per
page (see ``pdf.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from tokembed.errors import BadInputError
from tokembed.sources.base import Item, SourceOptions, chunk_size, chunked, wanted_columns


def read_jsonl(path: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    return chunked(_items(path, options, offset), chunk_size(options, options.modality != "text"))


def _items(path: Path, options: SourceOptions, offset: int) -> Iterator[Item]:
    from tokembed.sources.pdf import pdf_in_value, row_pages

    row = -1
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw or raw.isspace():  # not ``strip()``: that copies the whole line
                continue
            row += 1
            line = _decoded(raw)
            del raw  # a huge line is held once, as text, while it is parsed
            if options.pdf_column_given:
                yield from _pdf_row(path, line, row, offset + row, options)
                continue
            item = _item(path, line, row, offset + row, options)
            # a PDF never decodes as an image: only a row whose image failed may hold one
            value = _json_bytes(_record_value(line, options.image_column)) if item.error and options.modality != "text" else None
            del line
            if value is not None and pdf_in_value(value, path.parent) is not None:
                yield from row_pages(replace(item, error=None), value, path.parent, options)
            else:
                yield item


def _decoded(raw: bytes) -> str | bytes:
    """The line as text, decoded as ``json.loads`` decodes bytes (UTF-8, -16 or -32, by the first bytes); the
    bytes themselves when they do not decode, so that ``json.loads`` reports it as for any bad line."""
    try:
        return raw.decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError:
        return raw


def _parsed(line: str | bytes) -> tuple[dict | None, str | None]:
    """The line's JSON object, or why it is none: bad JSON (bytes that do not decode included), nesting too
    deep for the parser, an integer past Python's digit limit, or another JSON value."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, f"not valid JSON ({exc})"
    if not isinstance(record, dict):
        return None, "line is not a JSON object"
    return record, None


def _record_value(line: str | bytes, field: str):
    record, _ = _parsed(line)
    return None if record is None else record.get(field)


def _pdf_row(path: Path, line: str | bytes, row: int, global_row: int, options: SourceOptions) -> Iterator[Item]:
    """A record of the ``--pdf-column``: one item per page of its PDF (a path, or ``{bytes: <base64>, path}``)."""
    from tokembed.sources.pdf import row_pages

    source = str(path)
    record, error = _parsed(line)
    if error is not None:
        yield Item(str(global_row), None, source, row, error=error)
        return
    if options.pdf_column not in record:
        raise BadInputError(f"{source} row {row}: no PDF field {options.pdf_column!r} (fields: {', '.join(record)})")
    item_id = str(record.get(options.id_column, global_row))
    yield from row_pages(Item(item_id, None, source, row), _json_bytes(record[options.pdf_column]), path.parent, options)


def _json_bytes(value):
    """JSON holds bytes as base64 text: a ``{bytes, path}`` struct's bytes decoded for the PDF check
    (left as they are when they are not base64; the reader then names the value)."""
    if isinstance(value, dict) and isinstance(value.get("bytes"), str):
        import base64
        import binascii

        try:
            return {**value, "bytes": base64.b64decode(value["bytes"], validate=True)}
        except (binascii.Error, ValueError):
            return value
    return value


def _item(path: Path, line: str | bytes, row: int, global_row: int, options: SourceOptions) -> Item:
    source = str(path)
    record, error = _parsed(line)
    if error is not None:
        return Item(str(global_row), None, source, row, error=error)
    if options.id_column_given and options.id_column not in record:
        raise BadInputError(f"{source} row {row}: no id field {options.id_column!r}")
    raw_id = record.get(options.id_column, global_row)
    if _video_field(record, options, f"{source} row {row}"):
        from tokembed.sources.video import attach_video

        return attach_video(Item(str(raw_id), None, source, row), _json_bytes(record.get(options.video_column)), path.parent)
    use_text, use_image = wanted_columns(f"{source} row {row}", list(record), options, what="field")
    if use_text:
        item = _text_item(str(raw_id), source, row, record.get(options.text_column))
    else:
        item = Item(str(raw_id), None, source, row)
    if use_image:
        from tokembed.sources.images import attach_image
        from tokembed.sources.video import attach_video, video_in_value

        value = record.get(options.image_column)
        if video_in_value(_json_bytes(value), path.parent):  # an image field holding a video
            return attach_video(item, _json_bytes(value), path.parent)
        item = attach_image(item, value, path.parent, options.max_image_pixels, either=use_text)
    return item


def _video_field(record: dict, options: SourceOptions, where: str) -> bool:
    """Read the video field: when ``--video-column`` is given, or for image models when the record has a video
    field and no image field (as for Parquet columns)."""
    if options.video_column_given:
        if options.video_column not in record:
            raise BadInputError(f"{where}: no video field {options.video_column!r} (fields: {', '.join(record)})")
        return True
    has_video = options.video_column in record and options.image_column not in record and not options.image_column_given
    return options.modality == "image" and has_video


def _text_item(item_id: str, source: str, row: int, text) -> Item:
    if text is None:
        return Item(item_id, None, source, row, error="null text")
    if not isinstance(text, str):
        return Item(item_id, None, source, row, error=f"text is {type(text).__name__}, not a string")
    return Item(item_id, text, source, row)
