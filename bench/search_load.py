"""Single queries on a busy box: each query's search on one OpenMP thread (this release) against the calling
thread's own OpenMP threads (the release before), beside 0, 1 and 3 busy processes.

    python bench/search_load.py                          # builds a ~2,900-document MiniLM index and compresses it
    python bench/search_load.py --index IDX --queries Q  # an existing compressed index; Q: .txt / .jsonl query texts

What it times: a warm steady state, as `serve` and a long-lived library caller see it. One process opens the index
(`open_searchable`), encodes the queries with the index's model (so torch's OpenMP threads are set up and have just
run, as after `score` encodes its queries), then answers every query alone (`search_opened(..., [q], 10)`, what
`score --query` and a `serve` request do). The busy processes are Python loops started beside it and stopped after
each load level. The two sides alternate, 3 rounds each; a figure is the median over rounds of the mean wall ms
per query (and the process's CPU ms per query: spinning threads burn CPU the busy neighbours lose). Both sides'
hits are compared. Prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build_index(root: Path, documents: int, queries: int) -> tuple[Path, list[str]]:
    """Real docstrings encoded by the demo model and compressed with the defaults; other first lines as queries."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from _corpus import docstrings

    texts = docstrings(documents + queries)  # fewer where the installed packages have fewer
    documents = len(texts) - queries
    corpus = root / "docs.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(documents)], "text": texts[:documents]}), corpus)
    index = root / "index"
    for command in (["encode", str(corpus), "-o", str(index), "--devices", "cpu", "-q"], ["compress", str(index), "-q"]):
        subprocess.run([sys.executable, "-m", "cli.main", *command], check=True, cwd=REPO)
    return index, [t.splitlines()[0] for t in texts[documents:]]


def read_queries(path: Path) -> list[str]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line)["text"] for line in lines] if path.suffix == ".jsonl" else lines


@contextlib.contextmanager
def busy_processes(count: int):
    workers = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(1.0 if count else 0.0)
        yield
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()


def callers_threads():
    """The release before: a query in the caller's thread kept that thread's OpenMP count."""
    from tokembed.search.plaid import threads

    return _patched(threads, "_caller_on_one_openmp_thread", contextlib.nullcontext)


@contextlib.contextmanager
def _patched(module, name, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def one_round(index, structure, vectors) -> tuple[float, float, list]:
    """Mean wall and CPU ms per query, answering each alone; and the hits."""
    from tokembed.search.api import search_opened

    wall, cpu = time.perf_counter(), time.process_time()
    hits = [search_opened(index, structure, [v], 10)[0] for v in vectors]
    n = len(vectors)
    return (time.perf_counter() - wall) * 1000 / n, (time.process_time() - cpu) * 1000 / n, hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, help="a compressed index, with --queries (default: build one)")
    parser.add_argument("--queries", type=Path, help="query texts, .txt or .jsonl (with --index)")
    parser.add_argument("--documents", type=int, default=3000,
                        help="documents of the index built without --index (default 3000; fewer where the standard library has fewer docstrings)")
    parser.add_argument("--loads", default="0,1,3", help="busy processes beside the search, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two sides per load (default 3)")
    args = parser.parse_args()
    if (args.index is None) != (args.queries is None):
        parser.error("--index and --queries go together: an existing index and its query texts (neither: build both)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        if args.index:
            index_path, texts = args.index, read_queries(args.queries)
        else:
            index_path, texts = build_index(Path(tmp), args.documents, 40)
        from tokembed.search.api import encode_queries
        from tokembed.search.plaid.search import open_searchable

        index, structure = open_searchable(index_path)
        vectors = encode_queries(index, texts)
        one_round(index, structure, vectors[:3])  # warm: the structure's lazily built parts, the page cache
        print(f"{index_path}: {index.rows} documents, {len(vectors)} queries, "
              f"{os.cpu_count()} cores; ms per query, median of {args.rounds} alternating rounds")
        print("| busy processes | caller's OpenMP threads (before) | one OpenMP thread (now) | before / now | CPU ms before / now | same hits |")
        print("| --- | --- | --- | --- | --- | --- |")
        for load in [int(x) for x in args.loads.split(",")]:
            sides = {"before": [], "now": []}
            same = True
            with busy_processes(load):
                for _ in range(args.rounds):
                    with callers_threads():
                        before = one_round(index, structure, vectors)
                    now = one_round(index, structure, vectors)
                    sides["before"].append(before)
                    sides["now"].append(now)
                    same = same and before[2] == now[2]
            b = [statistics.median(r[i] for r in sides["before"]) for i in (0, 1)]
            n = [statistics.median(r[i] for r in sides["now"]) for i in (0, 1)]
            print(f"| {load} | {b[0]:.1f} | {n[0]:.1f} | {b[0] / n[0]:.2f}x | {b[1]:.1f} / {n[1]:.1f} | {same} |")


if __name__ == "__main__":
    main()
