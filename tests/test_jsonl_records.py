"""JSONL records as Parquet's columns are read: a field of a type no record fits is the file's problem (exit 3), a
key given twice is ambiguous, a line that is not UTF-8 says so, and an image field of inline data is named short."""

from __future__ import annotations

import base64
import gzip
import json

import pytest

from helpers import manifest, read_index, write_jsonl
from tokembed.errors import BadInputError
from test_sources_files import png, read_all

BAD_INPUT = 3


@pytest.mark.parametrize("texts, type_names", [
    ([["hello", "world"], ["second doc", "here"]], "list"),
    ([{"t": "x"}, 7], "dict, int"),
])
def test_a_jsonl_text_field_of_another_type_in_every_record_is_bad_input_even_when_skipping(cli, tmp_path, texts,
                                                                                           type_names):
    """Upstream began writing the text as a list of paragraphs: every record a bad row, and --on-error skip deleted
    every row of the file from the index (exit 0), where Parquet with the same data is refused."""
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x y"}, {"id": "b", "text": "z"}])
    out = tmp_path / "index"
    assert cli("encode", path, "-o", out).exit_code == 0
    write_jsonl(path, [{"id": "a", "text": texts[0]}, {"id": "b", "text": texts[1]}, {"id": "c"}])
    result = cli("encode", path, "-o", out, "--on-error", "skip")
    assert result.exit_code == BAD_INPUT, result.output
    assert (f"c.jsonl: no record has a usable field: text field 'text' is {type_names}, not a string (in every record "
            "that has it)") in result.stderr
    assert sorted(read_index(out)) == ["a", "b"]


def test_records_of_another_type_are_bad_rows_while_one_record_is_usable(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": ["x"]}, {"id": "b", "text": None},
                                              {"id": "c", "text": 3}])
    assert [item.error for item in read_all([path])] == ["line 1: text is list, not a string", "line 2: null text",
                                                         "line 3: text is int, not a string"]
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "image": 1}, {"id": "b", "image": ["x"]}])
    with pytest.raises(BadInputError, match=r"image field 'image' is int, list, not a path, a data URI or \{bytes"):
        read_all([path], modality="image")
    # an auto run reads the text or the image: a record is unusable when both are of another type
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": ["x"], "image": 2}, {"id": "b", "text": 3}])
    with pytest.raises(BadInputError, match=r"text field 'text' is list, int, not a string; image field 'image' is"):
        read_all([path], modality="auto")
    image = "data:image/png;base64," + base64.b64encode(png()).decode()
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": ["x"], "image": image}, {"id": "b", "text": 3}])
    assert [item.error for item in read_all([path], modality="auto")] == [None, "line 2: text is int, not a string"]


def test_a_field_given_twice_is_a_bad_row_naming_it(tmp_path):
    """json keeps a key's last value, silently; Parquet refuses a column given twice as ambiguous."""
    struct = '{"bytes": "%s", "bytes": "%s"}' % (base64.b64encode(png()).decode(), base64.b64encode(png()).decode())
    path = tmp_path / "c.jsonl"
    path.write_text('{"id": "a", "text": "hello world", "text": "other"}\n'
                    '{"id": "b", "id": "c", "text": "x"}\n'
                    '{"id": "d", "text": "x", "meta": 1, "meta": 2, "more": {"k": 1, "k": 2}}\n'
                    '{"id": "e", "image": ' + struct + '}\n', encoding="utf-8")
    items = read_all([path], modality="auto")
    assert [(item.id, item.error) for item in items] == [
        ("a", "line 1: field 'text' given twice: which value is meant is ambiguous"),
        (None, "line 2: field 'id' given twice: which value is meant is ambiguous"),
        ("d", None),  # fields this run does not read
        ("e", "line 4: field 'image.bytes' given twice: which value is meant is ambiguous")]


def test_a_line_that_is_not_utf8_says_so_and_a_file_in_another_encoding_is_bad_input(cli, tmp_path):
    """A Latin-1 byte made the row "not valid JSON ('utf-8' codec ...)" without its id, and a cp1252 file "no line
    is a JSON object", which named the wrong cause."""
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a", "text": "hello world"}\n{"id": "b", "text": "caf\xe9"}\n')
    out = tmp_path / "index"
    assert cli("encode", path, "-o", out, "--on-error", "skip").exit_code == 0
    assert manifest(out)["skipped"][0]["id"] == "b"
    assert manifest(out)["skipped"][0]["reason"] == "line 2: not valid UTF-8 (byte 24 of the line)"
    path.write_bytes("".join(json.dumps({"id": f"d{i}", "text": "café"}, ensure_ascii=False) + "\n"
                             for i in range(3)).encode("cp1252"))
    with pytest.raises(BadInputError, match=r"c\.jsonl: the file is not UTF-8 \(line 1, byte 25\), "
                                            r"and JSON Lines is UTF-8") as raised:
        read_all([path])
    assert "iconv" in raised.value.hint
    path.write_bytes(gzip.compress(b'{"id": "a", "text": "x"}\n' * 50))  # binary, not text in another encoding
    with pytest.raises(BadInputError, match="no line is a JSON object"):
        read_all([path])


def test_plain_base64_in_an_image_field_is_named_short(tmp_path):
    """Taken for a file name, a 76 KB base64 string was the whole reason, in the manifest and on the terminal."""
    value = base64.b64encode(png() + b"\0" * 50_000).decode()
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "image": value}])
    [item] = read_all([path], modality="image")
    assert item.error == (f"line 1: cannot read image file {value[:60]}... ({len(value)} characters) (File name too "
                          "long): an image cell holds a path, a data URI (data:image/png;base64,...) or {bytes, path} "
                          "(JSON: bytes in base64)")
