"""A standard output that cannot be written, for every command: a full one (``>/dev/full``) is a write error (exit 8,
one line naming standard output, no traceback), a reader that closed the pipe ends the output quietly (exit 0, as
``score`` always did). Either way the work is done: an index ``encode`` wrote is committed.

Real processes: the summary is printed after the commit, and Python's own flush at exit is part of what is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import exec_after, manifest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
EXIT_WRITE = 8


def tokembed(*args, stdout) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, env=ENV, timeout=300)


def to_full_stdout(*args) -> subprocess.CompletedProcess:
    with open("/dev/full", "w") as full:
        return tokembed(*args, stdout=full)


def to_closed_pipe(*args) -> subprocess.CompletedProcess:
    reader, writer = os.pipe()
    os.close(reader)  # closed before the command starts: its first write to stdout is EPIPE
    try:
        return tokembed(*args, stdout=writer)
    finally:
        os.close(writer)


@pytest.fixture(scope="module")
def work(tmp_path_factory, checkpoint_store):
    """A corpus, the tiny ColBERT checkpoint, and an index of them (with a search structure, for ``compress``)."""
    from cli.main import run

    root = tmp_path_factory.mktemp("stdout")
    corpus = root / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": f"alpha beta row {i} gamma"}) + "\n" for i in range(6)))
    model = checkpoint_store("pylate_bert")
    index = root / "index"
    assert run(["encode", str(corpus), "-o", str(index), "-m", str(model), "-q"]) == 0
    return corpus, model, index


def _commands(work, tmp_path) -> dict[str, list]:
    corpus, model, index = work
    return {
        "encode --quiet": ["encode", corpus, "-o", tmp_path / "new", "-m", model, "--quiet"],
        "encode --log-format json": ["encode", corpus, "-o", tmp_path / "new", "-m", model, "--log-format", "json"],
        "compress --log-format json": ["compress", index, "--centroids", 2, "--log-format", "json"],
        "export --log-format json": ["export", index, "--to", tmp_path / "parquet", "-f", "parquet", "--log-format", "json"],
        "info": ["info", index],
        "info --json": ["info", index, "--json"],
        "models": ["models"],
        "models --json": ["models", "--json"],
        "score": ["score", index, "--query", "alpha", "-f", "jsonl"],
    }


COMMANDS = ["encode --quiet", "encode --log-format json", "compress --log-format json", "export --log-format json",
            "info", "info --json", "models", "models --json", "score"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_stdout_is_a_write_error_without_a_traceback(work, tmp_path, command):
    result = to_full_stdout(*_commands(work, tmp_path)[command])
    assert result.returncode == EXIT_WRITE, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "tokembed: write error: standard output: cannot write the command's output (No space left on device)")
    if command.startswith("encode"):
        assert manifest(tmp_path / "new")["totals"]["rows"] == 6  # committed before the summary was printed


@pytest.mark.parametrize("command", ["encode --log-format json", "info", "models --json", "score"])
def test_a_closed_pipe_ends_the_output_quietly(work, tmp_path, command):
    result = to_closed_pipe(*_commands(work, tmp_path)[command])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert "error" not in result.stderr
    if command.startswith("encode"):
        assert manifest(tmp_path / "new")["totals"]["rows"] == 6


def to_closed_stdout(*args) -> subprocess.CompletedProcess:
    """Standard output not open at all (``>&-``): Python's ``sys.stdout`` is None and print() writes nothing."""
    return subprocess.run(exec_after("os.close(1)", [sys.executable, "-m", "cli.main", *args]), stdout=None,
                          stderr=subprocess.PIPE, text=True, env=ENV, timeout=300)


@pytest.mark.parametrize("command", ["encode --quiet", "encode --log-format json", "info", "score"])
def test_a_closed_stdout_is_no_error(work, tmp_path, command):
    """A cron or systemd job with stdout closed: exit 0 as before the guard (it wrapped None: an AttributeError)."""
    result = to_closed_stdout(*_commands(work, tmp_path)[command])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    if command.startswith("encode"):
        assert manifest(tmp_path / "new")["totals"]["rows"] == 6


def test_another_oserror_is_not_taken_for_stdout(monkeypatch, capsys):
    """Only a failed write to stdout is reported as one: an ``OSError`` from elsewhere still propagates."""
    from cli import main

    def fails(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(main, "_run_command", fails)
    with pytest.raises(OSError):
        main.run(["models"])
