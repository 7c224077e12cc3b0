"""A huge text column read page by page, one cell at a time: what pyarrow's reader cannot do.

pyarrow decodes a whole column chunk into Arrow arrays before a row can be read: a 100 MB cell costs the
compressed chunk, the decompressed page, the column's buffers and then the Python string (~+400 MB). Here a
row group whose text column is huge is read straight from its pages: a page is read and decompressed, its
cells become strings, and the page is dropped before they are handed on (~+200 MB for a 100 MB cell: the
decompressed page and the string, the floor for any reader of a compressed cell). Only the plain layout pyarrow, pandas, Polars and Spark write is read
here: a flat, optional or required UTF-8 ``BYTE_ARRAY`` column, PLAIN or dictionary encoded, data pages v1
or v2, uncompressed, snappy, gzip, zstd or brotli (pyarrow names both of Parquet's LZ4 codecs "LZ4", so
those stay with pyarrow). Anything else is left to pyarrow (``is_huge_text``
is False for it).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

HUGE_PAGE_BYTES = 16 << 20  # a row group whose text column has a page this large (uncompressed) is read here

_CODECS = {"UNCOMPRESSED": None, "SNAPPY": "snappy", "GZIP": "gzip", "ZSTD": "zstd", "BROTLI": "brotli"}
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_PLAIN, _PLAIN_DICTIONARY, _RLE, _RLE_DICTIONARY = 0, 2, 3, 8


class Unsupported(Exception):
    """This column chunk is not in a layout read here."""


class CorruptPage(Exception):
    """A page that does not decode as its header says."""


class InvalidUtf8:
    """A string cell whose bytes are not UTF-8 (a bad row, not a bad file); ``raw``: the bytes, where kept."""

    def __init__(self, byte: int, raw: bytes = b"") -> None:
        self.byte = byte
        self.raw = raw

    def printable(self) -> str:
        return self.raw.decode("utf-8", "backslashreplace")


def is_huge_text(path, handle, group: int, column: str) -> bool:
    """Whether ``column`` of row group ``group`` holds a huge cell (a page over ``HUGE_PAGE_BYTES``), in a
    layout read here. Writers cut pages at ~1 MB, so only a huge cell makes a huge page; a column of many
    small cells stays with pyarrow, which decodes them faster than Python."""
    index = _column_index(handle, column)
    if index is None:
        return False
    chunk = handle.metadata.row_group(group).column(index)
    if chunk.total_uncompressed_size <= HUGE_PAGE_BYTES or not _readable(handle, index, chunk):
        return False
    with open(path, "rb") as stream:
        stream.seek(_start(chunk))
        end = _start(chunk) + chunk.total_compressed_size
        while stream.tell() < end:
            try:
                header = _read_header(stream)
            except (ValueError, RecursionError):  # a corrupt header: pyarrow reads the row group and names what is wrong
                return False
            if header.get(2, 0) > HUGE_PAGE_BYTES:
                return True
            if header.get(3, 0) <= 0:
                return False
            stream.seek(header[3], 1)
    return False


def text_cells(path, handle, group: int, column: str) -> Iterator[str | InvalidUtf8 | None]:
    """The cells of ``column`` in row group ``group``, in order: strings, None for null, ``InvalidUtf8``.

    Raises ``Unsupported`` for a layout not read here (``is_huge_text`` checks the file's metadata for it
    first), ``CorruptPage`` for a page that does not decode."""
    index = _column_index(handle, column)
    chunk = handle.metadata.row_group(group).column(index)
    if not _readable(handle, index, chunk):
        raise Unsupported(f"column {column!r} of row group {group}")
    nullable = handle.schema.column(index).max_definition_level > 0
    codec = _CODECS[chunk.compression]
    with open(path, "rb") as stream:
        stream.seek(_start(chunk))
        try:
            sizes = (chunk.total_uncompressed_size, chunk.total_compressed_size)
            yield from _chunk_cells(stream, chunk.num_values, codec, nullable, sizes)
        except (ValueError, IndexError, KeyError, TypeError, RecursionError, struct.error) as exc:
            raise CorruptPage(f"a corrupt page in column {column!r}: {exc}") from exc


def _start(chunk) -> int:
    return min(offset for offset in (chunk.dictionary_page_offset, chunk.data_page_offset) if offset)


def _column_index(handle, column: str) -> int | None:
    names = [handle.schema.column(i).path for i in range(len(handle.schema))]
    return names.index(column) if column in names else None


def _readable(handle, index: int, chunk) -> bool:
    described = handle.schema.column(index)
    return (
        described.physical_type == "BYTE_ARRAY" and described.logical_type.type == "STRING"
        and described.max_repetition_level == 0 and described.max_definition_level <= 1
        and chunk.compression in _CODECS
        and set(chunk.encodings) <= {"PLAIN", "RLE", "PLAIN_DICTIONARY", "RLE_DICTIONARY"}
    )


def _chunk_cells(stream, num_values: int, codec: str | None, nullable: bool, limits: tuple[int, int]) -> Iterator[str | None]:
    """The chunk's cells; ``limits``: its sizes (uncompressed, compressed), which no page of it exceeds."""
    dictionary: list[str] | None = None
    done = 0
    while done < num_values:
        header = _read_header(stream)
        kind, size, compressed_size = header.get(1), header.get(2), header.get(3)
        if not (isinstance(size, int) and isinstance(compressed_size, int)
                and 0 <= size <= limits[0] and 0 <= compressed_size <= limits[1]):
            raise ValueError(f"a page header's sizes ({size!r}, {compressed_size!r} compressed) exceed its chunk's")
        if kind == _DICTIONARY_PAGE:
            dictionary = _dictionary(_decompressed(stream.read(compressed_size), size, codec), header[7])
        elif kind in (_DATA_PAGE, _DATA_PAGE_V2):
            count = header[5 if kind == _DATA_PAGE else 8][1]
            if not 0 <= count <= num_values - done:
                raise ValueError(f"a page of {count} values where {num_values - done} are left in its chunk")
            read = _page_v1 if kind == _DATA_PAGE else _page_v2
            cells = read(stream.read(compressed_size), size, codec, nullable, header, dictionary)
            done += len(cells)
            cells.reverse()
            while cells:  # handed on without a reference kept here: a huge cell is held by its item alone
                yield cells.pop()
        else:  # an index page, or one this reader does not know: skip it
            stream.seek(compressed_size, 1)


def _dictionary(page, fields: dict) -> list[str]:
    count, encoding = fields[1], fields[2]
    if encoding not in (_PLAIN, _PLAIN_DICTIONARY):
        raise Unsupported(f"dictionary page encoding {encoding}")
    return [_utf8(page, start, length) for start, length in _plain_cells(page, 0, count)]


def _page_v1(raw: bytes, size: int, codec, nullable: bool, header: dict, dictionary) -> list:
    fields = header[5]
    count, encoding = fields[1], fields[2]
    page = _decompressed(raw, size, codec)
    del raw
    if not nullable:
        return _page_cells(page, 0, [True] * count, encoding, dictionary)
    if fields[3] != _RLE:
        raise Unsupported(f"definition level encoding {fields[3]}")
    length = struct.unpack_from("<i", page, 0)[0]
    present = [level == 1 for level in _hybrid(page, 4, 4 + length, 1, count)]
    return _page_cells(page, 4 + length, present, encoding, dictionary)


def _page_v2(raw: bytes, size: int, codec, nullable: bool, header: dict, dictionary) -> list:
    fields = header[8]
    count, encoding, levels, repeats = fields[1], fields[4], fields[5], fields[6]
    present = [level == 1 for level in _hybrid(raw, repeats, repeats + levels, 1, count)] if nullable else [True] * count
    values = memoryview(raw)[repeats + levels :]
    if fields.get(7, True):
        values = _decompressed(values, size - repeats - levels, codec)
    del raw
    return _page_cells(values, 0, present, encoding, dictionary)


def _page_cells(page, position: int, present: list[bool], encoding: int, dictionary) -> list[str | None]:
    stored = sum(present)
    if encoding == _PLAIN:
        spans = iter(list(_plain_cells(page, position, stored)))
        return [_utf8(page, *next(spans)) if there else None for there in present]
    if encoding in (_PLAIN_DICTIONARY, _RLE_DICTIONARY):
        if dictionary is None:
            raise ValueError("a dictionary-encoded page without a dictionary page")
        keys = iter(_hybrid(page, position + 1, len(page), page[position], stored))
        return [dictionary[next(keys)] if there else None for there in present]
    raise Unsupported(f"data page encoding {encoding}")


def _plain_cells(page, position: int, count: int) -> Iterator[tuple[int, int]]:
    for _ in range(count):
        length = struct.unpack_from("<i", page, position)[0]
        if length < 0 or position + 4 + length > len(page):
            raise ValueError(f"a PLAIN value of {length} bytes runs past its page")
        yield position + 4, length
        position += 4 + length


def _utf8(page, start: int, length: int) -> str | InvalidUtf8:
    try:
        return str(memoryview(page)[start : start + length], "utf-8")
    except UnicodeDecodeError as exc:
        return InvalidUtf8(exc.start)


def _decompressed(raw: bytes, size: int, codec: str | None):
    if codec is None:
        return raw
    import pyarrow as pa

    return memoryview(pa.decompress(raw, decompressed_size=size, codec=codec))


def _hybrid(data, start: int, end: int, width: int, count: int) -> list[int]:
    """``count`` values of Parquet's RLE / bit-packed hybrid encoding in ``data[start:end]``."""
    values: list[int] = []
    position, mask, size = start, (1 << width) - 1, (width + 7) // 8
    while len(values) < count and position < end:
        header, position = _varint(data, position)
        wanted = count - len(values)  # a corrupt run length allocates no more than the page's values
        if header & 1:  # bit-packed: groups of 8 values in ``width`` bytes, least significant bit first
            groups = header >> 1
            for group in range(min(groups, -(-wanted // 8))):  # a group at a time: linear in the run's length
                start = position + group * width
                bits = int.from_bytes(bytes(data[start : start + width]), "little")
                values.extend((bits >> (width * i)) & mask for i in range(8))
            position += groups * width
        else:
            value = int.from_bytes(bytes(data[position : position + size]), "little")
            values.extend([value] * min(header >> 1, wanted))
            position += size
    if len(values) < count:
        raise ValueError(f"{len(values)} of {count} levels or dictionary keys in a page")
    return values[:count]


def _read_header(stream) -> dict:
    """A Thrift compact-protocol struct (the page header) as {field id: value}; nested structs as dicts."""
    return _Compact(stream).struct()


def _varint(data, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


class _Compact:
    """Just enough of Thrift's compact protocol to read a Parquet page header from a stream."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.size = os.fstat(stream.fileno()).st_size

    def byte(self) -> int:
        read = self.stream.read(1)
        if not read:
            raise ValueError("the file ends inside a page header")
        return read[0]

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    def integer(self) -> int:
        raw = self.varint()
        return (raw >> 1) ^ -(raw & 1)

    def struct(self) -> dict:
        fields, last = {}, 0
        while (head := self.byte()) != 0:
            kind, delta = head & 0x0F, head >> 4
            last = last + delta if delta else self.integer()
            fields[last] = self.value(kind)
        return fields

    def element(self, kind: int):
        """A list's, set's or map's element: a boolean there takes a byte of its own (so every element reads
        at least one byte, and a corrupt size runs into the end of the file instead of looping)."""
        return self.byte() == 1 if kind in (1, 2) else self.value(kind)

    def value(self, kind: int):
        if kind in (1, 2):  # a struct field's boolean lives in its type
            return kind == 1
        if kind == 3:
            return self.byte()
        if kind in (4, 5, 6):
            return self.integer()
        if kind == 7:
            return self.stream.read(8)
        if kind == 8:
            length = self.varint()
            if length > self.size - self.stream.tell():
                raise ValueError("a page header's string runs past the end of the file")
            return self.stream.read(length)
        if kind in (9, 10):
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            return [self.element(head & 0x0F) for _ in range(size)]
        if kind == 11:
            size = self.varint()
            types = self.byte() if size else 0
            return {self.element(types >> 4): self.element(types & 0x0F) for _ in range(size)}
        if kind == 12:
            return self.struct()
        raise ValueError(f"a page header with Thrift type {kind}")
