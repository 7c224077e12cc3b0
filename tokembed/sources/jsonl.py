"""JSONL reader: one JSON object per line, read line by line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from tokembed.errors import BadInputError
from tokembed.sources.base import Item, SourceOptions, chunked


def read_jsonl(path: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    return chunked(_items(path, options, offset), options.chunk_rows)


def _items(path: Path, options: SourceOptions, offset: int) -> Iterator[Item]:
    source = str(path)
    row = -1
    with open(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            row += 1
            yield _item(source, line, row, offset + row, options)


def _item(source: str, line: bytes, row: int, global_row: int, options: SourceOptions) -> Item:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Item(str(global_row), None, source, row, error=f"not valid JSON ({exc})")
    if not isinstance(record, dict):
        return Item(str(global_row), None, source, row, error="line is not a JSON object")
    if options.id_column_given and options.id_column not in record:
        raise BadInputError(f"{source} row {row}: no id field {options.id_column!r}")
    raw_id = record.get(options.id_column, global_row)
    if options.text_column not in record:
        raise BadInputError(f"{source} row {row}: no text field {options.text_column!r} (fields: {', '.join(record)})")
    text = record[options.text_column]
    if text is None:
        return Item(str(raw_id), None, source, row, error="null text")
    if not isinstance(text, str):
        return Item(str(raw_id), None, source, row, error=f"text is {type(text).__name__}, not a string")
    return Item(str(raw_id), text, source, row)
