"""SIGTERM stops every command as Ctrl-C does (exit 130, the previous index untouched), and only while the command
runs: ``cli.main.run`` called in-process leaves the caller's handler as it was, and works from any thread.
A signal landing from the commit on is held until the clean-up is done, and the message says the new index
is committed (``tokembed/index/commit_window.py``)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import exec_after, manifest, write_jsonl
from plaid_support import ENV, corpus_rows, tokembed
from tokembed.index import open_index

AFTER_COMMIT = "interrupted after the new index was committed; nothing to redo"


def test_sigterm_during_compress_exits_130_and_keeps_the_committed_generation(compressed, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(compressed[0], folder)
    before = set((folder / "plaid").glob("codes-*.safetensors"))
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "compress", str(folder), "--nbits", "4", "--centroids", "128"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**ENV, "TOKEMBED_TEST_PAUSE_AT": "codes:1", "TOKEMBED_TEST_PAUSE_SECONDS": "60"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not set((folder / "plaid").glob("codes-*.safetensors")) - before:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in stderr, stderr
    assert manifest(folder)["search"]["nbits"] == 2  # the generation before the run is still the committed one
    rerun = tokembed("compress", folder, "--nbits", 4, "--centroids", 128)
    assert rerun.returncode == 0 and manifest(folder)["search"]["nbits"] == 4, rerun.stderr


def test_an_in_process_run_restores_the_callers_sigterm_handler(tmp_path, cli):
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_rows(5))

    def own(signum, frame) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, own)
    interrupt = signal.getsignal(signal.SIGINT)
    try:
        assert cli("encode", corpus, "-o", tmp_path / "index", "-q").exit_code == 0
        assert signal.getsignal(signal.SIGTERM) is own  # not the ignoring once the work was done: that is the program's
        assert signal.getsignal(signal.SIGINT) is interrupt
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_run_works_from_a_thread_other_than_the_main_one(tmp_path):
    """Python sets signal handlers only from the main thread; a script's worker thread still runs a command."""
    from cli.main import run

    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_rows(5))
    codes: list = []
    thread = threading.Thread(target=lambda: codes.append(run(["encode", str(corpus), "-o", str(tmp_path / "index"), "-q"])))
    thread.start()
    thread.join(timeout=300)
    assert codes == [0] and manifest(tmp_path / "index")["totals"]["rows"] == 5


SIGINT_AS_FROM_A_TERMINAL = "signal.signal(signal.SIGINT, signal.SIG_DFL)"  # not ignored, as in a background job


def signalled_after_the_commit(folder: Path, args: list, signum: int) -> subprocess.CompletedProcess:
    """Run ``tokembed ARGS`` held just after its commit (the tests' pause hook), send ``signum`` once the manifest
    changed, and wait for it to end."""
    before = (folder / "manifest.json").read_bytes()
    process = subprocess.Popen(
        exec_after(SIGINT_AS_FROM_A_TERMINAL, [sys.executable, "-m", "cli.main", *args]), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**ENV, "TOKEMBED_TEST_PAUSE_AT": "committed:1", "TOKEMBED_TEST_PAUSE_SECONDS": "5"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (folder / "manifest.json").read_bytes() == before:
        time.sleep(0.05)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def assert_nothing_unlisted(folder: Path) -> None:
    """data/ holds the listed shards only, plaid/ the listed code files and codec only (no pending records)."""
    committed = manifest(folder)
    assert {p.name for p in (folder / "data").iterdir()} == {Path(s["file"]).name for s in committed["shards"]}
    if "search" in committed:
        structure = committed["search"]
        listed = {Path(entry["file"]).name for entry in structure["shards"]} | {Path(structure["codec"]["file"]).name}
        assert {p.name for p in (folder / "plaid").iterdir()} == listed
    assert not (folder / "run-journal.json").exists() and not (folder / "staging").exists()
    open_index(folder).verify()


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])  # one path
def test_a_signal_right_after_a_drops_commit_finishes_its_clean_up_and_says_it_committed(compressed, tmp_path, signum):
    """It said "the previous index is untouched" (exit 130) while the manifest already said vectors dropped, and
    left the shards with vectors (the space the drop frees) and the drop's pending record."""
    folder = tmp_path / "index"
    shutil.copytree(compressed[0], folder)
    run = signalled_after_the_commit(folder, ["compress", folder, "--drop-vectors"], signum)
    assert run.returncode == 130 and AFTER_COMMIT in run.stderr and "untouched" not in run.stderr, run.stderr
    assert manifest(folder)["search"]["vectors"] == "dropped"
    assert_nothing_unlisted(folder)


def test_sigterm_right_after_an_encodes_commit_finishes_its_clean_up_and_says_it_committed(tmp_path):
    """It said "the previous index is untouched" (exit 130) of a committed generation, and left the run journal."""
    corpus, folder = write_jsonl(tmp_path / "c.jsonl", corpus_rows(20)), tmp_path / "index"
    assert tokembed("encode", corpus, "-o", folder, "--shard-rows", 10, "-q").returncode == 0
    write_jsonl(corpus, corpus_rows(40, version=1))
    run = signalled_after_the_commit(folder, ["encode", corpus, "-o", folder, "--shard-rows", 10, "-q"], signal.SIGTERM)
    assert run.returncode == 130 and AFTER_COMMIT in run.stderr and "untouched" not in run.stderr, run.stderr
    assert manifest(folder)["totals"]["rows"] == 40
    assert_nothing_unlisted(folder)


def test_sigterm_right_after_an_export_is_published_says_it_was_published(tmp_path):
    """It said "the previous index is untouched" (exit 130) of an export already in place: a re-run then met an
    existing --to and refused, though nothing was wrong with the export."""
    import pyarrow.parquet as pq

    corpus, folder, to = write_jsonl(tmp_path / "c.jsonl", corpus_rows(20)), tmp_path / "index", tmp_path / "out"
    assert tokembed("encode", corpus, "-o", folder, "-q").returncode == 0
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "export", str(folder), "--to", str(to), "--format", "parquet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**ENV, "TOKEMBED_TEST_PAUSE_AT": "committed:1", "TOKEMBED_TEST_PAUSE_SECONDS": "5"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not to.exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted after the export was published" in stderr, stderr
    assert "untouched" not in stderr
    assert sum(pq.read_metadata(path).num_rows for path in to.rglob("*.parquet")) == 20
    assert not [p for p in tmp_path.iterdir() if "export-tmp" in p.name]  # no staging folder left


def signalled_after_the_summary(args: list, signum: int, point: str) -> subprocess.CompletedProcess:
    """Run ``tokembed ARGS --log-format json`` held at the pause point ``point`` (``returned``: the command returned;
    ``exiting``: ``tokembed`` is about to exit), send ``signum`` once its summary is on stdout, wait for it to end."""
    process = subprocess.Popen(
        exec_after(SIGINT_AS_FROM_A_TERMINAL, [sys.executable, "-m", "cli.main", *args, "--log-format", "json"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**ENV, "TOKEMBED_TEST_PAUSE_AT": f"{point}:1", "TOKEMBED_TEST_PAUSE_SECONDS": "3"})
    summary = process.stdout.readline()  # flushed by the command before it returns
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(args, process.returncode, summary + stdout, stderr)


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("signals")
    corpus = write_jsonl(folder / "c.jsonl", corpus_rows(20))
    assert tokembed("encode", corpus, "-o", folder / "index", "-q").returncode == 0
    return folder / "index"


@pytest.mark.parametrize("point", ["returned", "exiting"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_an_exports_summary_leaves_its_success_exit_0(small_index, tmp_path, signum, point):
    """Landing between the summary and the process's exit, it made the run exit 130 (SIGINT, with no message at
    exit) or 143 (SIGTERM, its default handler back once the command returned): a wrapper re-ran the export and
    met its own output as "already exists" (exit 2)."""
    to = tmp_path / "out"
    run = signalled_after_the_summary(["export", small_index, "--to", to, "--format", "parquet"], signum, point)
    assert run.returncode == 0 and json.loads(run.stdout)["rows"] == 20, (run.returncode, run.stderr)
    assert "interrupted" not in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("command", ["encode", "compress"])
def test_a_signal_after_an_encodes_or_compress_summary_leaves_its_success_exit_0(small_index, tmp_path, command):
    folder = tmp_path / "index"
    shutil.copytree(small_index, folder)
    args = (["encode", small_index.parent / "c.jsonl", "-o", folder, "--full"] if command == "encode"
            else ["compress", folder, "--centroids", 16])
    run = signalled_after_the_summary(args, signal.SIGTERM, "returned")
    assert run.returncode == 0 and json.loads(run.stdout)["rows"] == 20, (run.returncode, run.stderr)
    assert "interrupted" not in run.stderr
    assert_nothing_unlisted(folder)


def test_a_second_signal_while_a_failed_or_interrupted_command_exits_keeps_its_exit_status(tmp_path):
    """Once a command had failed or been interrupted, SIGTERM's default handler was back while the process printed
    its message and exited: a second `kill` (a supervisor's retry) made an interrupted run die of SIGTERM (143)
    instead of exit 130, and here a failed one instead of its exit 6."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "info", str(tmp_path / "no-index")], stderr=subprocess.PIPE, text=True,
        env={**ENV, "TOKEMBED_TEST_PAUSE_AT": "exiting:1", "TOKEMBED_TEST_PAUSE_SECONDS": "3"})
    assert "no-index" in process.stderr.readline()  # its error is out: it is held at its exit
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    assert process.returncode == 6


def _report_ctrl_c_disposition(results) -> None:
    results.put(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)


def test_a_worker_process_starts_with_ctrl_c_ignored_and_the_main_process_keeps_its_handler():
    """A worker ignored SIGINT only once worker_main ran, after seconds of importing torch: a Ctrl-C (which reaches
    the whole process group) during those printed a KeyboardInterrupt traceback from every worker."""
    import multiprocessing

    from tokembed.engine.pool import _start_ignoring_ctrl_c

    context = multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    before = signal.getsignal(signal.SIGINT)
    process = context.Process(target=_report_ctrl_c_disposition, args=(results,))
    _start_ignoring_ctrl_c(process)
    assert signal.getsignal(signal.SIGINT) is before
    assert results.get() is True
    process.join(30)


ORPHAN_SCRIPT = """
import multiprocessing, os, sys, time
from tokembed.parent_death import die_with_parent

def child():
    die_with_parent(multiprocessing.parent_process().pid)
    print("armed", os.getpid(), flush=True)
    time.sleep(120)  # a model loading

if __name__ == "__main__":
    multiprocessing.get_context("spawn").Process(target=child).start()
    time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_dies_with_its_main_process_even_while_its_model_loads(tmp_path):
    """A SIGKILLed main process was seen by its workers only at their next batch (EOF), so a worker still loading
    its model went on doing so, holding the device's memory from an immediate rerun."""
    import os

    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN_SCRIPT)
    main = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=ENV)
    word, pid = main.stdout.readline().split()
    assert word == "armed"
    main.kill()
    main.wait(30)
    deadline = time.monotonic() + 15
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = running(pid)
    if alive:
        os.kill(int(pid), signal.SIGKILL)
    assert not alive


def running(pid: str) -> bool:
    """Whether the process exists and is not a zombie (one that no init process reaps yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
