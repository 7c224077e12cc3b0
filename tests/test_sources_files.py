"""Input files as the readers meet them: files that are not regular (named pipes), a file reached through two paths,
Parquet columns that cannot be read as asked (a name given twice, a type no row fits), ids that are no number,
row numbers across files, multi-page TIFFs and JSONL files that are not UTF-8."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import manifest, read_index, write_jsonl, write_parquet
from tokembed.errors import BadInputError
from tokembed.sources import SourceOptions, open_sources

BAD_INPUT, USAGE = 3, 2


def read_all(paths, **options):
    return [item for chunk in open_sources([Path(p) for p in paths], SourceOptions(**options)) for item in chunk]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def pipes(tmp_path):
    """``make(path)`` makes a named pipe. A reader that opens one blocks until a writer comes: the test fails after
    30 s instead of hanging, and every pipe is opened for writing at the end, so that a blocked reader thread wakes."""
    made = []

    def make(path: Path) -> Path:
        os.mkfifo(path)
        made.append(path)
        return path

    def hung(signum, frame):
        raise TimeoutError("a reader blocked opening a named pipe")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield make
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
    for path in made:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: no reader waits on it, as it should be
            pass


def test_a_named_pipe_in_a_folder_or_a_path_column_is_a_bad_row_never_opened(tmp_path, pipes):
    """``read_bytes`` on a pipe named ``pipe.txt`` blocked the run forever (text and image folders, PDFs, image paths
    in a Parquet column)."""
    docs, images = tmp_path / "docs", tmp_path / "images"
    docs.mkdir()
    images.mkdir()
    (docs / "a.txt").write_text("alpha")
    pipes(docs / "pipe.txt")
    pipes(docs / "pipe.pdf")
    (images / "a.png").write_bytes(png())
    pipes(images / "pipe.png")
    items = {item.id: item.error for item in read_all([docs])}
    assert items["a.txt"] is None
    assert items["pipe.txt"] == "not a regular file (a named pipe)" and "not a regular file" in items["pipe.pdf"]
    items = {item.id: item.error for item in read_all([images], modality="image")}
    assert items == {"a.png": None, "pipe.png": "not a regular file (a named pipe)"}
    table = images / "rows.parquet"
    pq.write_table(pa.table({"id": ["a", "p"], "image": ["a.png", "pipe.png"]}), table)
    items = {item.id: item.error for item in read_all([table], modality="image")}
    assert items == {"a": None, "p": "image file pipe.png: not a regular file (a named pipe)"}


def test_a_named_pipe_given_or_among_data_files_is_bad_input_naming_it(tmp_path, pipes):
    """Given directly, a pipe was "cannot list the folder (Not a directory)"; as a folder's ``.jsonl`` it hung."""
    given = pipes(tmp_path / "x.jsonl")
    with pytest.raises(BadInputError, match=r"x\.jsonl: not a regular file \(a named pipe\)"):
        read_all([given])
    folder = tmp_path / "parts"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"text": "x"}])
    pipes(folder / "b.jsonl")
    with pytest.raises(BadInputError, match=r"b\.jsonl: not a regular file"):
        read_all([folder])


def test_encode_skips_a_named_pipe_and_refuses_a_piped_parquet_file(cli, tmp_path, pipes):
    """The whole run (id column, progress total, journal) never opens one either."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("alpha")
    pipes(docs / "pipe.txt")
    out = tmp_path / "index"
    result = cli("encode", docs, "-o", out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert list(read_index(out)) == ["a.txt"]
    assert [entry["reason"] for entry in manifest(out)["skipped"]] == ["not a regular file (a named pipe)"]
    parts = tmp_path / "parts"
    parts.mkdir()
    write_parquet(parts / "a.parquet", [{"id": "a", "text": "x"}])
    pipes(parts / "b.parquet")
    result = cli("encode", parts, "-o", tmp_path / "other")
    assert result.exit_code == BAD_INPUT and "b.parquet: not a regular file" in result.stderr, result.output


def test_a_file_linked_in_its_own_folder_is_read_once_and_listed(cli, tmp_path):
    """``latest.parquet -> 2024-06.parquet`` beside its target read its rows twice (with row-number ids, silently)."""
    folder = tmp_path / "exports"
    folder.mkdir()
    write_parquet(folder / "2024-06.parquet", [{"text": "june"}, {"text": "july"}])
    (folder / "latest.parquet").symlink_to("2024-06.parquet")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "z.txt").write_text("zulu")
    (docs / "a_link.txt").symlink_to("z.txt")  # sorts first, and still renames nothing
    assert [item.id for item in read_all([folder])] == ["0", "1"]
    assert [item.id for item in read_all([docs])] == ["z.txt"]
    os.link(docs / "z.txt", docs / "y_hard.txt")  # a hard link: another own path of the file, first in path order
    assert [item.id for item in read_all([docs])] == ["y_hard.txt"]
    out = tmp_path / "index"
    result = cli("encode", folder, "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(read_index(out)) == ["0", "1"]
    assert manifest(out)["ignored"] == [f"{folder / 'latest.parquet'} (the same file as {folder / '2024-06.parquet'}, read once)"]


def test_a_file_reached_through_two_inputs_is_a_usage_error(cli, tmp_path):
    """``encode export.jsonl dir/`` with ``dir/latest.jsonl -> ../export.jsonl`` read its rows twice, as giving the
    file and its folder does (which is exit 2)."""
    export = write_jsonl(tmp_path / "export.jsonl", [{"text": "hello"}, {"text": "world"}])
    folder = tmp_path / "dir"
    folder.mkdir()
    write_jsonl(folder / "own.jsonl", [{"text": "own"}])
    (folder / "latest.jsonl").symlink_to(export)
    result = cli("encode", export, folder, "-o", tmp_path / "index")
    assert result.exit_code == USAGE, result.output
    assert f"{folder / 'latest.jsonl'} (in input {folder}) is the same file as input {export}" in result.stderr
    assert "read twice" in result.stderr


@pytest.mark.parametrize("column", ["text", "id"])
def test_a_column_the_file_has_twice_is_bad_input_naming_it(tmp_path, column):
    """Legal in Arrow and Parquet, it was a KeyError traceback (exit 1)."""
    path = tmp_path / "dup.parquet"
    names = ["id", "text", column]
    pq.write_table(pa.Table.from_arrays([pa.array(["a", "b"]), pa.array(["one", "two"]), pa.array(["c", "d"])], names=names), path)
    with pytest.raises(BadInputError, match=rf"dup\.parquet: column '{column}' appears 2 times .*ambiguous"):
        read_all([path])


def test_an_image_column_the_file_has_twice_is_bad_input(cli, tmp_path):
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array([png()]), pa.array([png()])], names=["image", "image"]), path)
    with pytest.raises(BadInputError, match=r"column 'image' appears 2 times"):
        read_all([path], modality="image")
    result = cli("encode", tmp_path / "dup.parquet", "-o", tmp_path / "index")  # a text run: the text column is missing
    assert result.exit_code == BAD_INPUT and "Traceback" not in result.output


@pytest.mark.parametrize("texts, type_name", [
    (pa.array([b"x y", b"z"]), "binary"),
    (pa.array([1, 2]), "int64"),
    (pa.array([["x"], ["z"]]), "list<element: string>"),
    (pa.array([{"t": "x"}, {"t": "z"}]), "struct<t: string>"),
])
def test_a_text_column_of_another_type_is_bad_input_even_when_skipping(cli, tmp_path, texts, type_name):
    """Every row was a bad row, the hint said --on-error skip, and with it the nightly run deleted the whole index
    (exit 0): like a missing column, the file is refused."""
    path = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "x y"}, {"id": "b", "text": "z"}])
    out = tmp_path / "index"
    assert cli("encode", path, "-o", out).exit_code == 0
    pq.write_table(pa.table({"id": ["a", "b"], "text": texts}), path)
    result = cli("encode", path, "-o", out, "--on-error", "skip")
    assert result.exit_code == BAD_INPUT, result.output
    assert f"c.parquet: text column 'text' is of type {type_name}, not a string" in result.stderr
    assert "--on-error skip" not in result.stderr
    assert sorted(read_index(out)) == ["a", "b"]


@pytest.mark.parametrize("ids, type_name", [
    (pa.array([b"a", b"b"]), "binary"),
    (pa.array([["a"], ["b"]]), "list<element: string>"),
    (pa.array([{"k": "a"}, {"k": "b"}]), "struct<k: string>"),
])
def test_an_id_column_of_a_type_no_row_fits_is_bad_input_even_when_skipping(cli, tmp_path, ids, type_name):
    """Binary ids (old Hive/Impala writers), lists and structs made every row a bad row: --on-error skip committed an
    empty index (exit 0, every row deleted). Like a text column of such a type, the file is refused."""
    path = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "x y"}, {"id": "b", "text": "z"}])
    out = tmp_path / "index"
    assert cli("encode", path, "-o", out).exit_code == 0
    pq.write_table(pa.table({"id": ids, "text": ["x y", "z"]}), path)
    result = cli("encode", path, "-o", out, "--on-error", "skip")
    assert result.exit_code == BAD_INPUT, result.output
    assert f"c.parquet: id column 'id' is of type {type_name}, not a string or a number" in result.stderr
    assert sorted(read_index(out)) == ["a", "b"]


@pytest.mark.parametrize("ids", [pa.array([b"a"], pa.large_binary()), pa.array([b"a"], pa.binary(1)),
                                 pa.array([b"a"]).dictionary_encode(), pa.array([True]),
                                 pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())), pa.array([None], pa.null())])
def test_every_id_type_no_row_fits_is_refused(tmp_path, ids):
    pq.write_table(pa.table({"id": ids, "text": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(BadInputError, match=r"c\.parquet: id column 'id' is of type .*every row would be a bad row"):
        read_all([tmp_path / "c.parquet"])


def test_ids_of_numbers_dates_and_dictionaries_are_read(tmp_path):
    import datetime

    for ids in (pa.array([1]), pa.array([1.5]), pa.array([datetime.date(2024, 1, 2)]), pa.array(["a"]).dictionary_encode()):
        pq.write_table(pa.table({"id": ids, "text": ["x"]}), tmp_path / "c.parquet")
        assert [item.error for item in read_all([tmp_path / "c.parquet"])] == [None]


def test_an_all_null_text_column_is_refused_when_the_file_has_rows(tmp_path):
    """Every row a "null text": --on-error skip would delete the file's rows. A file without rows (pandas types an
    empty object column null) and an auto run's text column beside an image column are read."""
    nulls = pa.array([None, None], pa.null())
    pq.write_table(pa.table({"id": ["a", "b"], "text": nulls}), tmp_path / "c.parquet")
    with pytest.raises(BadInputError, match=r"c\.parquet: text column 'text' is of type null \(every cell null\)"):
        read_all([tmp_path / "c.parquet"])
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.null())}), tmp_path / "c.parquet")
    assert read_all([tmp_path / "c.parquet"]) == []
    pq.write_table(pa.table({"id": ["a", "b"], "text": nulls, "image": [png(), png()]}), tmp_path / "c.parquet")
    assert [item.error for item in read_all([tmp_path / "c.parquet"], modality="auto")] == [None, None]


def test_text_columns_of_every_string_type_are_read_and_an_image_column_of_numbers_is_refused(tmp_path):
    for texts in (pa.array(["x", None]), pa.array(["x", None], pa.large_string()), pa.array(["x", None], pa.string_view()),
                  pa.array(["x", None]).dictionary_encode()):
        pq.write_table(pa.table({"id": ["a", "b"], "text": texts}), tmp_path / "c.parquet")
        assert [item.error for item in read_all([tmp_path / "c.parquet"])][1] == "null text"
    pq.write_table(pa.table({"id": ["a"], "image": [7]}), tmp_path / "i.parquet")
    with pytest.raises(BadInputError, match=r"i\.parquet: image column 'image' is of type int64, not bytes, a path or"):
        read_all([tmp_path / "i.parquet"], modality="image")


def test_row_number_ids_count_rows_not_the_pages_of_a_pdf_cell(tmp_path):
    """README: "the row number, from 0 across files"; the pages of a 3-page PDF cell moved the next file's ids on
    by 3 (ids 0#page=1..3, 1, 4, 5)."""
    from pdfs import text_pdf

    pdf = text_pdf(tmp_path / "three.pdf", ["one", "two", "three"]).read_bytes()
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(pa.table({"pdf": [pdf, text_pdf(tmp_path / "one.pdf", ["four"]).read_bytes()]}), folder / "a.parquet")
    pq.write_table(pa.table({"pdf": [pdf, pdf]}), folder / "b.parquet")
    ids = [item.id for item in read_all([folder], pdf_column="pdf", pdf_column_given=True, chunk_rows=2)]
    assert ids == ["0#page=1", "0#page=2", "0#page=3", "1#page=1", *(f"2#page={n}" for n in (1, 2, 3)),
                   *(f"3#page={n}" for n in (1, 2, 3))]


def test_an_id_that_is_no_finite_number_is_a_bad_row(tmp_path):
    """JSON's NaN, Infinity and 1e400 (infinity) became the ids 'nan' and 'inf'; a Parquet NaN id too."""
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": NaN, "text": "x"}\n{"id": 1e400, "text": "y"}\n{"id": -Infinity, "text": "z"}\n{"id": 1.5, "text": "w"}\n')
    assert [item.error for item in read_all([path])] == [
        "line 1: id is nan, not a finite number", "line 2: id is inf, not a finite number",
        "line 3: id is -inf, not a finite number", None]
    pq.write_table(pa.table({"id": [float("nan"), 2.0], "text": ["x", "y"]}), tmp_path / "c.parquet")
    assert [(item.id, item.error) for item in read_all([tmp_path / "c.parquet"])] == [
        (None, "id is nan, not a finite number"), ("2.0", None)]


def test_a_float32_id_is_the_shortest_text_of_its_own_precision(tmp_path):
    """0.1 as float32 was '0.10000000149011612' (its float64 widening); JSONL's 0.1 is '0.1'."""
    ids = pa.array([0.1, 1e10, 2.5, None, float("nan")], pa.float32())
    pq.write_table(pa.table({"id": ids, "text": ["a", "b", "c", "d", "e"]}), tmp_path / "c.parquet")
    items = read_all([tmp_path / "c.parquet"])
    assert [item.id for item in items[:3]] == ["0.1", "10000000000.0", "2.5"]
    assert [item.error for item in items[3:]] == ["null id", "id is nan, not a finite number"]
    assert [item.id for item in read_all([write_jsonl(tmp_path / "c.jsonl", [{"id": 0.1, "text": "a"}])])] == ["0.1"]


def test_a_multi_page_tiff_is_read_for_its_first_page_with_a_warning(tmp_path, caplog):
    """A scanned document lost its pages after the first unsaid."""
    folder = tmp_path / "scans"
    folder.mkdir()
    pages = [Image.new("RGB", (40, 50), color) for color in ("red", "green", "blue")]
    pages[0].save(folder / "scan.tiff", save_all=True, append_images=pages[1:])
    pages[0].save(folder / "one.tiff")
    with caplog.at_level(logging.WARNING, logger="tokembed"):
        items = read_all([folder], modality="image")
    assert [item.id for item in items] == ["one.tiff", "scan.tiff"] and items[1].image.getpixel((0, 0)) == (255, 0, 0)
    assert [record.getMessage() for record in caplog.records] == [
        f"{folder / 'scan.tiff'}: a TIFF of 3 pages: only page 1 is read (save the pages as a PDF, or one image each, "
        "to index them)"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_utf16_or_utf32_jsonl_file_is_bad_input_not_half_read(tmp_path, encoding):
    """Split at the byte 0x0A, a UTF-16 file's lines were cut inside characters: some rows read, others bad."""
    path = tmp_path / "c.jsonl"
    path.write_bytes("".join(json.dumps({"id": f"d{i}", "text": "x"}) + "\n" for i in range(3)).encode(encoding))
    with pytest.raises(BadInputError, match=rf"c\.jsonl: the file is {encoding.upper()}, and JSON Lines is UTF-8"):
        read_all([path])
