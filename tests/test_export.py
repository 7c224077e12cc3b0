"""``tokembed export`` driven as a user does: Parquet read back by DuckDB, Polars and pyarrow, a LanceDB table
searched with LanceDB's own multivector search, the committed generation only, bad flags (exit 2), and a
failed or interrupted export that leaves its target as it was (a corrupt shard: exit 6)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from helpers import read_index, write_parquet

DOCS = [
    "The cat sat on the warm mat by the door.",
    "Quantum mechanics describes particles as waves.",
    "Dogs bark loudly at night in the village.",
    "Paris is the capital of France.",
    "A recipe for apple pie with cinnamon.",
    "The stock market fell sharply on Monday.",
    "Cats and dogs are common household pets.",
    "Photosynthesis turns sunlight into chemical energy.",
    "",
]
QUERIES = ["where do cats sleep", "capital city of France", "baking a pie", "physics of small particles"]


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory):
    """The demo model's index of DOCS in three shards (float16, as encode stores by default)."""
    from cli.main import run

    root = tmp_path_factory.mktemp("export")
    corpus = write_parquet(root / "corpus.parquet", [{"id": f"doc{i}", "text": t} for i, t in enumerate(DOCS)])
    assert run(["encode", str(corpus), "--output", str(root / "index"), "--shard-rows", "4", "--quiet"]) == 0
    return root / "index"


def test_parquet_export_read_by_duckdb_polars_and_pyarrow(cli, demo_index, tmp_path):
    import duckdb
    import polars as pl
    import pyarrow.parquet as pq

    out = tmp_path / "parquet"
    result = cli("export", demo_index, "--to", out, "--format", "parquet", "--log-format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "rows," not in result.stderr  # json drops the per-file progress lines, as compress's and encode's
    manifest = json.loads((demo_index / "manifest.json").read_text())
    files = sorted(out.glob("*.parquet"))
    assert [f.stem for f in files] == [os.path.basename(s["file"]).removesuffix(".arrow") for s in manifest["shards"]]
    assert len(files) == 3 and summary["files"] == 3 and summary["dtype"] == "float32"

    glob = str(out / "*.parquet")
    rows, tokens, token_ids = duckdb.sql(
        f"SELECT count(*), sum(len(embeddings)), sum(len(token_ids)) FROM read_parquet('{glob}')"
    ).fetchall()[0]
    assert (rows, tokens, token_ids) == (manifest["totals"]["rows"], manifest["totals"]["tokens"], manifest["totals"]["tokens"])
    assert rows == len(DOCS) and summary["tokens"] == tokens

    frame = pl.read_parquet(glob)
    assert frame.columns == ["id", "token_ids", "embeddings"] and frame.height == len(DOCS)

    stored = read_index(demo_index)
    table = pq.read_table(out)
    assert table.schema.field("embeddings").type == pa.list_(pa.list_(pa.float32(), manifest["dim"]))
    assert table.column("id").to_pylist() == list(stored)  # index order
    for doc_id, emb, ids in zip(table.column("id").to_pylist(), table.column("embeddings").to_pylist(), table.column("token_ids").to_pylist()):
        vectors, want_ids = stored[doc_id]
        assert np.array_equal(np.asarray(emb, np.float32).reshape(-1, manifest["dim"]), vectors)  # float16 -> float32 exact
        assert ids == want_ids.tolist()


def test_parquet_float16_and_refuses_a_folder_in_use(cli, demo_index, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "half"
    assert cli("export", demo_index, "--to", out, "--format", "parquet", "--dtype", "float16", "-q").exit_code == 0
    assert pq.read_schema(next(out.glob("*.parquet"))).field("embeddings").type.value_type.value_type == pa.float16()
    again = cli("export", demo_index, "--to", out, "--format", "parquet")
    assert again.exit_code == 2 and str(out) in again.stderr


def test_lance_multivector_search_top1_equals_score_top1(cli, demo_index, tmp_path):
    lancedb = pytest.importorskip("lancedb", reason="the [lance] extra is not installed")
    from tokembed.index import open_index
    from tokembed.search.api import encode_queries

    out = tmp_path / "lance"
    result = cli("export", demo_index, "--to", out, "--format", "lance", "--log-format", "json")
    assert result.exit_code == 0, result.output
    table = lancedb.connect(str(out)).open_table("documents")
    assert table.count_rows() == len(DOCS)
    assert table.schema.field("embeddings").type == pa.list_(pa.list_(pa.float32(), open_index(demo_index).dim))

    args = [a for q in QUERIES for a in ("--query", q)]
    scored = cli("score", *args, demo_index, "--top-k", "1", "--format", "jsonl", "-q")
    assert scored.exit_code == 0, scored.output
    tokembed_top1 = [json.loads(line)["doc_id"] for line in scored.stdout.splitlines()]
    vectors = encode_queries(open_index(demo_index), QUERIES)
    lance_top1 = [table.search(q.astype(np.float32)).limit(1).to_arrow().column("id")[0].as_py() for q in vectors]
    assert lance_top1 == tokembed_top1
    assert len(set(tokembed_top1)) > 1  # the queries really discriminate between documents


@pytest.mark.parametrize("flags", [["--format", "csv"], ["--format", "parquet", "--dtype", "bfloat16"]])
def test_bad_format_or_dtype_exits_2(cli, demo_index, tmp_path, flags):
    result = cli("export", demo_index, "--to", tmp_path / "out", *flags)
    assert result.exit_code == 2
    assert flags[-1] in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_index_exits_6(cli, tmp_path):
    assert cli("export", tmp_path / "nope", "--to", tmp_path / "out", "--format", "parquet").exit_code == 6


@pytest.mark.slow
def test_export_during_a_locked_half_written_run_reads_the_committed_generation(cli, demo_index, tmp_path):
    """A second encode pauses just before its commit (lock held, new shards on disk): export sees the old rows."""
    import shutil

    import pyarrow.parquet as pq

    index = tmp_path / "index"
    shutil.copytree(demo_index, index)
    corpus = write_parquet(tmp_path / "v2.parquet", [{"id": f"new{i}", "text": f"new text {i}"} for i in range(6)])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKEMBED_TEST_PAUSE_AT": "commit", "TOKEMBED_TEST_PAUSE_SECONDS": "120"}
    writer = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "encode", str(corpus), "-o", str(index), "--shard-rows", "4", "-q"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        _wait_for_staged_shards(index, writer)
        out = tmp_path / "out"
        result = cli("export", index, "--to", out, "--format", "parquet", "-q")
        assert result.exit_code == 0, result.output
        assert pq.read_table(out).column("id").to_pylist() == list(read_index(demo_index))
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()


def _wait_for_staged_shards(index, writer, timeout: float = 120.0) -> None:
    """Until the paused writer holds the lock with files that the committed manifest does not list."""
    listed = {s["file"] for s in json.loads((index / "manifest.json").read_text())["shards"]}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert writer.poll() is None, writer.stderr.read().decode()
        staged = {f"data/{p.name}" for p in (index / "data").iterdir()} - listed
        if staged and (index / ".lock").exists() and _locked(index / ".lock"):
            time.sleep(0.5)  # the pause point is just before the manifest replace
            return
        time.sleep(0.2)
    raise AssertionError("the writer never staged new shards")


def _locked(path) -> bool:
    import fcntl

    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_info_shows_both_recipes(cli, demo_index):
    result = cli("info", demo_index)
    assert result.exit_code == 0, result.output
    assert "--format parquet" in result.stderr and "--format lance" in result.stderr


def test_an_index_of_pdf_pages_exports_their_file_and_page(cli, checkpoint, tmp_path):
    import duckdb

    from pdfs import text_pdf

    docs = tmp_path / "docs"
    (docs / "manuals").mkdir(parents=True)
    (docs / "a.txt").write_text("a plain text file")
    text_pdf(docs / "manuals" / "m.pdf", ["first page text", "second page text"])
    index = tmp_path / "index"
    assert cli("encode", docs, "--model", checkpoint("stanford"), "-o", index).exit_code == 0
    out = tmp_path / "parquet"
    result = cli("export", index, "--to", out, "--format", "parquet")
    assert result.exit_code == 0, result.output
    rows = duckdb.sql(f"SELECT id, source_file, page FROM read_parquet('{out}/*.parquet') ORDER BY id").fetchall()
    assert rows == [("a.txt", None, None), ("manuals/m.pdf#page=1", "manuals/m.pdf", 1), ("manuals/m.pdf#page=2", "manuals/m.pdf", 2)]
    lance = cli("export", index, "--to", tmp_path / "lance", "--format", "lance")
    assert lance.exit_code == 0, lance.output
    import lancedb

    table = lancedb.connect(str(tmp_path / "lance")).open_table("documents").to_arrow()
    assert table.column("page").to_pylist() == [None, 1, 2] and table.column("source_file").to_pylist()[1] == "manuals/m.pdf"


def test_an_empty_index_exports_one_file_of_no_rows_that_duckdb_reads(cli, tmp_path):
    """A glob over a folder with no files is an error in DuckDB ("No files found"): the empty index's export
    holds one file with the schema and no rows."""
    import duckdb

    corpus = write_parquet(tmp_path / "empty.parquet", [])
    index, out = tmp_path / "index", tmp_path / "export"
    assert cli("encode", corpus, "-o", index).exit_code == 0
    result = cli("export", index, "--to", out, "--format", "parquet", "--log-format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 0 and [f.name for f in out.iterdir()] == ["part-000000.parquet"]
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{out}/*.parquet')")
    assert relation.columns == ["id", "token_ids", "embeddings"] and relation.fetchall() == []
    facts = json.loads(cli("info", index, "--json").stdout)  # no per-token figures of no tokens (manifest 1661 B/token)
    assert facts["bytes_per_token"] is None and facts["bytes_per_token_by_part"] is None
    assert cli("info", index).exit_code == 0


def test_table_with_parquet_exits_2(cli, demo_index, tmp_path):
    result = cli("export", demo_index, "--to", tmp_path / "out", "--format", "parquet", "--table", "t")
    assert result.exit_code == 2 and "only --format lance writes a table" in result.stderr


# ---------------------------------------------------------------------------------------------- failures


@pytest.fixture
def corrupt_index(demo_index, tmp_path):
    """A copy of the demo index whose last of three shards fails its checksum; ``repair()`` puts it back."""
    index = tmp_path / "corrupt"
    shutil.copytree(demo_index, index)
    shard = index / "data" / "part-000002.arrow"
    good = shard.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    shard.write_bytes(bytes(bad))
    return index, lambda: shard.write_bytes(good)


def _beside(path) -> list[str]:
    """The entries of ``path``'s parent, hidden staging folders included."""
    return sorted(os.listdir(path.parent))


def _assert_parquet_round_trips(out, demo_index) -> None:
    import pyarrow.parquet as pq

    stored = read_index(demo_index)
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(stored)
    for doc_id, emb in zip(table.column("id").to_pylist(), table.column("embeddings").to_pylist()):
        assert np.array_equal(np.asarray(emb, np.float32).reshape(stored[doc_id][0].shape), stored[doc_id][0])


@pytest.mark.parametrize("target", ["new", "empty folder"])
def test_parquet_export_of_a_corrupt_shard_exits_6_and_leaves_the_target_as_it_was(cli, corrupt_index, demo_index, tmp_path, target):
    """Two shards are written before the corrupt third: none of them may reach the target (a glob would read half)."""
    index, repair = corrupt_index
    out = tmp_path / "parquet"
    if target == "empty folder":
        out.mkdir()
    before = _beside(out)
    result = cli("export", index, "--to", out, "--format", "parquet")
    assert result.exit_code == 6, result.output
    assert "part-000002.arrow" in result.stderr
    assert _beside(out) == before and (not out.exists() if target == "new" else list(out.iterdir()) == [])

    repair()
    again = cli("export", index, "--to", out, "--format", "parquet", "-q")
    assert again.exit_code == 0, again.output
    assert _beside(out) == sorted(before + ([] if target == "empty folder" else ["parquet"]))
    _assert_parquet_round_trips(out, demo_index)


def test_an_interrupted_parquet_export_leaves_no_target(cli, demo_index, tmp_path, monkeypatch):
    """SIGTERM and Ctrl-C reach the export as KeyboardInterrupt (cli/_signals.py): here after the 2nd of 3 files."""
    import tokembed.index.export as export

    def interrupt(event, count):
        if (event, count) == ("export", 2):
            raise KeyboardInterrupt

    monkeypatch.setattr(export, "fault_point", interrupt)
    out = tmp_path / "parquet"
    before = _beside(out)
    assert cli("export", demo_index, "--to", out, "--format", "parquet").exit_code == 130
    assert _beside(out) == before


def test_a_sigkilled_exports_staging_is_removed_by_the_next_export(cli, demo_index, tmp_path):
    out = tmp_path / "parquet"
    left = tmp_path / ".parquet.export-tmp-999999999-0123abcd"  # a killed export's (no lock: its process is gone)
    left.mkdir()
    (left / "part-000000.parquet").write_bytes(b"half")
    assert cli("export", demo_index, "--to", out, "--format", "parquet").exit_code == 0
    assert not left.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["parquet"]


def test_lance_export_of_a_corrupt_shard_exits_6_and_leaves_no_table(cli, corrupt_index, tmp_path):
    lancedb = pytest.importorskip("lancedb", reason="the [lance] extra is not installed")

    index, repair = corrupt_index
    new = tmp_path / "new-db"
    before = _beside(new)
    result = cli("export", index, "--to", new, "--format", "lance")
    assert result.exit_code == 6, result.output
    assert "part-000002.arrow" in result.stderr and "Traceback" not in result.output
    assert _beside(new) == before

    existing = tmp_path / "db"
    lancedb.connect(str(existing)).create_table("keep", data=pa.table({"x": [1, 2]}))
    before, inside = _beside(existing), sorted(p.relative_to(existing) for p in existing.rglob("*"))
    assert cli("export", index, "--to", existing, "--format", "lance").exit_code == 6
    assert _beside(existing) == before and sorted(p.relative_to(existing) for p in existing.rglob("*")) == inside

    repair()
    again = cli("export", index, "--to", existing, "--format", "lance", "-q")
    assert again.exit_code == 0, again.output
    db = lancedb.connect(str(existing))
    assert db.open_table("documents").count_rows() == len(DOCS) and db.open_table("keep").count_rows() == 2


@pytest.mark.parametrize("table", ["a/b", "", "..", "a b", "tbl:1"])
def test_a_bad_lance_table_name_exits_2_before_any_work(cli, demo_index, tmp_path, table):
    out = tmp_path / "db"
    result = cli("export", demo_index, "--to", out, "--format", "lance", "--table", table)
    assert result.exit_code == 2, result.output
    assert "--table" in result.stderr and "letters, digits, underscores, hyphens and periods" in result.stderr
    assert not out.exists()


def test_a_good_lance_table_name_is_accepted(cli, demo_index, tmp_path):
    lancedb = pytest.importorskip("lancedb", reason="the [lance] extra is not installed")

    result = cli("export", demo_index, "--to", tmp_path / "db", "--format", "lance", "--table", "v1.docs-2_a", "-q")
    assert result.exit_code == 0, result.output
    assert lancedb.connect(str(tmp_path / "db")).open_table("v1.docs-2_a").count_rows() == len(DOCS)


def test_a_compressed_only_index_gets_an_export_hint(cli, demo_index, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(demo_index, index)
    assert cli("compress", index, "--drop-vectors", "--centroids", "8", "-q").exit_code == 0
    result = cli("export", index, "--to", tmp_path / "out", "--format", "parquet")
    assert result.exit_code == 2, result.output
    assert "hint: export writes the stored vectors" in result.stderr and "--exact" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["parquet", "lance"])
def test_sigterm_during_an_export_exits_130_and_leaves_no_target(demo_index, tmp_path, fmt):
    """A real SIGTERM while the export pauses after its 1st shard (for lance, LanceDB's own thread is reading)."""
    if fmt == "lance":
        pytest.importorskip("lancedb", reason="the [lance] extra is not installed")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKEMBED_TEST_PAUSE_AT": "export:1", "TOKEMBED_TEST_PAUSE_SECONDS": "60"}
    run = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "export", str(demo_index), "--to", str(out), "--format", fmt],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        _wait_for_staging(out, run)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=30) == 130, run.stderr.read().decode()
    finally:
        run.kill()
        run.wait()
    assert os.listdir(tmp_path) == []


def _wait_for_staging(out, run, timeout: float = 60.0) -> None:
    """Until the export has written something into its hidden staging folder beside ``out``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.poll() is None, run.stderr.read().decode()
        staging = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and p.is_dir()]
        if staging and any(p.is_file() for p in staging[0].rglob("*")):
            time.sleep(0.5)
            return
        time.sleep(0.1)
    raise AssertionError("the export never wrote into a staging folder")



def test_quiet_silences_the_library_warnings_too(cli, demo_index, tmp_path, monkeypatch):
    """A warning the library logs while exporting went to stderr with --quiet too (as no other command's did);
    without it, it is a ``tokembed: warning:`` line (--log-format json as well)."""
    import logging

    from tokembed.index import export as exporting

    real = exporting.export_index

    def warns(*args, **kwargs):
        logging.getLogger("tokembed").warning("something to hear of")
        return real(*args, **kwargs)

    monkeypatch.setattr(exporting, "export_index", warns)
    result = cli("export", demo_index, "--to", tmp_path / "a", "-f", "parquet", "--log-format", "json")
    assert result.exit_code == 0, result.output
    assert "tokembed: warning: something to hear of" in result.stderr
    assert json.loads(result.stdout)["files"] == 3
    quiet = cli("export", demo_index, "--to", tmp_path / "b", "-f", "parquet", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
