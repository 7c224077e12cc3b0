"""Cron-safe re-indexing with real processes: SIGKILL and resume, incremental runs, the writer lock,
disk full, and readers during a commit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import manifest, read_index, write_parquet
from tokembed.index.journal import journaled_shards

EXIT_LOCKED, EXIT_WRITE = 7, 8
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def change_weights_in_place(model: Path) -> None:
    """One tensor of MiniLM's model.safetensors changed, its size and mtime kept (a LoRA merged in place)."""
    from safetensors.torch import load_file, save_file

    weights = model / "model.safetensors"
    state = load_file(str(weights))
    state["encoder.layer.2.attention.self.query.weight"] *= 0.5
    stat = weights.stat()
    save_file(state, str(weights), metadata={"format": "pt"})
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))



def tokembed(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True, text=True, env={**ENV, **(env or {})}, **kwargs
    )


def start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**ENV, **(env or {})},
    )


def corpus_rows(count: int, version: int = 0) -> list[dict]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    return [{"id": f"doc{i:04d}", "text": " ".join(words[(i + j + version) % 12] for j in range(3 + i % 17))} for i in range(count)]


def encode(corpus, out, *extra, env=None):
    return tokembed("encode", corpus, "-o", out, "--shard-rows", 10, "--log-format", "json", *extra, env=env)


def assert_same_index(a, b):
    rows_a, rows_b = read_index(a), read_index(b)
    assert list(rows_a) == list(rows_b)
    for key in rows_a:
        assert np.array_equal(rows_a[key][0], rows_b[key][0]) and np.array_equal(rows_a[key][1], rows_b[key][1])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A corpus of 120 rows (12 shards) and its uninterrupted index, shared by the kill tests."""
    root = tmp_path_factory.mktemp("cron")
    corpus = write_parquet(root / "corpus.parquet", corpus_rows(120))
    reference = root / "reference"
    result = encode(corpus, reference)
    assert result.returncode == 0, result.stderr
    return root, corpus, reference


@pytest.mark.parametrize("kill_at", ["shard:3", pytest.param("inside-shard:5", marks=pytest.mark.slow), "commit"])
def test_sigkill_then_rerun_equals_uninterrupted(work, tmp_path, kill_at):
    root, corpus, reference = work
    out = tmp_path / "index"
    old = write_parquet(tmp_path / "old.parquet", corpus_rows(7, version=3))
    assert encode(old, out).returncode == 0  # a previous generation that must stay readable
    killed = encode(corpus, out, env={"TOKEMBED_TEST_KILL_AT": kill_at})
    assert killed.returncode == -signal.SIGKILL
    # the last good index is still whole: info and score work on it
    info = tokembed("info", out, "--json", "--verify")
    assert info.returncode == 0 and json.loads(info.stdout)["rows"] == 7
    scored = tokembed("score", "--query", "alpha beta", out, "--format", "jsonl", "--top-k", 3)
    assert scored.returncode == 0, scored.stderr
    assert {json.loads(line)["doc_id"] for line in scored.stdout.splitlines()} <= {r["id"] for r in corpus_rows(7, 3)}
    rerun = encode(corpus, out)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    # The demo model's raw mode stores every token it encodes: the rerun encoded the shards after the resumed ones,
    # and counted the killed run's tokens in its encoded tokens and tokens/s (none at all for a kill at the commit).
    resumed = manifest(out)["shards"][summary["resumed_shards"]:]
    assert summary["encoded_tokens"] == sum(shard["tokens"] for shard in resumed)
    if kill_at == "shard:3":
        assert summary["resumed_shards"] == 3  # picked up, not started over
        stats = manifest(out)["stats"]["useful_token_fraction"]  # the journal carries the killed run's tokens
        assert stats == manifest(reference)["stats"]["useful_token_fraction"]
    assert_same_index(out, reference)
    listed = {shard["file"].split("/")[-1] for shard in manifest(out)["shards"]}
    assert {p.name for p in (out / "data").iterdir()} == listed  # no leftovers of the killed run
    assert not (out / "run-journal.json").exists()


class RecordedProgress:
    def __init__(self) -> None:
        self.total, self.rows, self.lines = None, 0, []

    def start(self, total_rows) -> None:
        self.total = total_rows

    def advance(self, rows: int, tokens: int) -> None:
        self.rows += rows

    def log(self, message: str) -> None:
        self.lines.append(message)


def test_a_resumed_runs_progress_counts_the_rows_left(work, tmp_path):
    """The bar's total was the whole corpus while only the rows after the resumed shards advance it: a run
    resumed after 3 of 12 shards ended at 90/120 rows, its ETA reckoned for 30 rows more."""
    from tokembed import EncodeJob, encode_corpus

    root, corpus, reference = work
    out = tmp_path / "index"
    assert encode(corpus, out, env={"TOKEMBED_TEST_KILL_AT": "shard:3"}).returncode == -signal.SIGKILL
    progress = RecordedProgress()
    summary = encode_corpus(EncodeJob([corpus], out, shard_rows=10, devices="cpu"), progress)
    assert summary.resumed_shards == 3
    assert (progress.total, progress.rows) == (90, 90)
    assert "resuming: 3 finished shard(s) of an interrupted run verified (30 rows already done), continuing after them" in progress.lines
    assert_same_index(out, reference)


def test_an_index_inside_its_input_folder_resumes_and_is_not_its_own_input(work, tmp_path):
    """The index's files (shards, journal, lock) change as the run goes: counted as inputs, they made every
    journal look stale, so a killed run never resumed; and they were listed as ignored input files."""
    root, corpus, reference = work
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "corpus.parquet").write_bytes(corpus.read_bytes())
    out = folder / "index"
    assert encode(folder, out, env={"TOKEMBED_TEST_KILL_AT": "shard:3"}).returncode == -signal.SIGKILL
    rerun = encode(folder, out)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["resumed_shards"] == 3
    assert_same_index(out, reference)
    text_folder = tmp_path / "texts"
    text_folder.mkdir()
    (text_folder / "a.txt").write_text("alpha beta")
    for _ in range(2):
        again = encode(text_folder, text_folder / "index")
        assert again.returncode == 0, again.stderr
        assert manifest(text_folder / "index")["ignored"] == []


def test_timed_sigkills_never_break_the_index(work, tmp_path):
    root, corpus, reference = work
    out = tmp_path / "index"
    for delay in (0.5, 3.0, 5.0):
        process = start("encode", corpus, "-o", out, "--shard-rows", 10, env={"TOKEMBED_TEST_PAUSE_AT": "shard", "TOKEMBED_TEST_PAUSE_SECONDS": "0.3"})
        time.sleep(delay)
        process.kill()
        process.communicate()
        if (out / "manifest.json").exists():
            assert tokembed("info", out, "--verify").returncode == 0
    assert encode(corpus, out).returncode == 0
    assert_same_index(out, reference)


def test_incremental_counts_and_equals_full_rebuild(tmp_path):
    rows = corpus_rows(40)
    corpus = write_parquet(tmp_path / "c.parquet", rows)
    out = tmp_path / "index"
    assert json.loads(encode(corpus, out).stdout)["added"] == 40
    changed = [r for r in rows if r["id"] not in ("doc0005", "doc0006")]  # 2 deleted
    changed[0] = {"id": "doc0000", "text": "a completely different text"}  # 1 updated
    changed.insert(10, {"id": "new-1", "text": "a new row"})  # 2 added
    changed.append({"id": "new-2", "text": "another new row"})
    write_parquet(corpus, changed)
    summary = json.loads(encode(corpus, out).stdout)
    assert (summary["added"], summary["updated"], summary["deleted"], summary["unchanged"]) == (2, 1, 2, 37)
    assert summary["full_rebuild"] is False
    rebuilt = tmp_path / "rebuilt"
    assert encode(corpus, rebuilt, "--full").returncode == 0
    rows_inc, rows_full = read_index(out), read_index(rebuilt)
    assert list(rows_inc) == [r["id"] for r in changed] == list(rows_full)  # corpus order
    for key in rows_inc:
        assert rows_inc[key][1].tolist() == rows_full[key][1].tolist()
        assert np.abs(rows_inc[key][0] - rows_full[key][0]).max() <= 1e-3  # float16 storage noise
    again = json.loads(encode(corpus, out).stdout)
    assert (again["added"], again["updated"], again["deleted"], again["unchanged"]) == (0, 0, 0, 40)
    assert again["encoded_tokens"] == 0


def test_changing_settings_reencodes_everything(tmp_path):
    """A full rebuild re-encodes every row, and still counts against the index it replaces: rows it held are
    updated, rows gone are deleted (a cron monitor watching deletions sees them)."""
    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(15))
    out = tmp_path / "index"
    assert encode(corpus, out).returncode == 0
    write_parquet(corpus, corpus_rows(15)[3:] + [{"id": "new", "text": "a new row"}])
    result = encode(corpus, out, "--dimensions", 32)
    summary = json.loads(result.stdout)
    assert summary["full_rebuild"] is True and summary["unchanged"] == 0
    assert (summary["added"], summary["updated"], summary["deleted"]) == (1, 12, 3)
    assert manifest(out)["dim"] == 32
    forced = json.loads(encode(corpus, out, "--dimensions", 32, "--full").stdout)
    assert (forced["added"], forced["updated"], forced["deleted"], forced["unchanged"]) == (0, 13, 0, 0)
    assert forced["encoded_tokens"] > 0


def test_weights_changed_in_place_reencode_everything_and_score_refuses_the_old_index(tmp_path, minilm_path):
    """A tensor changed in the middle of the weights file (a LoRA merged into the query weights and saved back in
    place: same files, sizes, headers and edges) kept the model fingerprint: the next cron run carried every
    row's old vectors beside new rows' new ones, and score encoded queries with the new weights (exit 0)."""
    import shutil

    model = tmp_path / "minilm"
    shutil.copytree(minilm_path, model)
    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(6))
    out = tmp_path / "index"
    assert encode(corpus, out, "--model", model).returncode == 0
    change_weights_in_place(model)
    refused = tokembed("score", out, "--query", "alpha beta", "--model", model)
    assert refused.returncode == 5 and "its weights changed since the index was built" in refused.stderr
    result = encode(corpus, out, "--model", model)
    summary = json.loads(result.stdout)
    assert summary["full_rebuild"] is True and (summary["updated"], summary["unchanged"]) == (6, 0), result.stderr
    fresh = tmp_path / "fresh"
    assert encode(corpus, fresh, "--model", model).returncode == 0
    assert_same_index(out, fresh)
    assert tokembed("score", out, "--query", "alpha beta", "--model", model).returncode == 0


@pytest.mark.parametrize("command", ["encode", "compress"])
@pytest.mark.parametrize("wait", ["-5", "nan", "inf"])
def test_a_wait_that_is_not_a_number_of_seconds_exits_2(tmp_path, command, wait):
    """compress took --wait -5, and --wait nan waited forever on a held lock (both commands)."""
    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(3))
    out = tmp_path / "index"
    assert encode(corpus, out).returncode == 0
    args = [corpus, "-o", out] if command == "encode" else [out]
    result = tokembed(command, *args, "--wait", wait, timeout=120)
    assert result.returncode == 2 and "--wait must be a number of seconds, 0 or more" in result.stderr, result.stderr


def test_compress_refuses_a_centroid_count_before_saying_it_trains(tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(3))
    out = tmp_path / "index"
    assert encode(corpus, out).returncode == 0
    result = tokembed("compress", out, "--centroids", 0)
    assert result.returncode == 2 and "--centroids 0: must be a whole number between 1" in result.stderr
    assert "training" not in result.stderr


def test_second_writer_gets_the_lock_exit_code(tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(30))
    out = tmp_path / "index"
    holder = start("encode", corpus, "-o", out, "--shard-rows", 10, env={"TOKEMBED_TEST_PAUSE_AT": "shard:1", "TOKEMBED_TEST_PAUSE_SECONDS": "60"})
    try:
        deadline = time.time() + 60
        while not (out / "run-journal.json").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = encode(corpus, out)
        assert second.returncode == EXIT_LOCKED
        assert f"pid {holder.pid}" in second.stderr and len(second.stderr.strip().splitlines()) <= 2
        # told before any model is loaded: a model that does not exist is not even looked for
        unloadable = encode(corpus, out, "--model", tmp_path / "no-such-model")
        assert unloadable.returncode == EXIT_LOCKED, unloadable.stderr
    finally:
        holder.kill()
        holder.communicate()
    third = encode(corpus, out)  # the kernel released the lock with the killed process
    assert third.returncode == 0, third.stderr


def test_wait_for_the_lock(tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(20))
    out = tmp_path / "index"
    holder = start("encode", corpus, "-o", out, "--shard-rows", 10, env={"TOKEMBED_TEST_PAUSE_AT": "shard:1", "TOKEMBED_TEST_PAUSE_SECONDS": "4"})
    deadline = time.time() + 60
    while not (out / "run-journal.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    waiter = encode(corpus, out, "--wait", 120)
    holder.communicate()
    assert holder.returncode == 0 and waiter.returncode == 0, waiter.stderr
    assert json.loads(waiter.stdout)["unchanged"] == 20


def test_disk_full_leaves_previous_index(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        out = mount / "index"
        small = write_parquet(tmp_path / "small.parquet", corpus_rows(5))
        assert encode(small, out).returncode == 0
        before = (out / "manifest.json").read_text()
        big = write_parquet(tmp_path / "big.parquet", corpus_rows(400))
        result = encode(big, out, "--store-dtype", "float32")
        assert result.returncode == EXIT_WRITE, result.stderr
        assert "write error" in result.stderr
        assert (out / "manifest.json").read_text() == before
        assert tokembed("info", out, "--verify").returncode == 0
        assert list(read_index(out)) == [r["id"] for r in corpus_rows(5)]
    finally:
        subprocess.run(["umount", str(mount)])


def test_readers_see_one_generation_during_commits(tmp_path):
    from tokembed.index import open_index

    out = tmp_path / "index"
    versions = [write_parquet(tmp_path / f"v{v}.parquet", corpus_rows(25 + 10 * v, version=v)) for v in range(2)]
    expected = [[r["id"] for r in corpus_rows(25 + 10 * v, version=v)] for v in range(2)]
    assert encode(versions[0], out).returncode == 0
    failures, reads = [], []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                index = open_index(out)
                ids = [i for batch in index.iter_batches(["id"]) for i in batch.column("id").to_pylist()]
                index.verify()
                reads.append(ids)
            except Exception as exc:  # any failure is a bug: record it for the assertion
                failures.append(repr(exc))
            time.sleep(0.02)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for round_ in range(3):
            assert encode(versions[(round_ + 1) % 2], out, "--full").returncode == 0
    finally:
        stop.set()
        thread.join()
    assert failures == []
    assert reads and all(ids in expected for ids in reads)


def test_sigterm_exits_130_and_the_next_run_resumes(work, tmp_path):
    root, corpus, reference = work
    out = tmp_path / "index"
    process = start("encode", corpus, "-o", out, "--shard-rows", 10, env={"TOKEMBED_TEST_PAUSE_AT": "shard:2", "TOKEMBED_TEST_PAUSE_SECONDS": "60"})
    deadline = time.time() + 60
    while time.time() < deadline:
        if len(journaled_shards(out)) == 2:
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in stderr
    assert not (out / "manifest.json").exists()  # nothing was committed
    rerun = encode(corpus, out)
    assert rerun.returncode == 0 and json.loads(rerun.stdout)["resumed_shards"] == 2
    assert_same_index(out, reference)


def test_a_lock_still_held_after_the_wait_says_it_waited(tmp_path):
    """--wait 2 given, the hint said "pass --wait SECONDS"."""
    from tokembed.errors import IndexLockedError
    from tokembed.index.lock import IndexLock

    tmp_path.joinpath("index").mkdir()
    with IndexLock(tmp_path / "index"):
        with pytest.raises(IndexLockedError, match=r"still locked .* after waiting 0\.3 s") as refused:
            with IndexLock(tmp_path / "index", wait_seconds=0.3):
                pass
        assert "longer --wait" in refused.value.hint
        with pytest.raises(IndexLockedError, match="locked by another") as refused:
            with IndexLock(tmp_path / "index"):
                pass
        assert "pass --wait SECONDS" in refused.value.hint
