"""SIGTERM stops every command as Ctrl-C does (exit 130, the previous index untouched), and only while the command
runs: ``cli.main.run`` called in-process leaves the caller's handler as it was, and works from any thread."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time

from helpers import manifest, write_jsonl
from plaid_support import ENV, corpus_rows, tokembed


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
    try:
        assert cli("encode", corpus, "-o", tmp_path / "index", "-q").exit_code == 0
        assert signal.getsignal(signal.SIGTERM) is own
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
