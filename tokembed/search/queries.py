"""Query readers for ``score``: a file (or inline texts) -> ``Queries`` (ids, texts, warnings).

    .txt              one query per line; id = the line number (from 1); blank lines skipped (warning)
    .tsv              ``id<TAB>text`` per line; a first line (blank lines aside) ``id<TAB>text``, or the column names
                      given, is a header, skipped; columns after the second are ignored (a warning), as colbert-ai's
                      ``load_queries`` ignores them
    .jsonl            one JSON object per line with ``id`` and ``text`` fields (names configurable)
    .parquet          ``id`` and ``text`` columns (names configurable)
    --query "text"    inline queries, ids q1, q2, ...

Every file is decoded as strict UTF-8; a bad byte raises ``BadInputError`` naming the file and line.
Where the file has no id field/column the 1-based line (row) number is the id; a .jsonl record without the id
field its file's first record has is an error, as in ``encode``. Ids must be unique. .txt and .tsv lines end at
``\n``, ``\r\n`` or a lone ``\r`` (Python's universal newlines), .jsonl lines at ``\n`` (as ``encode`` reads them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokembed.errors import BadInputError
from tokembed.sources.base import id_field_problem, id_problem, unicode_problem

QUERY_SUFFIXES = (".txt", ".tsv", ".jsonl", ".parquet")


@dataclass
class Queries:
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, other: "Queries") -> "Queries":
        return Queries(self.ids + other.ids, self.texts + other.texts, self.warnings + other.warnings)


def read_queries(path: Path | str, id_column: str = "id", text_column: str = "text", id_required: bool = False) -> Queries:
    """Read a query file; the reader is chosen by suffix (see the module docstring). ``id_required``: the id
    column was named, so a .jsonl line or a .parquet file without it is an error, not line/row numbers."""
    path = Path(path)
    try:
        return check_queries(_read_by_suffix(path, id_column, text_column, id_required), str(path))
    except PermissionError as exc:  # chmod 000, or in a folder this user may not search (another user's home)
        raise BadInputError(f"{path}: cannot read the query file ({exc.strerror})") from exc


def _read_by_suffix(path: Path, id_column: str, text_column: str, id_required: bool) -> Queries:
    _refuse_what_is_no_query_file(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        queries = _read_txt(path)
    elif suffix == ".tsv":
        queries = _read_tsv(path, id_column, text_column)
    elif suffix == ".jsonl":
        queries = _read_jsonl(path, id_column, text_column, id_required)
    elif suffix == ".parquet":
        queries = _read_parquet(path, id_column, text_column, id_required)
    else:
        raise BadInputError(f"{path}: unsupported query file type {suffix!r} (expected {', '.join(QUERY_SUFFIXES)})")
    return queries


def _refuse_what_is_no_query_file(path: Path) -> None:
    """``BadInputError`` (exit 3) saying what ``path`` is, where it is no regular file. A named pipe (``/dev/stdin``
    fed by a pipe, a shell's ``<(...)``) is refused as ``encode`` refuses one: it reads once only, and has no
    suffix to say its format."""
    from tokembed.sources.files import special_file_problem

    if path.is_file():
        return
    if path.is_dir():
        raise BadInputError(f"{path}: a folder, not a query file")
    if problem := special_file_problem(path):
        raise BadInputError(f"{path}: {problem}", hint=f"save the queries to a file ({', '.join(QUERY_SUFFIXES)}) first")
    raise BadInputError(f"{path}: no such query file")


def inline_queries(texts: list[str]) -> Queries:
    """``--query`` texts, ids q1, q2, ..."""
    return Queries([f"q{i}" for i in range(1, len(texts) + 1)], list(texts))


def as_queries(queries: list[str] | dict, ids: list[str] | None = None) -> Queries:
    """The library's query input (``search``, ``encode_queries``): a list (ids ``ids``, else q1, q2, ...) or a
    mapping id -> text. A bare string would be one query per character: refused, as is None."""
    if isinstance(queries, dict):
        return check_queries(Queries([str(k) for k in queries], list(queries.values())), "queries")
    if isinstance(queries, str) or not isinstance(queries, Iterable):
        got = "one string" if isinstance(queries, str) else type(queries).__name__
        raise BadInputError(f"queries: expected a list of texts or a dict id -> text, got {got}")
    texts = list(queries)
    if ids is None:
        return check_queries(inline_queries(texts), "queries")
    if len(ids) != len(texts):
        raise BadInputError(f"queries: {len(texts)} texts but {len(ids)} ids")
    return check_queries(Queries([str(qid) for qid in ids], texts), "queries")


def check_queries(queries: Queries, source: str) -> Queries:
    if not queries.ids:
        raise BadInputError(f"{source}: no queries")
    for qid, text in zip(queries.ids, queries.texts):
        if not isinstance(text, str):
            raise BadInputError(f"{source}: query {qid!r} is {type(text).__name__}, not a string")
        if problem := unicode_problem(qid, "id") or unicode_problem(text):
            raise BadInputError(f"{source}: query {qid!r}: {problem}")
    if len(set(queries.ids)) != len(queries.ids):
        seen: set[str] = set()
        dup = next(q for q in queries.ids if q in seen or seen.add(q))
        raise BadInputError(f"{source}: query id {dup!r} appears more than once")
    return queries


def _lines(path: Path, lone_cr_ends_a_line: bool = True) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its end) for every line; strict UTF-8. Lines end as Python's
    universal newlines read them, ``\n``, ``\r\n`` or an old Mac's lone ``\r`` (not ``str.splitlines()``'s other
    breaks, \x0c or U+2028 say, which a query's text may hold); without ``lone_cr_ends_a_line``, at ``\n`` only."""
    number = 0
    with open(path, "rb") as handle:
        for raw in handle:
            for part in _line_bodies(raw, lone_cr_ends_a_line):
                number += 1
                try:
                    line = part.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise BadInputError(f"{path} line {number}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
                yield number, line


def _line_bodies(raw: bytes, lone_cr_ends_a_line: bool) -> list[bytes]:
    """``raw`` (up to and with its ``\n``) without its end, split at each lone ``\r`` where those end lines. A
    \r byte is never part of a longer UTF-8 character, so the bytes split where the text would."""
    body = raw[:-1] if raw.endswith(b"\n") else raw
    body = body[:-1] if body.endswith(b"\r") else body  # \r\n, or a last line's lone \r
    return body.split(b"\r") if lone_cr_ends_a_line and b"\r" in body else [body]


def _blank_warning(path: Path, blanks: list[int]) -> list[str]:
    return _lines_warning(path, blanks, "skipped {} blank line(s)")


def _lines_warning(path: Path, numbers: list[int], what: str) -> list[str]:
    if not numbers:
        return []
    shown = ", ".join(map(str, numbers[:10])) + (", ..." if len(numbers) > 10 else "")
    return [f"{path}: {what.format(len(numbers))} (line {shown})"]


def _read_txt(path: Path) -> Queries:
    queries, blanks = Queries(), []
    for number, line in _lines(path):
        if not line or line.isspace():  # no copy of a huge line
            blanks.append(number)
            continue
        queries.ids.append(str(number))
        queries.texts.append(line)
    queries.warnings += _blank_warning(path, blanks)
    return queries


def _read_tsv(path: Path, id_column: str, text_column: str) -> Queries:
    """``id<TAB>text`` lines, as colbert-ai's ``load_queries`` reads them: the columns after the second are
    ignored (with a warning naming the lines). The first line that is not blank may be a header."""
    queries, blanks, longer, first = Queries(), [], [], True
    for number, line in _lines(path):
        if not line or line.isspace():  # no copy of a huge line
            blanks.append(number)
            continue
        qid, tab, text = line.partition("\t")
        if not tab:
            raise BadInputError(f"{path} line {number}: expected id<TAB>text, found no tab")
        text, more, _ = text.partition("\t")
        header, first = first and (qid, text) in ((id_column, text_column), ("id", "text")), False
        if header:
            continue  # its ids are the first column whatever --id-column names
        if more:
            longer.append(number)
        queries.ids.append(qid)
        queries.texts.append(text)
    queries.warnings += _blank_warning(path, blanks)
    queries.warnings += _lines_warning(path, longer, "ignored the columns after the second (id, text) on {} line(s)")
    return queries


def _read_jsonl(path: Path, id_column: str, text_column: str, id_required: bool) -> Queries:
    """As ``encode`` reads a .jsonl file: lines end at ``\n`` (a lone ``\r`` is JSON whitespace), and once the
    first record has the id field a record without it is an error (its line number could be another's id), and
    once it has none, so is a record with one (its id could be another's line number)."""
    queries, blanks, first_has_id = Queries(), [], None
    for number, line in _lines(path, lone_cr_ends_a_line=False):
        if not line or line.isspace():  # no copy of a huge line
            blanks.append(number)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"{path} line {number}: not valid JSON ({exc.msg})") from exc
        except (ValueError, RecursionError) as exc:  # nesting too deep; an integer past Python's digit limit
            raise BadInputError(f"{path} line {number}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise BadInputError(f"{path} line {number}: not a JSON object")
        if text_column not in record:
            raise BadInputError(f"{path} line {number}: no text field {text_column!r} (fields: {', '.join(record)})")
        if id_required and id_column not in record:
            raise BadInputError(f"{path} line {number}: no id field {id_column!r} (fields: {', '.join(record)})")
        first_has_id = id_column in record if first_has_id is None else first_has_id
        if problem := id_field_problem(id_column in record, first_has_id, id_column, "queries are numbered by line"):
            raise BadInputError(f"{path} line {number}: {problem}")
        text = record[text_column]
        if not isinstance(text, str):
            raise BadInputError(f"{path} line {number}: text is {type(text).__name__}, not a string")
        raw_id = record.get(id_column, number)
        if problem := id_problem(raw_id):
            raise BadInputError(f"{path} line {number}: {problem}")
        queries.ids.append(str(raw_id))
        queries.texts.append(text)
    queries.warnings += _blank_warning(path, blanks)
    return queries


def _read_parquet(path: Path, id_column: str, text_column: str, id_required: bool) -> Queries:
    """Read as a corpus is (``sources.parquet``: a huge cell page by page); ids are row numbers from 1 where
    the file has no id column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tokembed.sources.base import SourceOptions
    from tokembed.sources.files import arrow_readable
    from tokembed.sources.parquet import read_parquet

    try:
        has_ids = id_column in pq.read_schema(arrow_readable(path)).names
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(f"{path}: not a readable Parquet file ({exc})") from exc
    if id_required and not has_ids:
        raise BadInputError(f"{path}: no id column {id_column!r}")
    queries = Queries()
    for chunk in read_parquet(path, SourceOptions(id_column=id_column, text_column=text_column), 0):
        for item in chunk:
            if item.error is not None:
                raise BadInputError(f"{path} row {item.row + 1}: {item.error}")
            queries.ids.append(item.id if has_ids else str(item.row + 1))
            queries.texts.append(item.text)
    return queries
