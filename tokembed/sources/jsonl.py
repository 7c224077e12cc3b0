"""JSONL reader: one JSON object per line, read line by line.

The image field may hold a path (relative to the JSONL file's folder), a ``data:image/...;base64,`` URI,
or the ``datasets`` Image struct ``{"bytes": <base64>, "path": ...}`` (JSON cannot hold raw bytes).
A field holding a PDF (the ``--pdf-column``, or an image field whose value is a PDF) becomes one item per
page (see ``pdf.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tokembed.errors import BadInputError
from tokembed.open_files import refuse_out_of_descriptors
from tokembed.sources.base import (Item, SourceOptions, columns_read, id_field_problem, id_problem, missing_columns,
                                   unicode_checked)
from tokembed.sources.chunks import chunk_size, chunked
from tokembed.sources.files import refuse_special_file

_MEDIA = "a path, a data URI or {bytes, path}"


def read_jsonl(path: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    from tokembed.sources.images import in_order

    refuse_special_file(path)
    items = _items(path, options, offset)
    image_rows = options.modality != "text"
    pixels = options.image_chunk_pixels
    return chunked(in_order(items, pixels) if image_rows else items, chunk_size(options, image_rows), pixels)  # images decode on threads


def _opened(path: Path):
    """The file, or exit 3 naming it (a dangling link, a file removed since the folder was walked)."""
    try:
        return open(path, "rb")
    except OSError as exc:
        refuse_out_of_descriptors(path, exc)
        raise BadInputError(f"{path}: not a readable JSONL file ({exc.strerror or exc})") from exc


def _items(path: Path, options: SourceOptions, offset: int) -> Iterator:
    """Items line by line; a record whose image field holds a PDF becomes one item per page; an image is
    decoded in the background (a future, see ``images.in_order``). A bad row's reason names its line."""
    from tokembed.sources.images import attach_image, in_background
    from tokembed.sources.pdf import pdf_in_value, row_pages

    row, number = -1, 0
    state = _FileState()
    with _opened(path) as handle:
        _refuse_utf16_or_32(path, handle)
        for raw in handle:  # not ``enumerate``: its reused result tuple would keep a huge line's bytes alive
            number += 1
            if not raw or raw.isspace():  # not ``strip()``: that copies the whole line
                continue
            row += 1
            line = _decoded(raw)
            if isinstance(line, _NotUtf8):
                yield _at_line(_not_utf8_item(raw, line, path, row, number, options, state), number)
                continue
            del raw  # a huge line is held once, as text, while it is parsed
            where = f"{path} line {number}"
            if options.pdf_column_given:
                yield from (_at_line(item, number) for item in _pdf_row(path, line, row, offset + row, options, state, where))
                continue
            item, image = _item(path, line, row, offset + row, options, state, where)
            del line
            if image is None:
                yield _at_line(item, number)
            elif pdf_in_value(image.value, path.parent) is not None:
                yield from (_at_line(page, number) for page in row_pages(item, image.value, path.parent, options))
            else:
                yield in_background(_image_at_line, number, attach_image, item, image.value, path.parent,
                                    options.max_image_pixels, image.either)
    if row >= 0 and not state.records:  # a JSON array, a compressed file under a .jsonl name: nothing to index
        raise _no_record(path, state)
    if state.records and state.lacking == state.records:
        raise _nothing_usable(path, state, options)


def _no_record(path: Path, state: _FileState) -> BadInputError:
    if state.other_encoding:  # JSON objects once their odd bytes are replaced: a cp1252 or Latin-1 export
        return BadInputError(f"{path}: the file is not UTF-8 ({state.other_encoding}), and JSON Lines is UTF-8",
                             hint="convert it: iconv -f CP1252 -t UTF-8 (or the encoding it was written in)")
    return BadInputError(f"{path}: no line is a JSON object (JSON Lines: one object per line, uncompressed)")


_EXPECTED = {"text": "a string", "image": _MEDIA, "PDF": _MEDIA, "video": _MEDIA}


def _nothing_usable(path: Path, state: _FileState, options: SourceOptions) -> BadInputError:
    """Exit 3 for a file whose every record lacks the field this run reads, or holds it in a type no row fits
    (as a Parquet column of that type): with --on-error skip the run would delete every row of the file."""
    if state.misfits:
        seen = "; ".join(f"{what} field {name!r} is {', '.join(types)}, not {_EXPECTED[what]}"
                         for (what, name), types in state.misfits.items())
        paragraphs = " (a list of paragraphs: join them into one string)" if "list" in state.misfits.get(
            ("text", options.text_column), {}) else ""
        return BadInputError(f"{path}: no record has a usable field: {seen} (in every record that has it): every "
                             "record would be a bad row", hint=f"write the field as expected where the file is written"
                             f"{paragraphs}")
    flags = ("--pdf-column" if options.pdf_column_given else "--video-column" if options.video_column_given
             else "--text-column / --image-column")
    return BadInputError(f"{path}: no record has what this run reads: {state.first_lack} (a renamed field? "
                         f"name it with {flags})")


def first_record_fields(path: Path) -> list[str] | None:
    """The fields of the file's first record (its first line that is a JSON object), or None: none is."""
    with _opened(path) as handle:
        _refuse_utf16_or_32(path, handle)
        for raw in handle:
            if raw and not raw.isspace() and not isinstance(line := _decoded(raw), _NotUtf8):
                record, _ = _parsed(line)
                if record is not None:
                    return list(record)
    return None


@dataclass
class _FileState:
    """What the records read so far say about the file: whether its first record had the id field, how many
    records (parsed JSON objects) lack the text / image / PDF / video field this run reads or hold it in a type no
    row fits (``misfits``: the types seen, by field), and where a line not UTF-8 was still a JSON object."""

    first_has_id: bool | None = None
    records: int = 0
    lacking: int = 0
    first_lack: str = ""
    misfits: dict = field(default_factory=dict)
    other_encoding: str = ""

    def lacks(self, problem: str) -> str:
        """Count a record without the field this run reads (a bad row; none with it is exit 3); returns ``problem``."""
        self.lacking += 1
        self.first_lack = self.first_lack or problem
        return problem

    def misfit(self, fields: list[tuple[str, str, Any]]) -> None:
        """Count a record whose every field read, ``(what, name, value)``, is of a type no row fits (as ``lacks``)."""
        self.lacking += 1
        for what, name, value in fields:
            self.misfits.setdefault((what, name), {})[type(value).__name__] = None


def _at_line(item: Item, number: int) -> Item:
    item = unicode_checked(item)  # here, so that a lone surrogate's reason names its line too
    return item if item.error is None else replace(item, error=f"line {number}: {item.error}")


def _image_at_line(number: int, attach, *args) -> Item:
    return _at_line(attach(*args), number)


@dataclass
class _Image:
    """A record's image field, still to decode; ``either``: the record's text alone would also do."""

    value: Any
    either: bool


def _refuse_utf16_or_32(path: Path, handle) -> None:
    """``BadInputError`` for a file in UTF-16 or UTF-32 (by its BOM or its first bytes' zeros, as ``json.loads``
    tells): its lines, split at the byte 0x0A, would be cut in the middle of characters and half read."""
    encoding = json.detect_encoding(handle.read(4))
    handle.seek(0)
    if encoding not in ("utf-8", "utf-8-sig"):
        raise BadInputError(f"{path}: the file is {encoding.upper()}, and JSON Lines is UTF-8",
                            hint=f"convert it: iconv -f {encoding.upper()} -t UTF-8")


class _NotUtf8(str):
    """Why a line is not UTF-8 (``_decoded``); ``byte``: the offset in the line of the first byte that does not decode."""

    byte: int = 0


def _decoded(raw: bytes) -> str:
    """The line as text, decoded as ``json.loads`` decodes UTF-8 bytes (a BOM dropped, a lone surrogate's bytes
    kept: "surrogatepass"), or a ``_NotUtf8`` naming the first byte that does not decode. (The file is UTF-8 or
    in an 8-bit encoding: ``_refuse_utf16_or_32``.)"""
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        return raw[bom:].decode("utf-8", "surrogatepass") if bom else raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        problem = _NotUtf8(f"not valid UTF-8 (byte {bom + exc.start} of the line)")
        problem.byte = bom + exc.start
        return problem


def _not_utf8_item(raw: bytes, problem: _NotUtf8, path: Path, row: int, number: int, options: SourceOptions,
                   state: _FileState) -> Item:
    """The bad row of a line that is not UTF-8, with its id where the file uses ids and the id reads the same with
    the odd bytes replaced; a line that is then a JSON object tells a file in another encoding (``_no_record``)."""
    record, _ = _parsed(raw.decode("utf-8", "replace"))
    if record is None:
        return Item(None, None, str(path), row, error=str(problem))
    state.other_encoding = state.other_encoding or f"line {number}, byte {problem.byte}"
    raw_id = record.get(options.id_column)
    readable = state.first_has_id and raw_id is not None and "\ufffd" not in str(raw_id) and not id_problem(raw_id)
    return Item(str(raw_id) if readable else None, None, str(path), row, error=str(problem))


class _Twice(dict):
    """A JSON object with a key given twice: ``twice`` names those keys (``json`` keeps the last value)."""

    twice: tuple = ()


def _object(pairs: list) -> dict:
    """``object_pairs_hook``: the object as ``json`` makes it, a ``_Twice`` where a key comes twice."""
    record = dict(pairs)
    if len(record) == len(pairs):
        return record
    seen: set = set()
    record = _Twice(record)
    record.twice = tuple(dict.fromkeys(key for key, _ in pairs if key in seen or seen.add(key)))
    return record


_DECODER = json.JSONDecoder(object_pairs_hook=_object)  # one for all lines: json.loads(hook=...) makes one per call


def _parsed(line: str) -> tuple[dict | None, str | None]:
    """The line's JSON object, or why it is none: bad JSON, nesting too deep for the parser, an integer past
    Python's digit limit, or another JSON value."""
    try:
        record = _DECODER.decode(line)
    except json.JSONDecodeError as exc:  # its "line 2" would be the line's own newline: say the column instead
        where = f"column {exc.colno}" if exc.lineno == 1 else "at the end of the line"
        return None, f"not valid JSON ({exc.msg}, {where})"
    except (ValueError, RecursionError) as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(record, dict):
        return None, "line is not a JSON object"
    return record, None


def _given_twice(record: dict, names: list[str]) -> str | None:
    """Why a record is a bad row when one of the fields ``names`` that this run reads, or a key of its object value
    (``{bytes, path}``), is given twice: which value is meant is ambiguous, as a Parquet column given twice is."""
    twice = [name for name in record.twice if name in names] if type(record) is _Twice else []
    for name in names:
        if type(value := record.get(name)) is _Twice:
            twice += [f"{name}.{key}" for key in value.twice]
    return f"field {', '.join(map(repr, twice))} given twice: which value is meant is ambiguous" if twice else None


def _record_id(record: dict, global_row: int, options: SourceOptions, state: _FileState,
               where: str) -> tuple[Any, str | None]:
    """(the record's id, or why it has none). Without the field the id is the row number, unless the file's first
    record had one: then a record without it is a bad row (its row number could be another record's id), as is,
    the other way round, a record with the field in a file whose first record had none (its rows are numbered:
    its id could be another row's number). An explicit ``--id-column`` that the file's first record lacks is
    exit 3 (past the first record: a bad row)."""
    has = options.id_column in record
    if options.id_column_given and not has and not state.first_has_id:
        raise BadInputError(f"{where}: no id field {options.id_column!r}")
    if state.first_has_id is None:
        state.first_has_id = has
    if problem := id_field_problem(has, state.first_has_id, options.id_column, "records are numbered by row"):
        return None, problem
    raw_id = record.get(options.id_column, global_row)
    return raw_id, id_problem(raw_id)


def _pdf_row(path: Path, line: str, row: int, global_row: int, options: SourceOptions, state: _FileState,
             where: str) -> Iterator[Item]:
    """A record of the ``--pdf-column``: one item per page of its PDF (a path, or ``{bytes: <base64>, path}``)."""
    from tokembed.sources.pdf import row_pages

    source = str(path)
    record, error = _parsed(line)
    if error is not None:
        yield Item(None, None, source, row, error=error)
        return
    state.records += 1
    raw_id, problem = _record_id_once(record, global_row, options, state, where)
    if problem:
        yield Item(None, None, source, row, error=problem)
        return
    item_id = str(raw_id)
    if options.pdf_column not in record:  # a bad row, as a record without the text field; no record with it: exit 3
        problem = state.lacks(f"no PDF field {options.pdf_column!r} (fields: {', '.join(record)})")
        yield Item(item_id, None, source, row, error=problem)
        return
    _count_misfits(record, [("PDF", options.pdf_column)], state)
    if problem := _given_twice(record, [options.pdf_column]):
        yield Item(item_id, None, source, row, error=problem)
        return
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


def _item(path: Path, line: str, row: int, global_row: int, options: SourceOptions, state: _FileState,
          where: str) -> tuple[Item, _Image | None]:
    """The record's item, and its image field when that is still to be decoded."""
    source = str(path)
    record, error = _parsed(line)
    if error is not None:
        return Item(None, None, source, row, error=error), None
    state.records += 1
    raw_id, problem = _record_id_once(record, global_row, options, state, where)
    if problem:
        return Item(None, None, source, row, error=problem), None
    if _video_field(record, options):
        from tokembed.sources.video import video_item

        if options.video_column not in record:  # a bad row, as a record without the image field; none with it: exit 3
            problem = state.lacks(f"no video field {options.video_column!r} (fields: {', '.join(record)})")
            return Item(str(raw_id), None, source, row, error=problem), None
        _count_misfits(record, [("video", options.video_column)], state)
        if problem := _given_twice(record, [options.video_column]):
            return Item(str(raw_id), None, source, row, error=problem), None
        return video_item(Item(str(raw_id), None, source, row), _json_bytes(record[options.video_column]), path.parent,
                          options), None
    if problem := missing_columns(list(record), options, what="field"):  # this record's: a bad row, as a null text is
        return Item(str(raw_id), None, source, row, error=state.lacks(problem)), None
    use_text, use_image = columns_read(list(record), options)
    read = [("text", options.text_column)] * use_text + [("image", options.image_column)] * use_image
    _count_misfits(record, read, state)
    if problem := _given_twice(record, [name for _, name in read]):
        return Item(str(raw_id), None, source, row, error=problem), None
    if use_text:
        item = _text_item(str(raw_id), source, row, record.get(options.text_column))
    else:
        item = Item(str(raw_id), None, source, row)
    if not use_image:
        return item, None
    from tokembed.sources.video import video_in_value, video_item

    value = _json_bytes(record.get(options.image_column))  # base64 decoded once, here
    if video_in_value(value, path.parent):  # an image field holding a video
        return video_item(item, value, path.parent, options), None
    return item, _Image(value, either=use_text)


def _record_id_once(record: dict, global_row: int, options: SourceOptions, state: _FileState,
                    where: str) -> tuple[Any, str | None]:
    """``_record_id``, or why there is none when the id field is given twice (which id is meant?)."""
    if type(record) is _Twice and options.id_column in record.twice:
        return None, _given_twice(record, [options.id_column])
    return _record_id(record, global_row, options, state, where)


_FITS = {"text": str, "image": (str, dict), "PDF": (str, dict), "video": (str, dict)}


def _count_misfits(record: dict, read: list[tuple[str, str]], state: _FileState) -> None:
    """Count the record in ``state.misfit`` when every field read, ``(what, name)``, holds a value of a type that
    no row fits (null is a row's own "null text", as in a Parquet column of strings)."""
    values = [(what, name, record[name]) for what, name in read]
    if values and all(value is not None and not isinstance(value, _FITS[what]) for what, _, value in values):
        state.misfit(values)


def _video_field(record: dict, options: SourceOptions) -> bool:
    """Read the video field: when ``--video-column`` is given, or for image models when the record has a video
    field and no image field (as for Parquet columns)."""
    if options.video_column_given:
        return True
    has_video = options.video_column in record and options.image_column not in record and not options.image_column_given
    return options.modality == "image" and has_video


def _text_item(item_id: str, source: str, row: int, text) -> Item:
    if text is None:
        return Item(item_id, None, source, row, error="null text")
    if not isinstance(text, str):
        return Item(item_id, None, source, row, error=f"text is {type(text).__name__}, not a string")
    return Item(item_id, text, source, row)
