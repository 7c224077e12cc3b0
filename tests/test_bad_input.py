"""Bad input: a message naming the file/row and the reason, the documented exit code, and no index or
the previous index untouched."""

from __future__ import annotations

import json

import pytest

from helpers import manifest, read_index, write_parquet

BAD_INPUT, MODEL_ERROR = 3, 4


@pytest.fixture
def good_index(cli, tmp_path):
    corpus = write_parquet(tmp_path / "good.parquet", [{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}])
    out = tmp_path / "index"
    assert cli("encode", corpus, "-o", out).exit_code == 0
    return out


def assert_untouched(out, before_manifest, before_rows):
    assert (out / "manifest.json").read_text() == before_manifest
    assert read_index(out).keys() == before_rows.keys()
    listed = {shard["file"].split("/")[-1] for shard in manifest(out)["shards"]}
    assert {p.name for p in (out / "data").iterdir()} == listed  # no orphan shard of the failed run


def run_bad(cli, out, *args):
    before = (out / "manifest.json").read_text(), read_index(out)
    result = cli("encode", *args, "-o", out)
    assert_untouched(out, *before)
    return result


def test_missing_column(cli, good_index, tmp_path):
    bad = write_parquet(tmp_path / "bad.parquet", [{"id": "a", "body": "x"}])
    result = run_bad(cli, good_index, bad)
    assert result.exit_code == BAD_INPUT
    assert "bad.parquet: no text column 'text'" in result.stderr


def test_truncated_parquet(cli, good_index, tmp_path):
    bad = write_parquet(tmp_path / "bad.parquet", [{"id": str(i), "text": "word " * 40} for i in range(200)])
    bad.write_bytes(bad.read_bytes()[:-100])
    result = run_bad(cli, good_index, bad)
    assert result.exit_code == BAD_INPUT and "bad.parquet" in result.stderr


def test_null_text_fails_naming_row_and_id(cli, good_index, tmp_path):
    bad = write_parquet(tmp_path / "bad.parquet", [{"id": "x", "text": "fine"}, {"id": "y", "text": None}])
    result = run_bad(cli, good_index, bad)
    assert result.exit_code == BAD_INPUT
    assert "bad.parquet row 1 (id 'y'): null text" in result.stderr


def test_null_text_skip_records_it(cli, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "x", "text": "fine"}, {"id": "y", "text": None}])
    out = tmp_path / "index"
    result = cli("encode", corpus, "-o", out, "--on-error", "skip", "--log-format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["skipped"] == 1
    assert list(read_index(out)) == ["x"]
    (skipped,) = manifest(out)["skipped"]
    assert skipped["id"] == "y" and skipped["reason"] == "null text" and skipped["source"].endswith("c.parquet")


def test_non_utf8_text_file(cli, good_index, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine")
    (folder / "latin1.txt").write_bytes("café".encode("latin-1"))
    result = run_bad(cli, good_index, folder)
    assert result.exit_code == BAD_INPUT
    assert "latin1.txt" in result.stderr and "not valid UTF-8" in result.stderr


def test_an_ignored_file_whose_name_is_not_utf8_is_listed_escaped(cli, tmp_path):
    """A folder holding a Latin-1-named .docx (an SMB share, an old zip) crashed every run at the commit: its name
    went into the manifest's ignored list, which JSON cannot hold (exit 1, a traceback)."""
    import os

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("hello world")
    (folder / os.fsdecode(b"r\xe9sum\xe9.docx")).write_text("x")
    out = tmp_path / "index"
    result = cli("encode", folder, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert list(read_index(out)) == ["a.txt"]
    assert manifest(out)["ignored"] == [str(folder / "r\\udce9sum\\udce9.docx")]


def test_lone_surrogate_and_invalid_utf8_cells_are_bad_rows_not_crashes(cli, good_index, tmp_path):
    """JSON's "\\ud800" escape decodes to a lone surrogate, which no tokenizer takes (it stopped the run with a
    TypeError from the tokenizer); a Parquet string cell whose bytes are not UTF-8 stopped it with a
    UnicodeDecodeError. Both are bad rows now: named under --on-error fail, recorded under skip."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"id": "x", "text": "fine"}\n{"id": "y", "text": "caf\\ud800e"}\n', encoding="utf-8")
    result = run_bad(cli, good_index, lines)
    assert result.exit_code == BAD_INPUT
    assert "bad.jsonl row 1 (id 'y'): line 2: text is not valid Unicode (a lone surrogate, U+D800, at character 3)" in result.stderr
    cells = tmp_path / "bad.parquet"
    texts = pa.array([b"fine", b"caf\xe9"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"id": ["p", "z"], "text": texts}), cells)
    result = run_bad(cli, good_index, cells)
    assert result.exit_code == BAD_INPUT
    assert "bad.parquet row 1 (id 'z'): text is not valid UTF-8 (byte 3)" in result.stderr
    out = tmp_path / "skipped"
    assert cli("encode", lines, cells, "-o", out, "--on-error", "skip").exit_code == 0
    assert sorted(read_index(out)) == ["p", "x"]
    assert sorted(entry["id"] for entry in manifest(out)["skipped"]) == ["y", "z"]


def test_json_the_parser_gives_up_on_is_a_bad_row(cli, tmp_path):
    """An integer past Python's 4,300-digit limit (a ValueError) and nesting too deep for the parser (a
    RecursionError) are not JSONDecodeErrors: they stopped the run with a traceback."""
    lines = tmp_path / "c.jsonl"
    lines.write_text('{"id": "x", "text": "fine"}\n{"id": ' + "9" * 5000 + ', "text": "a"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    out = tmp_path / "index"
    assert cli("encode", lines, "-o", out, "--on-error", "skip").exit_code == 0
    assert list(read_index(out)) == ["x"]
    reasons = [entry["reason"] for entry in manifest(out)["skipped"]]
    assert [reason.split(" (")[0] for reason in reasons] == ["line 2: not valid JSON", "line 3: not valid JSON"], reasons
    assert "4300 digits" in reasons[0] and "recursion" in reasons[1]


def test_duplicate_id_names_both_rows(cli, good_index, tmp_path):
    bad = write_parquet(tmp_path / "bad.parquet", [{"id": "a", "text": "1"}, {"id": "b", "text": "2"}, {"id": "a", "text": "3"}])
    result = run_bad(cli, good_index, bad)
    assert result.exit_code == BAD_INPUT
    assert "duplicate id 'a'" in result.stderr
    assert "bad.parquet row 0" in result.stderr and "bad.parquet row 2" in result.stderr


def test_unknown_model_layout(cli, good_index, tmp_path):
    folder = tmp_path / "weird-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "no-such-arch", "architectures": ["Nope"]}))
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "x"}])
    result = run_bad(cli, good_index, corpus, "--model", folder)
    assert result.exit_code == MODEL_ERROR
    assert "unknown checkpoint layout" in result.stderr and "no-such-arch" in result.stderr


def test_model_folder_missing_and_hub_unreachable(cli, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "x"}])
    result = cli("encode", corpus, "-o", tmp_path / "i", "--model", "someone/not-cached-model")
    assert result.exit_code == MODEL_ERROR
    assert "not in the Hugging Face cache" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert not (tmp_path / "i" / "manifest.json").exists()


def test_demo_model_not_installed(cli, tmp_path, monkeypatch):
    monkeypatch.setattr("tokembed.models.resolve.DEMO_PACKAGE", "package_that_is_not_installed")
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "x"}])
    result = cli("encode", corpus, "-o", tmp_path / "i")
    assert result.exit_code == MODEL_ERROR
    assert "--model" in result.stderr and "tokembed[demo]" in result.stderr


def test_usage_errors_exit_2(cli, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "x"}])
    assert cli("encode", corpus, "-o", tmp_path / "i", "--batch-tokens", "0").exit_code == 2
    result = cli("encode", corpus, "-o", tmp_path / "i", "--mode", "colbert")  # demo model has no ColBERT settings
    assert result.exit_code == 2 and "--mode colbert needs a ColBERT checkpoint" in result.stderr
    assert cli("encode", corpus, "--kind", "nonsense").exit_code == 2


def test_an_output_that_is_a_file_is_a_usage_error_and_the_file_is_untouched(cli, tmp_path):
    """``-o corpus.parquet`` (the input given twice by mistake) stopped with a FileExistsError traceback."""
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "alpha"}])
    before = corpus.read_bytes()
    result = cli("encode", corpus, "-o", corpus)
    assert result.exit_code == 2 and "c.parquet: exists and is not a folder" in result.stderr
    assert corpus.read_bytes() == before
    result = cli("encode", corpus, "-o", corpus / "index")
    assert result.exit_code == 8 and "cannot create the index folder" in result.stderr and "Not a directory" in result.stderr


def test_ids_and_file_names_that_are_not_unicode_are_bad_rows_not_crashes(cli, tmp_path):
    """A Parquet id cell that is not UTF-8 (a UnicodeDecodeError for the whole batch), a JSONL id with a lone
    surrogate and a file name that is not UTF-8 (Python holds both as lone surrogates, which Arrow refuses
    to write) stopped the run with a traceback. Now each is a bad row, recorded with the id escaped."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cells = tmp_path / "ids.parquet"
    ids = pa.array([b"p1", b"\xffbad"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"id": ids, "text": ["one", "two"]}), cells)
    lines = tmp_path / "ids.jsonl"
    lines.write_text('{"id": "j1", "text": "one"}\n{"id": "\\ud800", "text": "two"}\n', encoding="utf-8")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.txt").write_text("fine")
    (folder / "bad\udcff.txt").write_text("not reachable by its name")  # the bytes b"bad\xff.txt" on disk
    out = tmp_path / "index"
    result = cli("encode", cells, "-o", out)
    assert result.exit_code == BAD_INPUT and "ids.parquet row 1 (id '\\\\xffbad'): id is not valid UTF-8 (byte 0)" in result.stderr
    assert cli("encode", cells, lines, folder, "-o", out, "--on-error", "skip").exit_code == 0
    assert sorted(read_index(out)) == ["good.txt", "j1", "p1"]
    skipped = {entry["id"]: entry for entry in manifest(out)["skipped"]}
    assert set(skipped) == {"\\xffbad", "\\ud800", "bad\\udcff.txt"}
    assert skipped["bad\\udcff.txt"]["source"].endswith("docs/bad\\udcff.txt")
    assert skipped["\\ud800"]["reason"] == "line 2: id is not valid Unicode (a lone surrogate, U+D800, at character 0)"  # as every JSONL reason


def test_a_null_or_structured_id_is_a_bad_row_in_parquet_and_jsonl(cli, tmp_path):
    """Stored as its Python text ("None", "{'x': 1}") before, a null id collided with a real "None"; a Parquet
    null took the row number, which another row's id could be."""
    from helpers import write_jsonl

    rows = [{"id": None, "text": "a"}, {"id": "None", "text": "b"}, {"id": "1", "text": "c"}]
    jsonl = write_jsonl(tmp_path / "c.jsonl", [*rows, {"id": {"x": 1}, "text": "d"}, {"id": [2], "text": "e"}])
    parquet = write_parquet(tmp_path / "c.parquet", rows)
    for corpus, reasons in ((jsonl, ["line 1: null id", "line 4: id is an object, not a string or a number",
                                     "line 5: id is a list, not a string or a number"]), (parquet, ["null id"])):
        out = tmp_path / f"index-{corpus.suffix[1:]}"
        result = cli("encode", corpus, "-o", out, "--on-error", "skip")
        assert result.exit_code == 0, result.output
        assert sorted(read_index(out)) == ["1", "None"]
        assert [entry["reason"] for entry in manifest(out)["skipped"]] == reasons
        failed = cli("encode", corpus, "-o", tmp_path / "other")
        assert failed.exit_code == BAD_INPUT and f"{corpus.name} row 0 (no usable id): {reasons[0]}" in failed.stderr


def test_encode_refuses_more_dimensions_than_the_model_has(cli, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "x"}])
    result = cli("encode", corpus, "-o", tmp_path / "i", "--dimensions", 100000)
    assert result.exit_code == 2 and "--dimensions 100000 is larger than the model's output dimension 384" in result.stderr
    assert not (tmp_path / "i" / "manifest.json").exists()


def test_a_link_to_a_file_that_is_gone_is_a_bad_row_not_a_silent_gap(cli, tmp_path):
    from tokembed.sources.images import image_files
    from tokembed.sources.pdf import pdf_files

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha")
    for name in ("gone.txt", "gone.png", "gone.pdf"):
        (folder / name).symlink_to(tmp_path / "nowhere" / name)
    out = tmp_path / "index"
    result = cli("encode", folder, "-o", out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert list(read_index(out)) == ["a.txt"]
    skipped = {entry["id"]: entry["reason"] for entry in manifest(out)["skipped"]}
    assert sorted(skipped) == ["gone.pdf", "gone.txt"], skipped  # a text model reads a PDF's text layer
    assert skipped["gone.txt"].startswith("cannot read (No such file") and "PDF file not found" in skipped["gone.pdf"]
    assert manifest(out)["ignored"] == [str(folder / "gone.png")]
    assert cli("encode", folder, "-o", tmp_path / "strict").exit_code == BAD_INPUT
    assert [p.name for p in image_files(folder)] == ["gone.png"] and [p.name for p in pdf_files(folder)] == ["gone.pdf"]


def test_a_bad_rows_stand_in_id_never_collides_with_a_real_one(cli, tmp_path):
    """A bad row with no id of its own (recorded with a null id; its row number, which a real id may equal, before)
    takes no part in the duplicate check (it is never indexed), so --on-error skip goes on."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from helpers import write_jsonl

    parquet = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"id": pa.array([1, None, 7], pa.int64()), "text": ["one", "two", "three"]}), parquet)
    jsonl = tmp_path / "lines.jsonl"
    write_jsonl(jsonl, [{"id": "2", "text": "real two"}, {"id": "a", "text": "x"}])
    with jsonl.open("a") as handle:
        handle.write("this is not json\n")
    for corpus, ids in ((parquet, ["1", "7"]), (jsonl, ["2", "a"])):
        out = tmp_path / f"index-{corpus.suffix[1:]}"
        result = cli("encode", corpus, "-o", out, "--on-error", "skip")
        assert result.exit_code == 0, result.output
        assert list(read_index(out)) == ids and [entry["id"] for entry in manifest(out)["skipped"]] == [None]
    write_jsonl(jsonl, [{"id": "a", "text": "x"}, {"id": "b", "text": None}, {"id": "a", "text": "again"}])
    result = cli("encode", jsonl, "-o", tmp_path / "dup", "--on-error", "skip")
    assert result.exit_code == BAD_INPUT and "duplicate id 'a'" in result.stderr  # real duplicates still end the run


def test_a_jsonl_record_without_the_id_its_file_uses_is_a_bad_row(cli, tmp_path):
    from helpers import write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "first"}, {"text": "no id here"}, {"id": "c", "text": "x"}])
    out = tmp_path / "index"
    result = cli("encode", corpus, "-o", out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert list(read_index(out)) == ["a", "c"]
    (skipped,) = manifest(out)["skipped"]
    assert skipped["row"] == 1 and skipped["reason"] == "line 2: no id field 'id' (the file's first record has one)"
    given = cli("encode", corpus, "-o", tmp_path / "given", "--on-error", "skip", "--id-column", "id")  # the default, spelled out
    assert given.exit_code == 0, given.output  # it was exit 3 ("line 2: no id field 'id'")
    assert list(read_index(tmp_path / "given")) == ["a", "c"]
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"text": "first"}, {"text": "second"}])  # no ids at all: row numbers
    assert cli("encode", plain, "-o", tmp_path / "plain").exit_code == 0
    assert list(read_index(tmp_path / "plain")) == ["0", "1"]


def test_a_jsonl_record_with_an_id_in_a_file_numbered_by_row_is_a_bad_row(cli, tmp_path):
    """The first record has no id, so the file's rows are numbered; a later record's own id was taken as it
    was, mixed with the row numbers: ids '0', 'k', and "duplicate id '1'" (exit 3) where a record's id was 1."""
    from helpers import write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": "first"}, {"id": "1", "text": "mine"}, {"text": "third"}])
    out = tmp_path / "index"
    result = cli("encode", corpus, "-o", out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert list(read_index(out)) == ["0", "2"]
    (skipped,) = manifest(out)["skipped"]
    assert skipped["row"] == 1 and skipped["reason"].startswith("line 2: an id field 'id', which the file's first record lacks")
    assert manifest(out)["id_column"] is None


def test_a_dangling_jsonl_link_in_a_data_folder_is_bad_input_naming_it(cli, tmp_path):
    """It was a FileNotFoundError traceback (exit 1), where the same link named .parquet is exit 3."""
    from helpers import write_jsonl

    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"id": "a", "text": "first"}])
    (folder / "b.jsonl").symlink_to(tmp_path / "gone.jsonl")
    result = cli("encode", folder, "-o", tmp_path / "index", "--on-error", "skip")
    assert result.exit_code == BAD_INPUT, result.output
    assert "b.jsonl: not a readable JSONL file (No such file or directory)" in result.stderr


def test_a_jsonl_record_without_the_text_field_is_a_bad_row_in_file_order(cli, tmp_path):
    from helpers import write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "ok"}, {"id": "b", "text": None}, {"id": "f"}])
    failed = cli("encode", corpus, "-o", tmp_path / "strict")
    assert failed.exit_code == BAD_INPUT and "row 1 (id 'b'): line 2: null text" in failed.stderr  # the first bad row first
    out = tmp_path / "index"
    assert cli("encode", corpus, "-o", out, "--on-error", "skip").exit_code == 0
    assert list(read_index(out)) == ["a"]
    assert [entry["reason"] for entry in manifest(out)["skipped"]] == ["line 2: null text", "line 3: no text field 'text' (fields: id)"]


def test_a_boolean_id_is_a_bad_row_not_its_python_text(cli, tmp_path):
    """Stored as "True" before: an id that matches nothing the user has. (A Parquet id column of binary, which Spark
    writes string ids as when told nothing else, is refused as a whole: tests/test_sources_files.py.)"""
    from helpers import write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": True, "text": "a"}, {"id": "ok", "text": "b"}])
    out = tmp_path / "index"
    result = cli("encode", corpus, "-o", out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert list(read_index(out)) == ["ok"]
    assert all(entry["reason"].startswith("line 1: id is a boolean") for entry in manifest(out)["skipped"])
    assert cli("encode", corpus, "-o", tmp_path / "strict").exit_code == BAD_INPUT


def test_a_bad_jsonl_record_names_its_line_in_the_file(cli, tmp_path):
    """Rows skip blank lines and count from 0, and json's own "line 2" was the record's newline: the reason
    names the line an editor shows."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "x"}\n\n\n{"id": "b", "text": "y"}\n\n\n{"id": "c" "text": "z"}\n')
    failed = cli("encode", corpus, "-o", tmp_path / "index")
    assert failed.exit_code == BAD_INPUT
    assert "c.jsonl row 2 (no usable id): line 7: not valid JSON (Expecting ',' delimiter, column 12)" in failed.stderr


def test_a_jsonl_file_where_no_record_has_the_text_field_is_refused_even_when_skipping(cli, tmp_path):
    """A field renamed upstream made every record a bad row: with --on-error skip the night's run deleted the
    whole index (exit 0); a Parquet file without the column was already exit 3."""
    from helpers import write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
    out = tmp_path / "index"
    assert cli("encode", corpus, "-o", out).exit_code == 0
    before = (out / "manifest.json").read_bytes()
    write_jsonl(corpus, [{"id": "a", "body": "x"}, {"id": "b", "body": "y"}])
    result = cli("encode", corpus, "-o", out, "--on-error", "skip")
    assert result.exit_code == BAD_INPUT, result.output
    assert "no record has what this run reads: no text field 'text' (fields: id, body)" in result.stderr
    assert (out / "manifest.json").read_bytes() == before and sorted(read_index(out)) == ["a", "b"]
    write_jsonl(corpus, [{"id": "a", "body": "x"}, {"id": "b", "text": "y"}])  # one record lacking it: a bad row
    assert cli("encode", corpus, "-o", out, "--on-error", "skip").exit_code == 0
    assert list(read_index(out)) == ["b"]


@pytest.mark.parametrize("content", [b'[{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]\n', b"\x1f\x8b\x08\x00 gzip bytes\n"])
def test_a_jsonl_file_with_no_json_object_is_refused_even_when_skipping(cli, tmp_path, content):
    """A feed rewritten as one JSON array, or gzipped under the same name: every line a bad row, and with
    --on-error skip the run deleted the whole index (exit 0)."""
    from helpers import write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
    out = tmp_path / "index"
    assert cli("encode", corpus, "-o", out).exit_code == 0
    corpus.write_bytes(content)
    result = cli("encode", corpus, "-o", out, "--on-error", "skip")
    assert result.exit_code == BAD_INPUT and "no line is a JSON object" in result.stderr, result.output
    assert sorted(read_index(out)) == ["a", "b"]


def test_a_jsonl_image_that_does_not_decode_names_its_line(tmp_path):
    from helpers import write_jsonl
    from pathlib import Path

    from tokembed.sources import SourceOptions, open_sources

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "fine"}, {"id": "b", "image": "missing.png"}])
    items = [item for chunk in open_sources([Path(corpus)], SourceOptions(modality="image")) for item in chunk]
    assert items[1].error == "line 2: image file not found: missing.png"


def test_an_input_given_twice_is_a_usage_error(cli, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    corpus = write_parquet(folder / "c.parquet", [{"id": "a", "text": "x"}])
    for inputs, how in (([corpus, corpus], "the same as"), ([folder, corpus], "inside"), ([corpus, folder], "the folder of")):
        result = cli("encode", *inputs, "-o", tmp_path / "index")
        assert result.exit_code == 2 and how in result.stderr and "read twice" in result.stderr, result.output
