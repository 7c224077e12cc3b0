"""``score``'s query files read as ``encode`` and Python (or colbert-ai's .tsv reader) read them: line ends, .jsonl
ids, .tsv headers and columns, and what is no regular file."""

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


def test_a_tsv_header_after_blank_lines_is_skipped_and_only_the_first_line_is_one(tmp_path):
    """A header after a blank first line was scored as the query "text" with id "id". A later line that reads as
    one is a query: only the first line that is not blank is a header."""
    path = tmp_path / "q.tsv"
    path.write_bytes("\ufeff\r\n\nqid\tquery\nq1\tbread\nid\ttext\n".encode())
    queries = read_queries(path, id_column="qid", text_column="query")
    assert (queries.ids, queries.texts) == (["q1", "id"], ["bread", "text"])
    path.write_text("\n \nid\ttext\nq1\tbread\n")
    assert (read_queries(path).ids, read_queries(path).texts) == (["q1"], ["bread"])


def test_tsv_columns_after_the_second_are_ignored_with_a_warning(tmp_path):
    """``q1<TAB>how does bread rise<TAB>cooking 2019`` was encoded as "how does bread rise\\tcooking 2019", silently.
    As colbert-ai's load_queries reads it, the query is the second column; the lines with more are named."""
    path = tmp_path / "q.tsv"
    path.write_text("id\ttext\tyear\nq1\thow does bread rise\tcooking 2019\nq2\toven\nq3\tsun\t\t\n")
    queries = read_queries(path)
    assert (queries.ids, queries.texts) == (["q1", "q2", "q3"], ["how does bread rise", "oven", "sun"])
    assert queries.warnings == [f"{path}: ignored the columns after the second (id, text) on 2 line(s) (line 2, 4)"]


def test_a_query_file_that_is_a_named_pipe_is_exit_3_saying_so(cli, tmp_path):
    """It was "no such query file" (a pipe that exists, ``/dev/stdin`` fed by a pipe). Refused as encode refuses
    one, never opened: opening a pipe with no writer waits forever."""
    import os

    fifo = tmp_path / "q.txt"
    os.mkfifo(fifo)
    with pytest.raises(BadInputError, match=r"q\.txt: not a regular file \(a named pipe\)"):
        read_queries(fifo)
    result = cli("score", fifo, tmp_path / "index")
    assert result.exit_code == 3 and f"{fifo}: not a regular file (a named pipe)" in result.stderr, result.output
    assert "save the queries to a file" in result.stderr
