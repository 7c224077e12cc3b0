"""Start-up and huge rows, as a user or cron sees them: whole processes, each beside ``python -c "import torch"``.

    python bench/startup.py [--repeats 5] [--huge-mb 20]

Cold whole processes (interpreter start, imports, model load, work, exit), median of --repeats, demo model
(all-MiniLM-L6-v2):
  * ``tokembed --help`` and a usage error (the issue's bar: under 0.5 s);
  * ``tokembed score --query ... INDEX`` on a 100-document index, and ``tokembed encode`` of a 10-row corpus
    (the bar: within ``import torch`` + 1.5 s), with the summary's own load/encode (or load/query/search) split;
  * a row of 3.6 KB vs one of --huge-mb MB (both truncated to the same 256 tokens): seconds and peak RSS
    (the bar for a 100 MB row: <= 1 s and <= 200 MB more than the short one).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from _corpus import docstrings  # noqa: E402

# Runs the CLI and reports its own peak RSS; as `tokembed` would, but measurable.
# The process's own high-water mark (VmHWM): ``ru_maxrss`` would carry over the forking parent's peak across exec.
_WITH_PEAK = (
    "import sys; from cli._clock import process_start; from cli.main import run; "
    "code = run(sys.argv[1:], started=process_start()); "
    "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
    "print('MAXRSS_KB', hwm, file=sys.stderr); sys.exit(code)"
)


def timed(args: list[str], repeats: int, expect: int = 0) -> tuple[float, subprocess.CompletedProcess]:
    """Median wall seconds of ``repeats`` runs of ``args``, and the last run's result."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    times, done = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - start)
        if done.returncode != expect:
            raise SystemExit(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return statistics.median(times), done


def tokembed(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def peak_mb(done: subprocess.CompletedProcess) -> float:
    [line] = [l for l in done.stderr.splitlines() if l.startswith("MAXRSS_KB")]
    return int(line.split()[1]) / 1024


def write_corpus(path: Path, texts: list[str]) -> Path:
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts}), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="cold processes per row, median printed (default 5; the huge-row pair: half as many)")
    parser.add_argument("--huge-mb", type=int, default=20, help="size of the huge row in MB, against a 3.6 KB one (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tokembed-startup-") as tmp:
        startup_rows(args, Path(tmp))


def startup_rows(args: argparse.Namespace, work: Path) -> None:
    """The cold-process rows, their corpora and indexes written in ``work``."""
    texts = docstrings(110)
    index = work / "index100"
    timed(tokembed("encode", str(write_corpus(work / "c100.parquet", texts[:100])), "-o", str(index), "-q"), 1)
    ten = write_corpus(work / "c10.parquet", texts[100:110])

    torch_s, _ = timed([sys.executable, "-c", "import torch"], args.repeats)
    rows = [("python -c 'import torch'", torch_s, "")]
    help_s, _ = timed(tokembed("--help"), args.repeats)
    rows.append(("tokembed --help", help_s, "bar < 0.5 s"))
    usage_s, _ = timed(tokembed("encode", str(ten), "--dtype", "float64"), args.repeats, expect=2)
    rows.append(("tokembed encode --dtype float64 (usage error)", usage_s, "bar < 0.5 s"))
    score_s, done = timed(
        tokembed("score", "--query", "how do I sort a list", str(index), "-f", "jsonl", "--log-format", "json"), args.repeats
    )
    split = json.loads(done.stderr.strip().splitlines()[-1])
    rows.append(("tokembed score --query (100-doc index)", score_s,
                 f"{score_s - torch_s:+.2f}s vs torch (bar +1.5); load {split['load_seconds']}s, "
                 f"query {split['query_seconds']}s, search {split['search_seconds']}s"))
    encode_s, done = timed(tokembed("encode", str(ten), "-o", str(work / "ten"), "--full", "--log-format", "json"), args.repeats)
    split = json.loads(done.stdout.strip().splitlines()[-1])
    rows.append(("tokembed encode (10 rows)", encode_s,
                 f"{encode_s - torch_s:+.2f}s vs torch (bar +1.5); load {split['load_seconds']}s, encode {split['encode_seconds']}s"))

    print(f"cold whole processes, median of {args.repeats}, {os.cpu_count()} CPUs:")
    for name, seconds, note in rows:
        print(f"  {name:<48} {seconds:6.2f}s  {note}")
    huge_rows(work, args.huge_mb, max(1, args.repeats // 2))


def huge_rows(work: Path, megabytes: int, repeats: int) -> None:
    sentence = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor 3.14 naïve. "
    big = (sentence * (megabytes * 1_000_000 // len(sentence) + 1))[: megabytes * 1_000_000]
    short = write_corpus(work / "short.parquet", ["a short row", sentence * 40])  # also cut at max_length: same tokens
    huge = write_corpus(work / "huge.parquet", ["a short row", big])
    del big
    results = {}
    for name, corpus in (("short", short), ("huge", huge)):
        seconds, done = timed([sys.executable, "-c", _WITH_PEAK, "encode", str(corpus), "-o", str(work / name),
                               "--full", "--log-format", "json"], repeats)
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        results[name] = (seconds, peak_mb(done), summary["encode_seconds"])
    (s_wall, s_peak, s_enc), (h_wall, h_peak, h_enc) = results["short"], results["huge"]
    print(f"a {megabytes} MB row vs a 3.6 KB one, both 256 tokens kept (demo model, cold processes, median of {repeats}):")
    print(f"  whole process {h_wall:.2f}s vs {s_wall:.2f}s ({h_wall - s_wall:+.2f}s); encode_seconds {h_enc:.2f}s vs "
          f"{s_enc:.2f}s ({h_enc - s_enc:+.2f}s); peak RSS {h_peak:.0f} MB vs {s_peak:.0f} MB ({h_peak - s_peak:+.0f} MB)")


if __name__ == "__main__":
    main()
