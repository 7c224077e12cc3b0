"""Cron re-runs after a kill, with real processes: what a journal may be resumed onto, what a failed run leaves
behind, and an id column renamed upstream."""

from __future__ import annotations

import json
import signal

import pytest

from helpers import manifest, write_jsonl, write_manifest, write_parquet
from test_cron import assert_same_index, change_weights_in_place, corpus_rows, encode
from tokembed.index.journal import journaled_shards

EXIT_BAD_INPUT = 3


def listed_shards(out) -> set[str]:
    return {shard["file"].split("/")[-1] for shard in manifest(out)["shards"]}


def test_a_resume_after_the_weights_changed_in_place_starts_over(tmp_path, minilm_path):
    """A tensor changed in place between the kill and the re-run (same files, sizes, headers, mtime): the journal
    did not record the weights digest, so the re-run resumed the killed run's shards (old weights' vectors) and
    committed them beside new ones under the new weights' digest, exit 0."""
    import shutil

    model = tmp_path / "minilm"
    shutil.copytree(minilm_path, model)
    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(30))
    out = tmp_path / "index"
    killed = encode(corpus, out, "--model", model, env={"TOKEMBED_TEST_KILL_AT": "shard:2"})
    assert killed.returncode == -signal.SIGKILL
    change_weights_in_place(model)
    rerun = encode(corpus, out, "--model", model)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["resumed_shards"] == 0
    fresh = tmp_path / "fresh"
    assert encode(corpus, fresh, "--model", model).returncode == 0
    assert_same_index(out, fresh)


def test_full_after_a_full_run_killed_after_its_commit_rebuilds_against_the_committed_index(tmp_path):
    """A --full run killed after its commit, before it removed its journal: the next --full run took that journal
    as its own (its signature's base was None under --full) and committed the same generation again, nothing
    encoded, counting against the index before the killed run (20 added) instead of the one it replaced."""
    rows = corpus_rows(40)
    corpus = write_parquet(tmp_path / "c.parquet", rows[:20])
    out = tmp_path / "index"
    assert encode(corpus, out).returncode == 0
    write_parquet(corpus, rows[10:])
    killed = encode(corpus, out, "--full", env={"TOKEMBED_TEST_KILL_AT": "committed"})
    assert killed.returncode == -signal.SIGKILL and (out / "run-journal.json").exists()
    assert [shard["rows"] for shard in manifest(out)["shards"]] == [10, 10, 10]  # committed
    rerun = encode(corpus, out, "--full")
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["resumed_shards"] == 0 and summary["encoded_tokens"] > 0
    assert (summary["added"], summary["updated"], summary["deleted"], summary["unchanged"]) == (0, 30, 0, 0)
    assert {p.name for p in (out / "data").iterdir()} == listed_shards(out)
    assert not (out / "run-journal.json").exists()


@pytest.mark.parametrize("corpus_changes", [True, False], ids=["journal-discarded", "journal-resumed"])
def test_a_failed_run_after_a_sigkill_leaves_no_shard_of_the_killed_run(tmp_path, corpus_changes):
    """A run killed after 2 shards, then a run that fails (a duplicate id, exit 3): it removed the journal but
    left the killed run's shards in data/, listed nowhere. Either the corpus changed (the journal is not resumed)
    or the duplicate lies past the killed run's shards (the journal is resumed, then the run fails)."""
    rows = corpus_rows(60)
    corpus = write_parquet(tmp_path / "c.parquet", rows[:20])
    out = tmp_path / "index"
    assert encode(corpus, out).returncode == 0
    committed = listed_shards(out)
    duplicated = rows[:55] + [rows[3]] + rows[55:]
    write_parquet(corpus, rows if corpus_changes else duplicated)
    killed = encode(corpus, out, env={"TOKEMBED_TEST_KILL_AT": "shard:2"})
    assert killed.returncode == -signal.SIGKILL
    assert len({p.name for p in (out / "data").iterdir()} - committed) == 2
    if corpus_changes:
        write_parquet(corpus, duplicated)
    failed = encode(corpus, out)
    assert failed.returncode == EXIT_BAD_INPUT and "duplicate id 'doc0003'" in failed.stderr, failed.stderr
    assert {p.name for p in (out / "data").iterdir()} == committed == listed_shards(out)
    assert not (out / "run-journal.json").exists()


def test_sigterm_keeps_the_killed_runs_shards_with_the_journal(tmp_path):
    """SIGTERM keeps the journal, and with it the shards it lists (the killed run's included)."""
    import subprocess
    import sys
    import time

    from test_cron import ENV

    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(60))
    out = tmp_path / "index"
    assert encode(corpus, out, env={"TOKEMBED_TEST_KILL_AT": "shard:2"}).returncode == -signal.SIGKILL
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "encode", corpus, "-o", out, "--shard-rows", "10"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**ENV, "TOKEMBED_TEST_PAUSE_AT": "shard:3", "TOKEMBED_TEST_PAUSE_SECONDS": "60"},
    )
    deadline = time.time() + 60
    while time.time() < deadline and len(journaled_shards(out)) != 3:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 130
    assert len(list((out / "data").iterdir())) == 3
    rerun = encode(corpus, out)
    assert rerun.returncode == 0 and json.loads(rerun.stdout)["resumed_shards"] == 3, rerun.stderr


@pytest.mark.parametrize("suffix", [".parquet", pytest.param(".jsonl", marks=pytest.mark.slow)])  # the same check, ~28 s each
def test_an_id_column_renamed_upstream_is_refused_not_replaced_by_row_numbers(tmp_path, suffix):
    """The id column renamed (id -> doc_id): the next run numbered the rows instead, exit 0 with every row
    deleted and added again. Refused as a renamed text column is; --id-column reads the new name, --full takes
    row numbers, and an index of an earlier release (no id_column recorded) runs as before."""
    write = write_parquet if suffix == ".parquet" else write_jsonl
    rows = corpus_rows(10)
    corpus = write(tmp_path / f"c{suffix}", rows)
    out = tmp_path / "index"
    assert encode(corpus, out).returncode == 0
    assert manifest(out)["id_column"] == "id"
    before = (out / "manifest.json").read_text()
    write(corpus, [{"doc_id": row["id"], "text": row["text"]} for row in rows])
    refused = encode(corpus, out)
    lacking = "no id column 'id' (columns" if suffix == ".parquet" else "its first record has no id field 'id' (fields"
    assert refused.returncode == EXIT_BAD_INPUT, refused.stderr
    assert f"{corpus}: {lacking}: doc_id, text)" in refused.stderr and "--id-column" in refused.stderr
    assert (out / "manifest.json").read_text() == before
    renamed = json.loads(encode(corpus, out, "--id-column", "doc_id").stdout)
    assert (renamed["unchanged"], renamed["added"], renamed["deleted"]) == (10, 0, 0)
    assert manifest(out)["id_column"] == "doc_id"
    numbered = json.loads(encode(corpus, out, "--full").stdout)
    assert (numbered["added"], numbered["deleted"]) == (10, 10) and manifest(out)["id_column"] is None
    assert json.loads(encode(corpus, out).stdout)["unchanged"] == 10  # row numbers stay row numbers
    write(corpus, rows)
    assert encode(corpus, out, "--full").returncode == 0
    earlier = {key: value for key, value in manifest(out).items() if key != "id_column"}  # an earlier release's
    write_manifest(out, earlier, sealed=False)
    write(corpus, [{"doc_id": row["id"], "text": row["text"]} for row in rows])
    assert json.loads(encode(corpus, out).stdout)["deleted"] == 10  # as before: not checked
