"""Paths as typed: an empty one (an unset shell variable) is exit 2 naming it, never the current folder; an index
or export path that is not UTF-8 (Arrow cannot open it) is exit 2 naming it; a data file whose name is not UTF-8
is read as any other."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import manifest, read_index, write_parquet

USAGE = 2


@pytest.fixture
def index_here(cli, tmp_path, monkeypatch):
    """An index that is the current folder: what an empty path would have named."""
    corpus = write_parquet(tmp_path / "corpus.parquet", [{"id": "a", "text": "alpha"}, {"id": "b", "text": "beta"}])
    here = tmp_path / "here"
    assert cli("encode", corpus, "-o", here, "-q").exit_code == 0
    monkeypatch.chdir(here)
    return corpus, here


def test_an_empty_path_is_refused_naming_it_not_read_as_the_current_folder(cli, index_here, tmp_path):
    """`-o "$OUT"` with OUT unset wrote the index into the current folder (exit 0), `info ""`, `compress ""`,
    `score ... ""` and `export "" --to` read the index there, `export --to ""` wrote its files there: pathlib reads
    "" as ".". Each is exit 2 naming the argument, as `--model ""` is, and the current folder is untouched."""
    corpus, here = index_here
    before = (here / "manifest.json").read_text()
    exported = tmp_path / "exported"
    runs = {
        "--output": [("encode", corpus, "-o", ""), ("score", "--query", "x", here, "-o", ""),
                     ("score", "--query", "x", here, "--output", "")],
        "INPUT": [("encode", "", "-o", tmp_path / "other")],
        "INDEX": [("info", ""), ("compress", ""), ("export", "", "--to", exported, "-f", "parquet")],
        "INDEX_DIR": [("score", "--query", "x", "")],
        "QUERIES": [("score", "", here)],
        "--to": [("export", here, "--to", "", "-f", "parquet"), ("export", here, "--to", "", "-f", "lance")],
        "--index": [("serve", "--index", "", "--log-level", "bogus")],  # served the current folder; bogus: no server starts
    }
    results = {command: cli(*command) for commands in runs.values() for command in commands}
    named = {command: name for name, commands in runs.items() for command in commands}
    assert [command for command, result in results.items() if result.exit_code != USAGE
            or f"usage error: {named[command]} is empty" not in result.stderr
            or "unset shell variable" not in result.stderr] == []
    assert (here / "manifest.json").read_text() == before and "search" not in manifest(here)
    assert not list(here.glob("*.parquet")) and not list(here.glob("*.lance"))  # no export into it
    assert not exported.exists() and not (tmp_path / "other").exists()


def test_a_blank_path_is_refused_as_an_empty_one_not_made_a_file_named_by_spaces(cli, index_here, tmp_path):
    """`-o " "` wrote an index folder named " " (exit 0), as `score -o " "` a results file and `export --to " "`
    its files, and `info " "` said "index not found", while `--model " "` was refused as empty."""
    corpus, here = index_here
    runs = {
        "--output": [("encode", corpus, "-o", " "), ("score", "--query", "x", here, "-o", "  ")],
        "INPUT": [("encode", "\t", "-o", tmp_path / "other")],
        "INDEX": [("info", " "), ("compress", " "), ("export", " ", "--to", tmp_path / "exported", "-f", "parquet")],
        "INDEX_DIR": [("score", "--query", "x", " ")],
        "QUERIES": [("score", " ", here)],
        "--to": [("export", here, "--to", " ", "-f", "parquet")],
    }
    results = {command: cli(*command) for commands in runs.values() for command in commands}
    named = {command: name for name, commands in runs.items() for command in commands}
    assert [command for command, result in results.items() if result.exit_code != USAGE
            or f"usage error: {named[command]} is empty" not in result.stderr
            or "unset shell variable" not in result.stderr] == []
    assert [name for name in os.listdir(here) if not name.strip()] == []


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_an_empty_or_blank_query_is_refused_not_ranked_by_its_special_tokens(cli, index_here, blank):
    """`--query "$Q"` with Q unset gave ten hits (exit 0), ranked by closeness to [CLS] and [SEP] alone."""
    _, here = index_here
    for queries in (("--query", blank), ("--query", "alpha", "--query", blank)):
        result = cli("score", *queries, here, "-f", "jsonl")
        assert result.exit_code == USAGE and result.stdout == "", result.output
        assert "usage error: --query is empty" in result.stderr and "unset shell variable" in result.stderr


def test_score_output_dash_is_still_standard_output(cli, index_here):
    _, here = index_here
    result = cli("score", "--query", "alpha", here, "-o", "-", "-f", "jsonl", "-q")
    assert result.exit_code == 0 and '"doc_id": "a"' in result.stdout
    assert not Path("-").exists()


def test_an_index_or_export_path_that_is_not_utf8_is_refused_naming_it(cli, index_here, tmp_path, monkeypatch):
    """Bytes that are not UTF-8 in -o, --to or an index folder (legal on Linux) reached Arrow as text it cannot
    encode: a UnicodeEncodeError traceback, exit 1. Exit 2 naming the path; nothing is written. `score -o` is
    written by Python and keeps working."""
    corpus, here = index_here
    latin = tmp_path / "i\udcff"  # the bytes b"i\xff", as Python holds them
    shutil.copytree(here, latin)
    runs = [
        ("--output", ("encode", corpus, "-o", tmp_path / "o\udcff")),
        ("--to", ("export", here, "--to", tmp_path / "e\udcff", "-f", "parquet")),
        ("INDEX", ("info", latin)), ("INDEX", ("compress", latin)), ("INDEX", ("export", latin, "--to", tmp_path / "x", "-f", "parquet")),
        ("INDEX_DIR", ("score", "--query", "x", latin)),
    ]
    refused = [f"usage error: {name} '" in result.stderr and "\\udcff'" in result.stderr and result.exit_code == USAGE
               and "is not UTF-8 (byte 0xff at character" in result.stderr
               for name, result in ((name, cli(*command)) for name, command in runs)]
    assert refused == [True] * len(runs)
    assert sorted(os.listdir(tmp_path)) == ["corpus.parquet", "here", "i\udcff"]  # nothing written
    inside = tmp_path / "w\udcff"
    inside.mkdir()
    monkeypatch.chdir(inside)
    result = cli("encode", corpus, "-o", "index")  # the index is opened as {inside}/index
    assert result.exit_code == USAGE and "--output 'index': the path is not UTF-8 once resolved, '" in result.stderr
    assert "w\\udcff/index' (byte 0xff at character" in result.stderr and os.listdir(inside) == []
    results = tmp_path / "r\udcff"
    assert cli("score", "--query", "alpha", here, "-o", results, "-q").exit_code == 0
    assert '"doc_id": "a"' in results.read_text()


def _parquet_named(path: Path, rows: list[dict]) -> Path:
    """A Parquet file at ``path`` whatever its name's bytes (pyarrow takes text paths only as UTF-8)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pa.OSFile(os.fsencode(path), "wb") as sink:
        pq.write_table(pa.Table.from_pylist(rows), sink)
    return path


def test_parquet_files_whose_names_are_not_utf8_are_read_as_any_other(cli, tmp_path):
    """A folder's Parquet file named in Latin-1 (or one given as INPUT, or a query file) stopped the run with a
    UnicodeEncodeError traceback: pyarrow was handed the name as text. Its rows are read, as a JSONL file's are;
    its name is recorded escaped. (Text, image and PDF files, whose name is their id, are bad rows: test_bad_input.)"""
    folder = tmp_path / "docs"
    folder.mkdir()
    write_parquet(folder / "good.parquet", [{"id": "a", "text": "alpha"}])
    latin = _parquet_named(folder / "r\udce9sum\udce9.parquet", [{"id": "b", "text": "beta"}, {"id": "c", "text": None}])
    out = tmp_path / "index"
    result = cli("encode", folder, "-o", out)
    assert result.exit_code == 3 and "docs/r\\udce9sum\\udce9.parquet row 1 (id 'c'): null text" in result.stderr
    assert cli("encode", folder, "-o", out, "--on-error", "skip", "-q").exit_code == 0
    assert sorted(read_index(out)) == ["a", "b"]
    assert [entry["source"].endswith("docs/r\\udce9sum\\udce9.parquet") for entry in manifest(out)["skipped"]] == [True]
    assert cli("encode", folder, "-o", out, "--on-error", "skip", "-q").exit_code == 0  # a re-run: all unchanged
    alone = tmp_path / "alone"
    assert cli("encode", latin, "-o", alone, "--on-error", "skip", "-q").exit_code == 0
    assert sorted(read_index(alone)) == ["b"]
    queries = _parquet_named(tmp_path / "q\udcff.parquet", [{"id": "q1", "text": "beta"}])
    result = cli("score", queries, out, "-f", "jsonl", "-q")
    assert result.exit_code == 0 and '"query_id": "q1"' in result.stdout


@pytest.mark.parametrize("command", ["encode", "score"])
def test_an_empty_id_column_is_refused_not_read_as_id(cli, tmp_path, command):
    """--id-column "" fell back to the default 'id' (and a file without it was said to lack 'id')."""
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": "a", "text": "x"}\n')
    args = [queries, "-o", tmp_path / "index"] if command == "encode" else [queries, tmp_path]
    result = cli(command, *args, "--id-column", "")
    assert result.exit_code == 2 and "--id-column is empty" in result.stderr, result.stderr


@pytest.mark.parametrize("flag", ["--text-column", "--image-column", "--pdf-column", "--video-column"])
def test_an_empty_column_flag_is_refused_not_read_as_its_default(cli, tmp_path, flag):
    """--pdf-column "" (and --image-column, --video-column) read the default column ('pdf'...) as if given;
    --text-column "" looked for a field named ''. Exit 2 naming the flag, as --id-column "" is."""
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "x", "pdf": null, "image": null, "video": null}\n')
    result = cli("encode", corpus, "-o", tmp_path / "index", flag, "")
    assert result.exit_code == 2 and f"{flag} is empty" in result.stderr, result.stderr
    assert not (tmp_path / "index").exists()
