"""``score``'s query files read as ``encode`` and Python read them: line ends, and .jsonl ids."""

from __future__ import annotations

import pytest

from tokembed.errors import BadInputError
from tokembed.search import read_queries


def test_txt_and_tsv_lines_end_at_a_lone_cr_as_universal_newlines_read_them(tmp_path):
    """An old Mac's CR-only file was one query holding every line (exit 0, no warning). Only \\n, \\r\\n and \\r
    end a line: \\x0c or U+2028, which str.splitlines() also splits at, stay in the query's text."""
    txt = tmp_path / "q.txt"
    txt.write_bytes("bread\roven\r\rform\x0cfeed\u2028line\r\nocéan\r".encode())
    queries = read_queries(txt)
    assert (queries.ids, queries.texts) == (["1", "2", "4", "5"], ["bread", "oven", "form\x0cfeed\u2028line", "océan"])
    assert queries.warnings == [f"{txt}: skipped 1 blank line(s) (line 3)"]
    tsv = tmp_path / "q.tsv"
    tsv.write_bytes(b"id\ttext\ra\tbread\rb\toven")
    assert (read_queries(tsv).ids, read_queries(tsv).texts) == (["a", "b"], ["bread", "oven"])
    jsonl = tmp_path / "q.jsonl"  # as encode reads it: a lone \r is JSON whitespace, inside a record too
    jsonl.write_bytes(b'{"id": "a",\r"text": "bread"}\r\n')
    assert (read_queries(jsonl).ids, read_queries(jsonl).texts) == (["a"], ["bread"])


def test_a_jsonl_record_without_the_id_its_first_record_has_exits_3_as_in_encode(tmp_path):
    """It got its line number as id (exit 0): "3", which another query may hold and no qrels line matches."""
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "text": "bread"}\n\n{"text": "sun"}\n')
    with pytest.raises(BadInputError, match=r"q\.jsonl line 3: no id field 'id' \(the file's first record has one\)"):
        read_queries(path)
    path.write_text('{"text": "bread"}\n{"text": "sun"}\n')  # no ids at all: line numbers, as before
    assert read_queries(path).ids == ["1", "2"]


def test_a_jsonl_record_with_an_id_in_a_file_numbered_by_line_exits_3_as_in_encode(tmp_path):
    """The first record has no id, so the file's queries are numbered by line; a later record's own id was mixed in
    with the line numbers ("1", "7", "3"), and an id "1" on line 2 collided with line 1's."""
    path = tmp_path / "q.jsonl"
    path.write_text('{"text": "bread"}\n{"id": "7", "text": "sun"}\n{"text": "moon"}\n')
    with pytest.raises(BadInputError, match=r"q\.jsonl line 2: an id field 'id', which the file's first record lacks"):
        read_queries(path)
