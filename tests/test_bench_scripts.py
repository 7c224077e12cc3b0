"""The benchmark scripts' own arithmetic and usage errors (they print figures and are not run in CI: only the parts
that need no index, model or load are tested here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_module(name: str, monkeypatch):
    """``bench/<name>.py`` imported by its path; the folders it adds to ``sys.path`` are dropped after the test
    (bench/ on the path would shadow packages: bench/ray.py is not Ray)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("given", [["--index", "idx"], ["--queries", "q.txt"]])
def test_search_load_takes_index_and_queries_together(tmp_path, given):
    small = ["--documents", "10", "--loads", "0", "--rounds", "1"]  # were either ignored: a short run, not a usage error
    done = subprocess.run([sys.executable, str(BENCH / "search_load.py"), *given, *small], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "--index and --queries go together" in done.stderr
    assert "Traceback" not in done.stderr


def test_exhaustive_rate_counts_the_queries_there_were(monkeypatch):
    report = bench_module("_search_report", monkeypatch)
    exact = {"batched_seconds": 2.0, "single_seconds": [0.01], "peak_rss_mb": 300.0, "queries": 52}  # --real 2850
    line = report.exhaustive_line(exact, 0.01)
    assert "26.00 queries/s batched (52)" in line
    assert "(100)" in report.exhaustive_line({**exact, "queries": 100}, 0.01)
    del exact["queries"]  # an exact.json from before the count was kept (--reuse): 100, as those runs had
    assert "50.00 queries/s batched (100)" in report.exhaustive_line(exact, 0.01)


def test_devices_median_of_an_even_count_of_passes(monkeypatch):
    devices = bench_module("devices", monkeypatch)
    case = object.__new__(devices.Case)
    case.passes = [{"seconds": s, "tokens_per_s": 1000 / s, "useful": 0.9,
                    "devices": {"cpu": {"tokens_per_s": 1000 / s, "busy": b, "forward_of_busy": 0.8}}}
                   for s, b in ((1.0, 1.0), (4.0, 0.5), (2.0, 0.9), (3.0, 0.7))]
    median = case.median()
    assert median["seconds"] == 2.5
    assert median["tokens_per_s"] == pytest.approx((500 + 1000 / 3) / 2)
    assert median["devices"]["cpu"]["busy"] == pytest.approx(0.8)
    assert median["useful"] == 0.9
