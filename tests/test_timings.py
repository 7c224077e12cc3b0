"""Timings that say what they measure: ``encode`` reports load_seconds (start-up + model) and encode_seconds
(first read to commit) adding up to its total; ``score --log-format json`` reports load, query and search
seconds. In-process runs count from the ``run()`` call; a real process counts from its start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TEXTS, write_parquet


@pytest.fixture
def corpus(tmp_path):
    return write_parquet(tmp_path / "corpus.parquet", [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)])


def test_encode_json_summary_splits_load_and_encode(cli, checkpoint, corpus, tmp_path):
    result = cli("encode", corpus, "--model", checkpoint("stanford"), "-o", tmp_path / "index", "--log-format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    load, encode, total = summary["load_seconds"], summary["encode_seconds"], summary["seconds"]
    assert load > 0 and encode > 0
    assert load + encode == pytest.approx(total, abs=0.05)
    # encode_seconds is printed rounded to the millisecond: tokens/s lies within that rounding of it
    tokens, rate = summary["encoded_tokens"], summary["tokens_per_second"]
    assert tokens / (encode + 0.0006) - 0.1 <= rate <= tokens / max(encode - 0.0006, 1e-9) + 0.1


def test_encode_human_line_names_both_parts(cli, checkpoint, corpus, tmp_path):
    result = cli("encode", corpus, "--model", checkpoint("stanford"), "-o", tmp_path / "index", "--quiet")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip().splitlines()[-1]
    assert "load " in line and "encode " in line and "tokens/s encoded" in line


def test_score_json_log_has_load_query_search_seconds(cli, checkpoint, corpus, tmp_path):
    index = tmp_path / "index"
    assert cli("encode", corpus, "--model", checkpoint("stanford"), "-o", index, "-q").exit_code == 0
    started = time.perf_counter()
    result = cli("score", "--query", "quick fox", "--query", "capital", index, "--format", "jsonl", "--log-format", "json")
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2 * 8  # results alone on stdout
    summary = json.loads(result.stderr.strip().splitlines()[-1])  # the last line on stderr
    parts = [summary["load_seconds"], summary["query_seconds"], summary["search_seconds"]]
    assert all(p >= 0 for p in parts) and summary["load_seconds"] > 0
    assert sum(parts) <= summary["seconds"] + 0.01 <= elapsed + 0.02
    assert summary["queries"] == 2 and summary["documents"] == 8
    assert summary["searched_with"] == "exhaustive scan"


# Slower than any scheduling noise on a loaded 2-core box: a part that leaves it out misses the total by this much
_SLOW = 0.5


@pytest.fixture
def slow_device_check(monkeypatch):
    """Resolving ``--device`` (done by ``search()`` and again by ``encode_queries()``, before the model loads) takes
    ``_SLOW`` seconds more: time that no part counted would leave the parts that far short of the whole."""
    import tokembed.search.api as api

    resolve = api._resolve_device

    def slow(spec):
        time.sleep(_SLOW)
        return resolve(spec)

    monkeypatch.setattr(api, "_resolve_device", slow)


def _index(cli, checkpoint, corpus, folder, structure: bool):
    assert cli("encode", corpus, "--model", checkpoint("stanford"), "-o", folder, "-q").exit_code == 0
    if structure:
        assert cli("compress", folder, "--centroids", "4", "-q").exit_code == 0
    return folder


@pytest.mark.parametrize("structure", [False, True], ids=["exhaustive", "structure"])
def test_search_timings_add_up_to_the_call(cli, checkpoint, corpus, tmp_path, slow_device_check, structure):
    from tokembed.search import encode_queries, search

    index = _index(cli, checkpoint, corpus, tmp_path / "index", structure)
    timings = {}
    started = time.perf_counter()
    search(index, {"a": "quick fox", "b": "capital"}, top_k=2, timings=timings)
    call = time.perf_counter() - started
    parts = timings["load_seconds"] + timings["query_seconds"] + timings["search_seconds"]
    assert call - 0.1 < parts <= call, (call, timings)
    assert timings["load_seconds"] >= 2 * _SLOW  # both device checks come before the model loads
    assert timings["searched_with"] == ("structure" if structure else "exhaustive scan")
    encoded = {}
    started = time.perf_counter()
    encode_queries(index, ["quick fox"], timings=encoded)
    call = time.perf_counter() - started
    assert call - 0.1 < encoded["load_seconds"] + encoded["query_seconds"] <= call, (call, encoded)
    assert encoded["load_seconds"] >= _SLOW


@pytest.mark.parametrize("structure", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["exhaustive", "structure"])
def test_score_summary_parts_add_up_to_its_seconds(cli, checkpoint, corpus, tmp_path, slow_device_check, structure):
    """Both summaries: the JSON object's load + query + search seconds are its ``seconds``, and the text line's
    load, queries and search are its total (each printed rounded)."""
    import re

    index = _index(cli, checkpoint, corpus, tmp_path / "index", structure)
    result = cli("score", "--query", "quick fox", index, "--format", "jsonl", "--log-format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    parts = summary["load_seconds"] + summary["query_seconds"] + summary["search_seconds"]
    assert parts == pytest.approx(summary["seconds"], abs=0.1), summary
    assert summary["load_seconds"] >= 2 * _SLOW
    text = cli("score", "--query", "quick fox", index, "--format", "jsonl")
    assert text.exit_code == 0, text.output
    line = text.stderr.strip().splitlines()[-1]
    found = re.search(r" in ([\d.]+)s \(load ([\d.]+)s, queries ([\d.]+)s, search ([\d.]+)s\)", line)
    assert found, line
    total, *split = map(float, found.groups())
    assert sum(split) == pytest.approx(total, abs=0.1), line
    assert split[0] >= 2 * _SLOW


def test_score_says_when_the_structure_answered(cli, checkpoint, corpus, tmp_path):
    index = tmp_path / "index"
    assert cli("encode", corpus, "--model", checkpoint("stanford"), "-o", index, "-q").exit_code == 0
    assert cli("compress", index, "--centroids", "4").exit_code == 0
    result = cli("score", "--query", "quick fox", index, "--format", "jsonl", "--log-format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stderr.strip().splitlines()[-1])["searched_with"] == "structure"
    human = cli("score", "--query", "quick fox", index, "--format", "jsonl")
    assert "searched with the index's structure" in human.stderr and "tokens/s scanned" not in human.stderr
    exact = cli("score", "--query", "quick fox", index, "--format", "jsonl", "--exact")
    assert "document tokens/s scanned" in exact.stderr


def test_bad_score_log_format_exits_2(cli, tmp_path):
    assert cli("score", "--query", "x", tmp_path, "--log-format", "xml").exit_code == 2


@pytest.mark.slow
def test_a_real_process_counts_its_start_up_as_load(checkpoint, corpus, tmp_path):
    """As cron runs it: load_seconds includes interpreter start and imports, so the total is the process's
    age when it prints the summary (interpreter shutdown after that is not counted)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    model = checkpoint("stanford")  # built (or copied) before the clock starts
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "encode", str(corpus), "--model", str(model),
         "-o", str(tmp_path / "index"), "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    line = process.stdout.readline()
    printed_at = time.perf_counter() - started
    assert process.wait() == 0
    summary = json.loads(line)
    assert summary["load_seconds"] + summary["encode_seconds"] == pytest.approx(summary["seconds"], abs=0.05)
    # /proc's start time and uptime count in clock ticks (10 ms): the process's age can read a little high
    assert 0.85 * printed_at - 0.1 <= summary["seconds"] <= printed_at + 0.03


@pytest.mark.parametrize("args", [["--help"], ["encode", "x.parquet", "--dtype", "float64"], ["export", "idx", "--to", "o"]])
def test_help_and_usage_errors_import_no_heavy_module(args):
    """`tokembed --help` and usage errors stay fast: neither torch, transformers, pyarrow nor rich is imported."""
    code = (
        "import sys; from cli.main import run; code = run(sys.argv[1:]); "
        "heavy = sorted(m for m in ('torch', 'transformers', 'pyarrow', 'rich', 'numpy') if m in sys.modules); "
        "print('HEAVY', ','.join(heavy), 'EXIT', code)"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    [line] = [l for l in done.stdout.splitlines() if l.startswith("HEAVY")]
    heavy, exit_code = line.split()[1:-2], line.split()[-1]
    assert heavy == [] and exit_code == ("0" if args == ["--help"] else "2"), line


def test_a_locked_encode_exits_before_importing_torch(tmp_path):
    """A second cron run on a locked index exits 7 at once: torch (seconds to import) is not imported first."""
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / ".lock").write_text("")
    (tmp_path / "c.jsonl").write_text('{"id": "a", "text": "hello"}\n')
    code = (
        "import fcntl, os, sys; fd = os.open('idx/.lock', os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
        "from cli.main import run; code = run(['encode', 'c.jsonl', '-o', 'idx']); "
        "print('TORCH', 'torch' in sys.modules, 'EXIT', code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])})
    [line] = [l for l in done.stdout.splitlines() if l.startswith("TORCH")]
    assert line == "TORCH False EXIT 7", (line, done.stderr)
