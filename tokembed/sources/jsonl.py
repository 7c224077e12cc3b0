"""JSONL reader: one JSON object per line, read line by line.

The image field may hold a path (relative to the JSONL file's folder), a ``data:image/...;base64,`` URI,
or the ``datasets`` Image struct ``{"bytes": <base64>, "path": ...}`` (JSON cannot hold raw bytes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tokembed.errors import BadInputError
from tokembed.sources.base import Item, SourceOptions, chunk_size, chunked, wanted_columns


def read_jsonl(path: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    return chunked(_items(path, options, offset), chunk_size(options, options.modality != "text"))


def _items(path: Path, options: SourceOptions, offset: int) -> Iterator[Item]:
    row = -1
    with open(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            row += 1
            yield _item(path, line, row, offset + row, options)


def _item(path: Path, line: bytes, row: int, global_row: int, options: SourceOptions) -> Item:
    source = str(path)
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Item(str(global_row), None, source, row, error=f"not valid JSON ({exc})")
    if not isinstance(record, dict):
        return Item(str(global_row), None, source, row, error="line is not a JSON object")
    if options.id_column_given and options.id_column not in record:
        raise BadInputError(f"{source} row {row}: no id field {options.id_column!r}")
    raw_id = record.get(options.id_column, global_row)
    use_text, use_image = wanted_columns(f"{source} row {row}", list(record), options, what="field")
    if use_text:
        item = _text_item(str(raw_id), source, row, record.get(options.text_column))
    else:
        item = Item(str(raw_id), None, source, row)
    if use_image:
        from tokembed.sources.images import attach_image

        item = attach_image(item, record.get(options.image_column), path.parent, options.max_image_pixels, either=use_text)
    return item


def _text_item(item_id: str, source: str, row: int, text) -> Item:
    if text is None:
        return Item(item_id, None, source, row, error="null text")
    if not isinstance(text, str):
        return Item(item_id, None, source, row, error=f"text is {type(text).__name__}, not a string")
    return Item(item_id, text, source, row)
