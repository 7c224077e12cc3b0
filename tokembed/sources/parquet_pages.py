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

import re
import struct
from collections.abc import Iterator

HUGE_PAGE_BYTES = 16 << 20  # a row group whose text column has a page this large (uncompressed) is read here

_CODECS = {"UNCOMPRESSED": None, "SNAPPY": "snappy", "GZIP": "gzip", "ZSTD": "zstd", "BROTLI": "brotli"}
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_PLAIN, _PLAIN_DICTIONARY, _RLE, _RLE_DICTIONARY = 0, 2, 3, 8
_I32, _BOOL = (5,), (1, 2)  # Thrift compact types: a struct field's boolean is its type, true or false
# The page header's fields checked here and their Thrift types (a dict: a struct and its fields); other fields
# are skipped whatever their type. A field checked of another type is a corrupt header, and so is a struct
# without one of its i32s: each is a required field in Parquet's definition, which pyarrow refuses a header without.
_PAGE_HEADER = {
    1: _I32, 2: _I32, 3: _I32,  # page type, uncompressed and compressed sizes
    5: {1: _I32, 2: _I32, 3: _I32, 4: _I32},  # data page: values, encoding, level encodings
    7: {1: _I32, 2: _I32},  # dictionary page: values, encoding
    8: {1: _I32, 2: _I32, 3: _I32, 4: _I32, 5: _I32, 6: _I32, 7: _BOOL},  # v2: values, nulls, rows, encoding, level lengths
}


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
    start, end = _chunk_range(handle, chunk)
    with open(path, "rb") as stream:
        stream.seek(start)
        while stream.tell() < end:
            try:
                header = _read_header(stream, end)
            except (ValueError, RecursionError):  # a corrupt header: pyarrow reads the row group and names what is wrong
                return False
            if header[2] > HUGE_PAGE_BYTES:
                return True
            if header[3] <= 0:
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
    start, end = _chunk_range(handle, chunk)
    with open(path, "rb") as stream:
        stream.seek(start)
        try:
            yield from _chunk_cells(stream, end, chunk.num_values, codec, nullable, chunk.total_uncompressed_size)
        except (ValueError, IndexError, KeyError, TypeError, RecursionError, struct.error) as exc:
            raise CorruptPage(f"a corrupt page in column {column!r}: {exc}") from exc


def _chunk_range(handle, chunk) -> tuple[int, int]:
    """Where the chunk's pages lie in the file, as pyarrow reads them: parquet-mr 1.2.8 and older left the
    dictionary page's header out of the chunk's size (PARQUET-816), so pyarrow reads up to 100 bytes more."""
    start = min(offset for offset in (chunk.dictionary_page_offset, chunk.data_page_offset) if offset)
    end = start + chunk.total_compressed_size
    version = re.match(r"parquet-mr version (\d+)\.(\d+)\.(\d+)", handle.metadata.created_by or "")
    if version and tuple(map(int, version.groups())) < (1, 2, 9):
        end += 100
    return start, end


def _column_index(handle, column: str) -> int | None:
    """The leaf of the top-level column ``column``: its path is its name alone, where a struct ``a``'s field
    ``b`` has the dotted path of a top-level column named "a.b"."""
    for index in range(len(handle.schema)):
        described = handle.schema.column(index)
        if described.path == column == described.name:
            return index
    return None


def _readable(handle, index: int, chunk) -> bool:
    described = handle.schema.column(index)
    return (
        described.physical_type == "BYTE_ARRAY" and described.logical_type.type == "STRING"
        and described.max_repetition_level == 0 and described.max_definition_level <= 1
        and chunk.compression in _CODECS
        and set(chunk.encodings) <= {"PLAIN", "RLE", "PLAIN_DICTIONARY", "RLE_DICTIONARY"}
    )


def _chunk_cells(stream, end: int, num_values: int, codec: str | None, nullable: bool, largest: int) -> Iterator[str | None]:
    """The cells of the chunk whose pages end at byte ``end``; ``largest``: its uncompressed size, which no page
    of it exceeds."""
    dictionary: list[str] | None = None
    done = 0
    while done < num_values:
        header = _read_header(stream, end)
        kind, size, compressed_size = header[1], header[2], header[3]
        if not (0 <= size <= largest and 0 <= compressed_size <= end - stream.tell()):
            raise ValueError(f"a page header's sizes ({size}, {compressed_size} compressed) exceed its chunk's")
        if kind == _DICTIONARY_PAGE:
            dictionary = _dictionary(_decompressed(_read(stream, compressed_size), size, codec), header[7])
        elif kind in (_DATA_PAGE, _DATA_PAGE_V2):
            count = header[5 if kind == _DATA_PAGE else 8][1]
            if not 0 <= count <= num_values - done:
                raise ValueError(f"a page of {count} values where {num_values - done} are left in its chunk")
            read = _page_v1 if kind == _DATA_PAGE else _page_v2
            cells = read(_read(stream, compressed_size), size, codec, nullable, header, dictionary)
            done += len(cells)
            cells.reverse()
            while cells:  # handed on without a reference kept here: a huge cell is held by its item alone
                yield cells.pop()
        else:  # an index page, or one this reader does not know: skip it
            stream.seek(compressed_size, 1)


def _read(stream, size: int) -> bytes:
    """``size`` bytes: fewer (the file cut short) is a corrupt page, not a page of what follows it."""
    raw = stream.read(size)
    if len(raw) != size:
        raise ValueError(f"the file ends {size - len(raw)} bytes into a page")
    return raw


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
    if not 0 <= length <= len(page) - 4:
        raise ValueError(f"definition levels of {length} bytes in a page of {len(page)}")
    present = _present(page, 4, 4 + length, count)
    return _page_cells(page, 4 + length, present, encoding, dictionary)


def _page_v2(raw: bytes, size: int, codec, nullable: bool, header: dict, dictionary) -> list:
    fields = header[8]
    count, encoding, levels, repeats = fields[1], fields[4], fields[5], fields[6]
    if not (0 <= levels and 0 <= repeats and repeats + levels <= min(len(raw), size)):
        raise ValueError(f"levels of {repeats} + {levels} bytes in a page of {len(raw)}")
    present = _present(raw, repeats, repeats + levels, count) if nullable else [True] * count
    values = memoryview(raw)[repeats + levels :]
    if fields.get(7, True):
        values = _decompressed(values, size - repeats - levels, codec)
    del raw
    return _page_cells(values, 0, present, encoding, dictionary)


def _present(data, start: int, end: int, count: int) -> list[bool]:
    """Which of ``count`` cells are there (definition level 1) or null (0), from their levels in ``data[start:end]``."""
    levels = _hybrid(data, start, end, 1, count)
    if any(level > 1 for level in levels):  # a run's value is a byte: pyarrow refuses levels over the column's
        raise ValueError(f"a definition level of {max(levels)} in a column whose levels are 0 and 1")
    return [level == 1 for level in levels]


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
        if header >> 1 == 0:  # pyarrow's decoder stops at a run of no values, short of the page's
            raise ValueError("a run of no levels or dictionary keys")
        wanted = count - len(values)  # a corrupt run length allocates no more than the page's values
        if header & 1:  # bit-packed: groups of 8 values in ``width`` bytes, least significant bit first
            groups = header >> 1
            _within(position + groups * width, end)  # a run is whole groups, all written (pyarrow checks it too)
            for group in range(min(groups, -(-wanted // 8))):  # a group at a time: linear in the run's length
                start = position + group * width
                bits = int.from_bytes(bytes(data[start : start + width]), "little")
                values.extend((bits >> (width * i)) & mask for i in range(8))
            position += groups * width
        else:
            _within(position + size, end)
            value = int.from_bytes(bytes(data[position : position + size]), "little")
            values.extend([value] * min(header >> 1, wanted))
            position += size
    if len(values) < count:
        raise ValueError(f"{len(values)} of {count} levels or dictionary keys in a page")
    return values[:count]


def _within(position: int, end: int) -> None:
    if position > end:
        raise ValueError(f"a run of levels or dictionary keys ends {position - end} bytes past its data")


def _read_header(stream, end: int) -> dict:
    """The page header at the stream's position, which ends by byte ``end``: a Thrift compact-protocol struct
    as {field id: value}, nested structs as dicts; the fields read here of the types they have (``_PAGE_HEADER``)."""
    return _Compact(stream, end).struct(_PAGE_HEADER)


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
    """Just enough of Thrift's compact protocol to read a Parquet page header from a stream, up to byte ``end``:
    every read past it, or past the end of the file, is a corrupt header."""

    def __init__(self, stream, end: int) -> None:
        self.stream = stream
        self.end = end

    def read(self, size: int) -> bytes:
        if size > self.end - self.stream.tell():
            raise ValueError("a page header runs past its column chunk")
        read = self.stream.read(size)
        if len(read) != size:
            raise ValueError("the file ends inside a page header")
        return read

    def byte(self) -> int:
        return self.read(1)[0]

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

    def struct(self, expected: dict | None = None) -> dict:
        """``expected``: {field id: its types, or a dict for a struct's fields}; a field of another type is corrupt."""
        fields, last, expected = {}, 0, expected or {}
        while (head := self.byte()) != 0:
            kind, delta = head & 0x0F, head >> 4
            last = last + delta if delta else self.integer()
            wanted = expected.get(last)
            if wanted is not None and kind not in (wanted if isinstance(wanted, tuple) else (12,)):
                raise ValueError(f"a page header's field {last} is of Thrift type {kind}")
            fields[last] = self.struct(wanted) if isinstance(wanted, dict) else self.value(kind)
        if missing := [field for field, kinds in expected.items() if kinds == _I32 and field not in fields]:
            raise ValueError(f"a page header without its field {missing[0]}")
        return fields

    def elements(self, size: int, kinds: tuple[int, ...]) -> range:
        """The indices of ``size`` elements, each at least a byte (a boolean there takes a byte of its own), a
        double 8: a corrupt size larger than the bytes left is refused before any is read."""
        least = sum(8 if kind == 7 else 1 for kind in kinds)
        if size * least > self.end - self.stream.tell():
            raise ValueError(f"a page header's container of {size} elements runs past its column chunk")
        return range(size)

    def element(self, kind: int):
        return self.byte() == 1 if kind in (1, 2) else self.value(kind)

    def value(self, kind: int):
        if kind in (1, 2):  # a struct field's boolean lives in its type
            return kind == 1
        if kind == 3:
            return self.byte()
        if kind in (4, 5, 6):
            return self.integer()
        if kind == 7:
            return self.read(8)
        if kind == 8:
            return self.read(self.varint())
        if kind in (9, 10):
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            return [self.element(head & 0x0F) for _ in self.elements(size, (head & 0x0F,))]
        if kind == 11:
            size = self.varint()
            types = self.byte() if size else 0
            return {self.element(types >> 4): self.element(types & 0x0F) for _ in self.elements(size, (types >> 4, types & 0x0F))}
        if kind == 12:
            return self.struct()
        raise ValueError(f"a page header with Thrift type {kind}")
