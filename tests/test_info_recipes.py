"""``tokembed info``'s export recipes run as printed, whatever the index's path holds (spaces, quotes, unicode, a
leading dash, glob characters): shell words quoted for a POSIX shell, the DuckDB glob as an SQL string literal, the
LanceDB folder as a Python one."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import shlex
import subprocess

import pytest

from helpers import read_index, write_parquet


def test_the_printed_recipes_run_for_a_path_with_a_space_a_quote_and_unicode(cli, tmp_path, monkeypatch):
    import duckdb

    corpus = write_parquet(tmp_path / "corpus.parquet", [{"id": "a", "text": "one text"}, {"id": "b", "text": "two"}])
    index = tmp_path / "my team's índex"
    assert cli("encode", corpus, "-o", index, "-q").exit_code == 0
    monkeypatch.chdir(tmp_path)
    recipes = cli("info", index.name).stderr.split("open it elsewhere", 1)[1].splitlines()
    commands = [line.split(":", 1)[1].strip() for line in recipes if line.strip().startswith(("DuckDB:", "LanceDB:"))]
    parquet_sql = next(line for line in recipes if "SELECT" in line).split("--")[0].strip()
    lance_folder = next(line for line in recipes if "lancedb.connect(" in line).split("lancedb.connect(", 1)[1].split(")")[0]

    for command in commands:
        words = shlex.split(command)
        assert words[:2] == ["tokembed", "export"] and words[2] == index.name
        assert subprocess.run(["sh", "-c", f"printf '%s\\n' {command}"], capture_output=True, text=True).stdout.splitlines() == words
        result = cli(*words[1:], "-q")
        assert result.exit_code == 0, (command, result.output)
    rows = duckdb.sql(parquet_sql).fetchall()
    assert [doc_id for doc_id, _ in rows] == ["a", "b"] and all(tokens > 0 for _, tokens in rows)
    lancedb = pytest.importorskip("lancedb", reason="the [lance] extra is not installed")
    assert lancedb.connect(ast.literal_eval(lance_folder)).open_table("documents").count_rows() == 2
    # the Python lines after the LanceDB export: they searched a query_vectors they never made (a NameError)
    after = recipes[next(n for n, line in enumerate(recipes) if line.strip().startswith("LanceDB:")) + 1:]
    code = "\n".join(line.strip() for line in after if not line.strip().startswith("#"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, {})
    assert "_distance" in printed.getvalue() and '"a"' in printed.getvalue() and '"b"' in printed.getvalue()


def printed_recipes(cli, index) -> list[str]:
    result = cli("info", index)
    assert result.exit_code == 0, result.output
    return result.stderr.split("open it elsewhere", 1)[1].splitlines()


def printed_command(recipes: list[str], tool: str) -> list[str]:
    """The words of the ``tokembed export`` line after ``tool:``, as a POSIX shell splits them."""
    return shlex.split(next(line for line in recipes if line.strip().startswith(f"{tool}:")).split(":", 1)[1])


def test_the_printed_exports_run_for_an_index_whose_name_starts_with_a_dash(cli, tmp_path, monkeypatch):
    """pathlib drops the ./ of ./-idx: the recipe printed `tokembed export -idx --to -idx-parquet`, exit 2
    ("No such option: -i")."""
    corpus = write_parquet(tmp_path / "corpus.parquet", [{"id": "a", "text": "one text"}])
    assert cli("encode", corpus, "-o", tmp_path / "-idx", "-q").exit_code == 0
    monkeypatch.chdir(tmp_path)
    recipes = printed_recipes(cli, "./-idx")
    for tool, to in (("DuckDB", "./-idx-parquet"), ("LanceDB", "./-idx-lancedb")):
        words = printed_command(recipes, tool)
        assert words[2:5] == ["./-idx", "--to", to], words
        if tool == "DuckDB" or importlib.util.find_spec("lancedb"):
            result = cli(*words[1:], "-q")
            assert result.exit_code == 0, (words, result.output)


@pytest.mark.parametrize("name", ["it's [1]*?", "back\\slash", "id=7", "embeddings=x", "~idx"])
def test_the_printed_duckdb_glob_reads_that_export_alone_whatever_its_name_holds(cli, tmp_path, monkeypatch, name):
    """The folder's name went into the glob as it is: `[1]` is a class there (no files found), and `*` or `?` read
    another index's export beside it; a backslash splits a DuckDB glob, whatever escapes it. A folder named
    `id=7-parquet` was read as a hive partition (every id '7-parquet'), and `~idx-parquet` as $HOME + idx-parquet."""
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = write_parquet(tmp_path / "corpus.parquet", [{"id": "a", "text": "one text"}, {"id": "b", "text": "two"}])
    assert cli("encode", corpus, "-o", tmp_path / name, "-q").exit_code == 0
    monkeypatch.chdir(tmp_path)
    sibling = tmp_path / "it's 1xy-parquet"  # what `it's [1]*?-parquet` matches as a glob
    sibling.mkdir()
    pq.write_table(pa.table({"id": ["another index"], "embeddings": [[[0.5]]]}), sibling / "part-000000.parquet")
    recipes = printed_recipes(cli, name)
    result = cli(*printed_command(recipes, "DuckDB")[1:], "-q")
    assert result.exit_code == 0, result.output
    sql = next(line for line in recipes if "SELECT" in line).split("--")[0].strip()
    rows = duckdb.sql(sql).fetchall()
    stored = read_index(tmp_path / name)
    assert rows == [(doc_id, len(stored[doc_id][0])) for doc_id in ("a", "b")], (sql, rows)
