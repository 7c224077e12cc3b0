"""A huge text cell of a Parquet file is read page by page (``sources/parquet_pages.py``): the same cells as
pyarrow for every layout it reads (codecs, dictionary or plain, page versions 1 and 2, nulls, many pages and
row groups, files written by pyarrow, Polars and DuckDB); other layouts stay with pyarrow; the reader's items
are those of the pyarrow path; a corrupt page names the file."""

from __future__ import annotations

import itertools
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tokembed.sources.parquet_pages as pages
from tokembed.errors import BadInputError
from tokembed.sources import SourceOptions, open_sources
from tokembed.sources.parquet_pages import InvalidUtf8, is_huge_text, text_cells

WORDS = ["alpha", "naïve", "日本語", "😀", "", "x" * 300, "e\u0301"]


def random_texts(seed: int, count: int, nulls: bool) -> list[str | None]:
    rng = random.Random(seed)
    return [
        None if nulls and rng.random() < 0.2 else " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 20)))
        for _ in range(count)
    ]


def cells_of(path, column: str = "text") -> list:
    handle = pq.ParquetFile(path)
    return [cell for group in range(handle.num_row_groups) for cell in text_cells(path, handle, group, column)]


def pyarrow_cells(path, column: str = "text") -> list:
    return pq.read_table(path, columns=[column]).column(column).to_pylist()


LAYOUTS = list(itertools.product(
    ["NONE", "snappy", "gzip", "zstd", "brotli"], [True, False], ["1.0", "2.0"], [True, False], [False, True], [64, 1 << 20]
))


@pytest.mark.parametrize("codec, dictionary, version, nulls, large, page_size", LAYOUTS)
def test_cells_equal_pyarrows_in_every_layout_read_here(tmp_path, codec, dictionary, version, nulls, large, page_size):
    texts = random_texts(LAYOUTS.index((codec, dictionary, version, nulls, large, page_size)), 450, nulls)
    table = pa.table({"id": range(len(texts)), "text": pa.array(texts, pa.large_string() if large else pa.string())})
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, compression=codec, use_dictionary=dictionary, data_page_version=version,
                   data_page_size=page_size, row_group_size=200)
    assert cells_of(path) == pyarrow_cells(path) == texts


def test_a_required_column_and_a_dictionary_that_fell_back_to_plain(tmp_path):
    """A non-nullable column has no definition levels; a dictionary over its size limit leaves later pages PLAIN."""
    texts = random_texts(7, 3000, nulls=False) + ["big " * 300_000]
    schema = pa.schema([pa.field("text", pa.string(), nullable=False)])
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": texts}, schema=schema), path, dictionary_pagesize_limit=2048, data_page_size=4096)
    encodings = pq.ParquetFile(path).metadata.row_group(0).column(0).encodings
    assert "PLAIN" in encodings and "RLE_DICTIONARY" in encodings
    assert cells_of(path) == texts


@pytest.mark.parametrize("writer", ["polars", "duckdb"])
def test_files_of_other_writers(tmp_path, writer):
    texts = random_texts(3, 2000, nulls=True)
    texts[5] = "big " * 200_000
    path = tmp_path / "t.parquet"
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})
    if writer == "polars":
        pl = pytest.importorskip("polars")  # a test extra: installed by .ci/run
        pl.from_arrow(table).write_parquet(path, compression="zstd")
    else:
        duckdb = pytest.importorskip("duckdb")
        connection = duckdb.connect()
        connection.register("texts", table)
        connection.execute(f"COPY texts TO '{path}' (FORMAT parquet)")
    assert cells_of(path) == texts


def test_a_cell_that_is_not_utf8_is_a_bad_cell_not_a_bad_file(tmp_path):
    raw = pa.array([b"fine", b"\xff\xfe broken", None, "ok".encode()], pa.binary()).view(pa.string())
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": raw}), path)
    cells = cells_of(path)
    assert [cells[0], cells[2], cells[3]] == ["fine", None, "ok"]
    assert isinstance(cells[1], InvalidUtf8) and cells[1].byte == 0


@pytest.mark.parametrize("kind", ["lz4", "delta", "binary", "list"])
def test_other_layouts_stay_with_pyarrow(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(pages, "HUGE_PAGE_BYTES", 10)
    path = tmp_path / "t.parquet"
    texts = ["some words here"] * 50
    column = {"binary": pa.array([t.encode() for t in texts]), "list": pa.array([[t] for t in texts])}.get(kind, texts)
    options = {"lz4": {"compression": "lz4"}, "delta": {"use_dictionary": False, "column_encoding": {"text": "DELTA_LENGTH_BYTE_ARRAY"}}}
    pq.write_table(pa.table({"text": column}), path, **options.get(kind, {}))
    assert not is_huge_text(path, pq.ParquetFile(path), 0, "text")


def test_only_a_huge_page_makes_a_row_group_huge(tmp_path):
    """Many small cells (pages cut at ~1 MB) stay with pyarrow, which decodes them faster; one cell over the
    page limit sends its row group here."""
    small = tmp_path / "small.parquet"
    pq.write_table(pa.table({"text": ["a few words " * 10] * 200_000}), small, use_dictionary=False)
    assert pq.ParquetFile(small).metadata.row_group(0).column(0).total_uncompressed_size > pages.HUGE_PAGE_BYTES
    assert not is_huge_text(small, pq.ParquetFile(small), 0, "text")
    huge = tmp_path / "huge.parquet"
    pq.write_table(pa.table({"text": ["short", "word " * (pages.HUGE_PAGE_BYTES // 5 + 1)]}), huge)
    assert is_huge_text(huge, pq.ParquetFile(huge), 0, "text")


def read_items(path, **options):
    return [(i.id, i.text, i.source, i.row, i.error) for chunk in open_sources([path], SourceOptions(chunk_rows=7, **options)) for i in chunk]


@pytest.mark.parametrize("with_ids", [True, False])
def test_the_reader_gives_the_items_of_the_pyarrow_path(tmp_path, monkeypatch, with_ids):
    """Row groups read page by page and row groups read by pyarrow, mixed in one file: the same ids, texts,
    rows and bad-row errors (null, not UTF-8) as reading all of it with pyarrow."""
    texts = pa.array([t.encode() if t is not None else None for t in random_texts(11, 120, nulls=True)], pa.binary())
    texts = pa.concat_arrays([texts, pa.array([b"\xc3 cut"], pa.binary())]).view(pa.string())
    columns = {"id": [f"d{i}" for i in range(len(texts))], "text": texts} if with_ids else {"text": texts}
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=30, data_page_size=256)
    with_pyarrow = read_items(path)
    paged = []
    monkeypatch.setattr(pages, "text_cells", lambda *args: paged.append(args[2]) or text_cells(*args))
    monkeypatch.setattr("tokembed.sources.parquet.text_cells", pages.text_cells)
    monkeypatch.setattr(pages, "HUGE_PAGE_BYTES", 600)  # some row groups have a page over it, some do not
    assert read_items(path) == with_pyarrow
    assert 0 < len(paged) < pq.ParquetFile(path).num_row_groups
    assert {error for *_, error in with_pyarrow} == {None, "null text", "text is not valid UTF-8 (byte 0)"}


def test_a_corrupt_page_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(pages, "HUGE_PAGE_BYTES", 100)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["word " * 400] * 3}), path, compression="NONE", use_dictionary=False)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)
    data = bytearray(path.read_bytes())
    first_length = data.index((2000).to_bytes(4, "little"), chunk.data_page_offset)
    data[first_length : first_length + 4] = (1 << 30).to_bytes(4, "little")  # a PLAIN length runs past its page
    path.write_bytes(bytes(data))
    with pytest.raises(BadInputError, match=r"t\.parquet: cannot read row group after row 0 \(a corrupt page"):
        read_items(path)


def test_a_corrupt_page_header_leaves_the_row_group_to_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setattr(pages, "HUGE_PAGE_BYTES", 100)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["word " * 400] * 3}), path, compression="NONE", use_dictionary=False)
    offset = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 12] = b"\x00" * 12  # the header's first byte ends it at once: no page size in it
    path.write_bytes(bytes(data))
    assert not is_huge_text(path, pq.ParquetFile(path), 0, "text")
    with pytest.raises(BadInputError, match=r"t\.parquet: cannot read row group after row 0"):
        read_items(path)


def test_an_incompressible_cell_whose_page_grows_when_compressed(tmp_path):
    """snappy makes random text a little larger: a page's compressed size may exceed the chunk's uncompressed size."""
    rng = random.Random(0)
    text = "".join(chr(rng.randrange(33, 0x2FF)) for _ in range(200_000))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": [text]}), path, use_dictionary=False)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(0)
    assert chunk.total_compressed_size > chunk.total_uncompressed_size
    assert cells_of(path) == [text]


def test_corrupt_bytes_anywhere_in_the_pages_give_a_bad_input_error_or_the_cells(tmp_path, monkeypatch):
    """Random bytes over page headers and data (fixed seed): the reader names the file, or reads what is there;
    it never raises anything else, nor allocates what a corrupt header claims."""
    monkeypatch.setattr(pages, "HUGE_PAGE_BYTES", 100)
    base = tmp_path / "base.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(40)], "text": [f"word {i} " * 300 for i in range(40)]}), base, row_group_size=10)
    data, footer = base.read_bytes(), pq.ParquetFile(base).metadata.serialized_size
    rng, path, outcomes = random.Random(0), tmp_path / "t.parquet", {"read": 0, "named": 0}
    for _ in range(150):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            corrupt[rng.randrange(4, len(data) - footer - 8)] = rng.randrange(256)
        path.write_bytes(bytes(corrupt))
        try:
            read_items(path)
            outcomes["read"] += 1
        except BadInputError as exc:
            assert "t.parquet" in str(exc)
            outcomes["named"] += 1
    assert outcomes["read"] and outcomes["named"], outcomes


def test_pages_with_fewer_cells_than_rows_are_an_error_not_lost_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(pages, "HUGE_PAGE_BYTES", 100)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["word " * 400] * 3}), path)
    monkeypatch.setattr("tokembed.sources.parquet.text_cells", lambda *args: itertools.islice(text_cells(*args), 2))
    with pytest.raises(BadInputError, match="fewer cells than rows"):
        read_items(path)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_the_hybrid_decoder_on_long_runs_and_lying_run_lengths():
    """One bit-packed run of 100,000 dictionary keys (writers are allowed runs that long) decodes exactly; a
    corrupt run length of 2**40 yields only the page's values instead of allocating them all."""
    from tokembed.sources.parquet_pages import _hybrid

    rng, width = random.Random(1), 17
    keys = [rng.randrange(1 << width) for _ in range(100_000)]
    packed = b"".join(
        sum(key << (width * i) for i, key in enumerate(keys[start : start + 8])).to_bytes(width, "little")
        for start in range(0, len(keys), 8)
    )
    data = _varint((len(keys) // 8) << 1 | 1) + packed
    assert _hybrid(memoryview(data), 0, len(data), width, len(keys)) == keys
    lying = _varint((1 << 40) << 1) + (5).to_bytes(3, "little")  # an RLE run of 2**40 fives
    assert _hybrid(lying, 0, len(lying), width, 10) == [5] * 10


def test_a_header_claiming_a_huge_container_runs_into_the_end_of_the_file(tmp_path):
    """A map of 2**40 booleans in a field not read here: refused before any element is read."""
    from tokembed.sources.parquet_pages import _read_header

    path = tmp_path / "header.bin"
    path.write_bytes(bytes([0x9B]) + _varint(1 << 40) + bytes([0x11, 0x01, 0x02]))  # field 9: map<bool, bool>
    with open(path, "rb") as stream, pytest.raises(ValueError, match="runs past its column chunk"):
        _read_header(stream, path.stat().st_size)


@pytest.fixture
def alarm():
    """A hang fails the test: SIGALRM after 5 seconds."""
    import signal

    def hang(*_):
        raise TimeoutError("still reading after 5 s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_header_claiming_a_huge_list_of_doubles_is_refused_at_once(tmp_path, monkeypatch, alarm):
    """A list of 2**31-1 doubles (8 bytes each, where a short read at the end of the file gave b"" forever): as
    the page type, a field of the wrong type; in a field not read here, a list larger than the bytes left."""
    from tokembed.sources.parquet_pages import _read_header

    monkeypatch.setattr(pages, "HUGE_PAGE_BYTES", 100)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(5)] + ["word " * 400]}), path, use_dictionary=False)
    offset = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 7] = bytes([0x19, 0xF7, 0xFF, 0xFF, 0xFF, 0xFF, 0x07])  # field 1: list<double> of 2**31-1
    path.write_bytes(bytes(data))
    assert not is_huge_text(path, pq.ParquetFile(path), 0, "text")
    with pytest.raises(BadInputError, match=r"t\.parquet: cannot read row group after row 0"):
        read_items(path)
    header = tmp_path / "header.bin"
    header.write_bytes(bytes([0x49, 0xF7, 0xFF, 0xFF, 0xFF, 0xFF, 0x07]) + bytes(100))  # field 4 (crc, not read here)
    with open(header, "rb") as stream, pytest.raises(ValueError, match="runs past its column chunk"):
        _read_header(stream, header.stat().st_size)


@pytest.mark.parametrize("head", [0x28, 0x14], ids=["size as binary", "page type as i16"])
def test_a_page_header_field_of_another_type_leaves_the_row_group_to_pyarrow(tmp_path, monkeypatch, head):
    """One corrupt byte: the page type (an i32) becomes field 2, the page's size, as binary; or the page type as
    an i16. The header is corrupt (no TypeError comparing bytes to a size): pyarrow reads the row group and
    names what is wrong."""
    monkeypatch.setattr(pages, "HUGE_PAGE_BYTES", 100)
    path = tmp_path / "t.parquet"
    texts = [f"row {i} hello world" for i in range(50)] + ["word " * 400]
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(51)], "text": texts}), path, use_dictionary=False)
    offset = pq.ParquetFile(path).metadata.row_group(0).column(1).data_page_offset
    data = bytearray(path.read_bytes())
    assert data[offset] == 0x15  # field 1 (page type), i32
    data[offset] = head
    path.write_bytes(bytes(data))
    assert not is_huge_text(path, pq.ParquetFile(path), 0, "text")
    with pytest.raises(BadInputError, match=r"t\.parquet: cannot read row group after row 0"):
        read_items(path)
    with open(path, "rb") as stream, pytest.raises(ValueError, match="field . is of Thrift type"):
        stream.seek(offset)
        pages._read_header(stream, path.stat().st_size)


def test_a_top_level_column_named_like_a_structs_field(tmp_path, monkeypatch):
    """A column "a.b" beside a struct "a" with a field "b": both are the Parquet path "a.b"; the column read is
    the top-level one, as pyarrow reads it, not the struct's field (whose huge cell made it read here)."""
    monkeypatch.setattr(pages, "HUGE_PAGE_BYTES", 100)
    inner = pa.struct([pa.field("b", pa.string())])
    schema = pa.schema([pa.field("a", inner, nullable=False), pa.field("a.b", pa.string()), pa.field("id", pa.string())])
    table = pa.table([pa.array([{"b": "wrong " * 400}, {"b": "also wrong"}], inner),
                      pa.array(["right one", "right " * 300]), pa.array(["d0", "d1"])], schema=schema)
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    assert [text for _, text, *_ in read_items(path, text_column="a.b")] == pyarrow_cells(path, "a.b")
    assert cells_of(path, "a.b") == ["right one", "right " * 300]
    assert pages._column_index(pq.ParquetFile(path), "a") is None  # a struct: left to pyarrow


def test_a_chunk_cut_short_is_a_corrupt_file_not_a_null_text(tmp_path, monkeypatch):
    """The last column chunk loses 5 bytes, the footer intact: its last page reads the footer's first bytes,
    whose bit-packed run of definition levels declares more bytes than the page's levels hold. pyarrow refuses
    the file; so does the reader, instead of a "null text" row that --on-error skip would drop."""
    monkeypatch.setattr(pages, "HUGE_PAGE_BYTES", 100)
    base, path = tmp_path / "base.parquet", tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["short one", "short two", "wörd " * 400]}), base,
                   compression="snappy", data_page_version="2.0", row_group_size=2, write_page_index=False)
    data, footer = base.read_bytes(), pq.ParquetFile(base).metadata.serialized_size + 8
    path.write_bytes(data[: len(data) - footer - 5] + data[len(data) - footer :])
    with pytest.raises(OSError, match="def levels do not match"):
        pq.read_table(path)
    with pytest.raises(BadInputError, match=r"t\.parquet: cannot read row group after row 2 \(a corrupt page"):
        read_items(path)  # an error for the file, which --on-error skip does not skip
    from tokembed.sources.parquet_pages import _hybrid

    with pytest.raises(ValueError, match="past its data"):  # 10 groups of one byte declared, 1 byte there
        _hybrid(bytes([0x15, 0x04]), 0, 2, 1, 1)
    with pytest.raises(ValueError, match="a run of no levels"):  # where pyarrow's decoder stops: a run of none
        _hybrid(bytes([0x00, 0x00, 0x30, 0x01]), 0, 4, 1, 24)


def test_a_definition_level_out_of_range_is_a_corrupt_page_not_a_null(tmp_path, monkeypatch):
    """An RLE run of definition levels whose value byte reads 142 (a column's levels are 0 and 1): pyarrow refuses
    the page, and so does the reader, instead of reading the cells as nulls."""
    monkeypatch.setattr(pages, "HUGE_PAGE_BYTES", 100)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["word " * 400] * 2}), path, compression="NONE", data_page_version="2.0", use_dictionary=False)
    data = bytearray(path.read_bytes())
    offset = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    levels = data.index(b"\x04\x01" + (2000).to_bytes(4, "little"), offset)  # a run of 2 levels of 1, the first value
    data[levels + 1] = 142
    path.write_bytes(bytes(data))
    with pytest.raises(OSError, match="Malformed levels"):
        pq.read_table(path)
    with pytest.raises(BadInputError, match=r"t\.parquet: cannot read row group after row 0 \(a corrupt page.*definition level of 142"):
        read_items(path)
