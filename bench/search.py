"""Benchmark search with the PLAID-style structure against the exhaustive scan (and a Voyager HNSW baseline).

    python bench/search.py                       # 20k synthetic documents (~1.1M tokens), dim 128
    python bench/search.py --docs 1000000        # the issue's scale (hours of k-means/coding on 2 cores)

Data: ``--real`` real docstrings are encoded once with the demo model (all-MiniLM-L6-v2, raw mode,
``--dimensions 128``: real token statistics at ColBERT's width); the benchmark's documents are random
spans of those real token vectors (16-96 tokens each), written straight into an index (no encoding).
Queries: 100 other docstrings' first lines (fewer where ``--real`` leaves fewer: the standard library has ~2,900
docstrings; the figures count the queries there were), encoded with the same model (kind=query), 32 tokens at most.

Each phase runs in its own worker process, so each peak RSS is its own:

* ``compress``: ``compress_index`` (nbits 2): build seconds, peak RSS, bytes/token per part.
* ``exact``: the exhaustive scan, the queries batched (the ground truth, top-100) and 5 one at a time.
* ``search``: the structure, opened once (warm steady state): per (probe, candidates) p50/p95 latency one
  query at a time on a second pass over the queries (the first pass, whose candidates' vectors may come from
  disk where the page cache does not hold them, is printed as "1st p50"), queries/s for all the queries in one call (the median of three calls after a first; on several cores also on query threads instead of
  forked query processes, alternating), recall@10/@100 against exact; re-ranking from the
  stored vectors and from the codes only (compressed-only).
* ``pooled``: the same documents pooled with factor 2 (``encode --pool-factor 2``'s function), compressed,
  searched with the defaults against the unpooled exact truth; bytes per original token.
* ``doubling``: recall@10 after the index doubles through an incremental run without retraining.
* ``incremental`` (last, in place): a generation with 1% of the documents replaced, coded by
  ``refresh_structure`` as an encode re-run does (encoding excluded) vs. the full compress.
* ``voyager`` (if ``pip install voyager`` and at most ``--voyager-max-tokens``): HNSW over every token,
  candidates = documents of each query token's nearest tokens, exact re-rank (PyLate's Voyager style).

Recall@10 is printed three times: strict (the scan's own top 10); "ties" (a document whose exact score ties
the 10th best counts: overlapping spans of the same vectors tie often, and the scan orders ties by index),
among the scan's top 100 only; and "tied", every returned document scored again exactly (float64, from the
stored vectors, in a worker of its own), so that which of more than 100 tied documents a search returns, which
the last bits of its float32 products decide, does not move the figure.
``--work DIR --reuse`` runs the phases again on an index already written and compressed there; its exact
top-100 (truth.json) is computed again where the index's shards are no longer those it was computed on (the
``incremental`` phase replaces 1% of the documents in place). ``--seed DIR
--codec FILE --pool-codes --no-exact`` rebuilds an earlier run's index and structure elsewhere without the model,
encoding or faiss, and times the search only (``bench/gpu_search.sh``, for a lent GPU machine).

Latencies are the search part alone (vectors in, hits out; query encoding excluded), warm, one BLAS thread
for the structure (PLAID's and WARP's anchors are single-threaded), then the defaults again with all cores
(the issue's bar; a query alone still runs in the caller's thread, torch's products on one OpenMP thread, as in
``score --query``; only the batch spreads over the cores), the default threads for the exhaustive scan. Prints,
asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tokembed  # noqa: E402,F401  (before numpy, as the CLI: its native-library settings, e.g. tokembed.cpu)
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_data import encode_real, read_truth, read_vectors, recall, recall_with_exact_ties, recall_with_ties, synthetic_docs, write_synthetic  # noqa: E402
from _search_phases import DEFAULTS, GRID, worker_doubling, worker_incremental, worker_pooled, worker_voyager  # noqa: E402
from _search_report import report  # noqa: E402
from _timing import TreeMemoryPeak, peak_rss_mb, timed_runs  # noqa: E402  (VmHWM: a worker's own peak, not its parent's)

DEFAULT_POOL = 5  # tokembed.search.plaid.search.CENTROID_POOL (not imported here: the workers import tokembed)


# ---------------------------------------------------------------------------------------------- data


def parse_grid(text: str) -> list[list[int]]:
    """``"24:384:5,32:512"`` -> [[24, 384, 5], [32, 512]] (probe, candidates[, pool])."""
    return [[int(part) for part in entry.split(":")] for entry in text.split(",") if entry.strip()]


# ---------------------------------------------------------------------------------------------- workers


def worker_compress(folder: str, centroids: str) -> dict:
    from tokembed.index import open_index
    from tokembed.search.plaid import compress_index
    from tokembed.search.plaid.report import structure_facts

    summary = compress_index(folder, nbits=2, centroids=int(centroids) or None)
    facts = structure_facts(open_index(folder))
    return {"seconds": summary.seconds, "peak_rss_mb": peak_rss_mb(), "centroids": summary.centroids, "facts": facts}


def worker_exact(folder: str, queries: str) -> dict:
    from tokembed.search import search_vectors

    qs = list(np.load(queries, allow_pickle=True))
    shards = shards_digest(json.loads((Path(folder) / "manifest.json").read_text()))  # what the truth is of
    started = time.perf_counter()
    hits = search_vectors(folder, qs, top_k=100, exact=True)
    batched = time.perf_counter() - started
    single = []
    for q in qs[:5]:
        started = time.perf_counter()
        search_vectors(folder, [q], top_k=10, exact=True)
        single.append(time.perf_counter() - started)
    return {"truth": [[h.id for h in row] for row in hits], "truth_scores": [[h.score for h in row] for row in hits], "batched_seconds": batched, "single_seconds": single,
            "queries": len(qs), "peak_rss_mb": peak_rss_mb(), "index_shards": shards}


def worker_search(folder: str, queries: str, truth_file: str, grid: str, device: str = "none") -> dict:
    import torch  # noqa: F401  (loaded in score and serve, which encode the queries: the re-rank casts with it)

    from tokembed.search.plaid import open_searchable, plaid_search

    qs = list(np.load(queries, allow_pickle=True))
    truth, scores = read_truth(truth_file)
    index, structure = open_searchable(folder)
    on = None if device == "none" else device  # a torch device for the candidate stages (plaid/on_device.py)
    plaid_search(index, structure, qs[:3], 10, device=on)  # warm-up: page cache, BLAS, the arrays on the device
    rows = []
    from tokembed.search.plaid import search as search_module

    for probe, candidates, *pool in json.loads(grid):
        search_module.CENTROID_POOL = pool[0] if pool else DEFAULT_POOL  # stage 1 keeps pool x candidates
        for rerank in ("vectors", "codes"):
            first, latencies = [], []  # first pass: the candidates' vectors may come from disk; then warm
            for timings in (first, latencies):
                for q in qs:
                    started = time.perf_counter()
                    plaid_search(index, structure, [q], 10, probe, candidates, rerank, device=on)
                    timings.append(time.perf_counter() - started)
            def batch():
                return plaid_search(index, structure, qs, 100, probe, max(candidates, 100), rerank, device=on)

            started = time.perf_counter()
            got = batch()  # the first call also starts the query threads and their buffers
            first_batched = time.perf_counter() - started
            rows.append({"probe": probe, "candidates": candidates, "pool": search_module.CENTROID_POOL, "rerank": rerank,
                         "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * float(np.percentile(latencies, 95)),
                         "first_p50_ms": 1000 * statistics.median(first), "first_qps_batched": len(qs) / first_batched,
                         **batched_rates(batch, len(qs), on is None), **recalls(truth, scores, got), "top10": [[doc for doc, _ in hits[:10]] for hits in got]})
    return {"grid": rows, "queries": len(qs), "peak_rss_mb": peak_rss_mb(), "device": cpu_products() if on is None else f"torch on {on}",
            **batch_memory(batch)}


def batched_rates(batch, count: int, on_cpu: bool = True) -> dict:
    """Queries/s of ``batch`` (every query in one call): the median of three calls. Where the queries go to
    forked query processes (``plaid/processes.py``: the CPU search only), the query threads' rate too, the two
    kinds of call alternating (the box's speed drifts)."""
    from tokembed.search.plaid import processes, threads

    forks = on_cpu and threads.forks(count)
    kinds = {"qps_batched": processes.PROCESS_MIN_QUERIES, **({"qps_batched_threads": 10**9} if forks else {})}
    seconds = {kind: [] for kind in kinds}
    for _ in range(3):
        for kind, least in kinds.items():
            processes.PROCESS_MIN_QUERIES = least
            seconds[kind].append(timed_runs(batch, 1)[0])
    processes.PROCESS_MIN_QUERIES = kinds["qps_batched"]
    return {kind: count / statistics.median(times) for kind, times in seconds.items()} | {"query_processes": forks}


def batch_memory(batch) -> dict:
    """The last grid row's batch once more, the PSS of this process and its query processes sampled."""
    with TreeMemoryPeak() as tree:
        batch()
    return {"batch_tree_pss_mb": tree.peak_mb}


def cpu_products() -> str:
    """What a CPU search ran its two products in (``tokembed/search/plaid/products.py``)."""
    return "the CPU, its products in torch (loaded)" if "torch" in sys.modules else "numpy on the CPU"


def worker_exact_ties(folder: str, queries: str, truth_file: str, tops_file: str) -> dict:
    """recall@10 with exact ties (``recall_with_exact_ties``) of each result set in ``tops_file``: in a worker of
    its own, so that the search phases' peak RSS holds none of what it reads."""
    _, scores = read_truth(truth_file)
    tops = json.loads(Path(tops_file).read_text())
    return {"recall10_exact_ties": recall_with_exact_ties(folder, list(np.load(queries, allow_pickle=True)), scores, tops)}


def add_exact_ties(root: Path, main_dir: Path, queries: Path, truth: Path, rows: list[dict]) -> None:
    """Fill each search row's ``recall10_exact_ties`` from its returned top 10 (dropped from the row after)."""
    tops_file = root / "tops.json"
    tops_file.write_text(json.dumps([row.pop("top10") for row in rows]))
    for row, figure in zip(rows, run_worker("exact_ties", main_dir, queries, truth, tops_file)["recall10_exact_ties"]):
        row["recall10_exact_ties"] = figure


def recalls(truth, scores, got) -> dict:
    if truth is None:
        return {"recall10": None, "recall100": None, "recall10_ties": None}
    return {"recall10": recall(truth, got, 10), "recall100": recall(truth, got, 100), "recall10_ties": recall_with_ties(truth, scores, got)}


def run_worker(name: str, *args, threads: int | None = None) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)} if threads else None
    out = subprocess.run([sys.executable, __file__, "--worker", name, *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_pool_codes(folder: str, real_file: str, centroids: str, codec_file: str = "") -> dict:
    from _plaid_shortcut import build

    return build(folder, real_file, centroids, codec_file)


WORKERS = {"pool_codes": worker_pool_codes, "pooled": worker_pooled, "compress": worker_compress, "exact": worker_exact, "search": worker_search,
           "incremental": worker_incremental, "voyager": worker_voyager, "doubling": worker_doubling,
           "exact_ties": worker_exact_ties}


# ---------------------------------------------------------------------------------------------- main


def prepare(root: Path, n_real: int, n_docs: int) -> tuple[Path, Path, Path]:
    real_dir, query_dir = (root / "real", root / "queries") if (root / "queries" / "manifest.json").exists() else encode_real(root, n_real)
    real = read_vectors(real_dir)
    np.save(root / "real.npy", np.array(real, dtype=object), allow_pickle=True)
    queries = [q.astype(np.float32) for q in read_vectors(query_dir)]
    np.save(root / "queries.npy", np.array(queries, dtype=object), allow_pickle=True)
    main_dir = root / "main"
    shutil.rmtree(main_dir, ignore_errors=True)
    template = json.loads((real_dir / "manifest.json").read_text())
    write_synthetic(main_dir, template, synthetic_docs(real, n_docs, seed=1))
    return main_dir, root / "real.npy", root / "queries.npy"


PHASES = ("search", "pooled", "voyager", "doubling", "incremental")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--docs", type=int, default=20_000, help="synthetic documents of the main index (default 20000)")
    parser.add_argument("--real", type=int, default=1500, help="real docstrings encoded once (default 1500; the next 100 "
                        "are the queries, fewer above ~2,800: the standard library has ~2,900)")
    parser.add_argument("--work", type=Path, default=None, help="keep the data here (default: a temp folder)")
    parser.add_argument("--reuse", action="store_true",
                        help="--work already holds a compressed main index (and compress.json): skip writing and compressing it; "
                        "the exact truth is kept while the index's shards are those it was computed on")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--centroids", type=int, default=4096,
                        help="k-means centroids (0: colbert-ai's rule, 65536 at 1M documents: hours of k-means and coding on 2 cores)")
    parser.add_argument("--pool-codes", action="store_true",
                        help="build the structure by coding the pool of real vectors once (bench/_plaid_shortcut.py): same files, minutes instead of hours")
    parser.add_argument("--codec", default="",
                        help="with --pool-codes: this codec file instead of k-means (no faiss needed; bench/gpu_assets.py --search-seed carries one)")
    parser.add_argument("--seed", type=Path, default=None,
                        help="a folder holding the real and queries indexes of an earlier run (bench/gpu_assets.py --search-seed): no encoding, no model")
    parser.add_argument("--no-exact", action="store_true",
                        help="skip the exhaustive scan (the ground truth): latency and queries/s only, no recall (search phase only)")
    parser.add_argument("--voyager-max-tokens", type=int, default=1_200_000,
                        help="skip the voyager phase on an index of more tokens than this (default 1200000)")
    parser.add_argument("--grid", default="", help="the one-thread search settings, PROBE:CANDIDATES[:POOL],... (default: "
                        + ",".join(f"{p}:{c}" for p, c in GRID) + f"; POOL: stage 1 keeps POOL x CANDIDATES, default {DEFAULT_POOL})")
    parser.add_argument("--cores-grid", default="", help="the same for the run on all cores (default: the defaults, 24:384)")
    parser.add_argument("--device", default="none",
                        help="a torch device (cuda, cuda:1) for the structure's candidate stages in the search phase; "
                        "default: numpy on the CPU, as score on a CPU")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker[0]](*args.worker[1:])))
        return
    phases = set(args.phases.split(","))
    if phases - set(PHASES):
        parser.error(f"--phases: unknown {','.join(sorted(phases - set(PHASES)))} (choose from {','.join(PHASES)})")
    if args.no_exact and phases - {"search"}:
        parser.error("--no-exact has no ground truth for the phases other than search")
    if args.codec and not args.pool_codes:
        parser.error("--codec is used by the --pool-codes build only")
    if args.reuse and not _build_figures(args.work):
        parser.error(f"--reuse needs --work DIR holding compress.json (the build's figures, which a run without --reuse "
                     f"writes; after `--worker pool_codes`, that worker's last line): {args.work or 'no --work'}")
    root = args.work or Path(tempfile.mkdtemp(prefix="tokembed-bench-search-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        run_phases(args, root, phases)
    finally:
        if args.work is None:
            shutil.rmtree(root, ignore_errors=True)


def _build_figures(work: Path | None) -> dict | None:
    """``work/compress.json``, or None where there is none or it is not the build's JSON (e.g. a failed worker's output)."""
    try:
        figures = json.loads((work / "compress.json").read_text()) if work else None
    except (OSError, ValueError):
        return None
    return figures if isinstance(figures, dict) and "seconds" in figures else None


def run_phases(args: argparse.Namespace, root: Path, phases: set[str]) -> None:
    if args.seed and not (root / "queries" / "manifest.json").exists():
        for name in ("real", "queries"):
            shutil.copytree(args.seed / name, root / name, dirs_exist_ok=True)
    results = {}
    if args.reuse:
        main_dir, real_file, queries = root / "main", root / "real.npy", root / "queries.npy"
        results["compress"] = json.loads((root / "compress.json").read_text())
    else:
        main_dir, real_file, queries = prepare(root, args.real, args.docs)
        if args.pool_codes:
            results["compress"] = run_worker("pool_codes", main_dir, real_file, args.centroids, args.codec)
        else:
            results["compress"] = run_worker("compress", main_dir, args.centroids)
        (root / "compress.json").write_text(json.dumps(results["compress"]))
    truth = "" if args.no_exact else root / "truth.json"
    if truth and not (args.reuse and truth_to_keep(root, main_dir)):
        exact = run_worker("exact", main_dir, queries)
        truth.write_text(json.dumps(exact.pop("truth")))
        truth.with_suffix(".scores.json").write_text(json.dumps(exact.pop("truth_scores")))
        (root / "exact.json").write_text(json.dumps(exact))
    results["exact"] = json.loads((root / "exact.json").read_text()) if truth else None
    results["index"] = index_figures(main_dir)  # the index the phases measure: ``incremental`` (last) changes it
    if "search" in phases:  # one thread, as the anchors
        one_thread = parse_grid(args.grid) if args.grid else GRID
        cores = parse_grid(args.cores_grid) if args.cores_grid else GRID[DEFAULTS : DEFAULTS + 1]
        results["search"] = run_worker("search", main_dir, queries, truth, json.dumps(one_thread), args.device, threads=1)
        results["search_cores"] = run_worker("search", main_dir, queries, truth, json.dumps(cores), args.device)  # the box's cores
        rows = results["search"]["grid"] + results["search_cores"]["grid"]
        if truth:
            add_exact_ties(root, main_dir, queries, truth, rows)
        else:
            for row in rows:
                del row["top10"]
    if "pooled" in phases:
        shutil.rmtree(root / "pooled", ignore_errors=True)
        results["pooled"] = run_worker("pooled", main_dir, root / "pooled", queries, truth, args.centroids)
    if "voyager" in phases and results["index"]["tokens"] <= args.voyager_max_tokens:
        try:
            results["voyager"] = run_worker("voyager", main_dir, queries, truth)
        except RuntimeError as exc:
            print(f"voyager baseline skipped: {str(exc).splitlines()[-1]}")
    if "doubling" in phases:
        shutil.rmtree(root / "half", ignore_errors=True)
        shutil.rmtree(root / "doubled-staging", ignore_errors=True)
        results["doubling"] = run_worker("doubling", root / "half", real_file, args.docs, queries, truth, args.centroids)
    if "incremental" in phases:  # last: it replaces the main index's generation in place
        results["incremental"] = run_worker("incremental", main_dir, real_file, queries, truth, results["compress"]["seconds"])
    (root / "results.json").write_text(json.dumps(results))  # the figures, should the report below fail
    report(results)


def shards_digest(manifest: dict) -> str:
    """What the exact truth depends on: the index's shards (their sha256s), not its search structure."""
    return hashlib.sha256(" ".join(shard["sha256"] for shard in manifest["shards"]).encode()).hexdigest()


def truth_to_keep(root: Path, main_dir: Path) -> bool:
    """Whether ``--reuse`` keeps ``root``'s truth.json: only where it was computed on the main index's present
    shards (exact.json records them); where one of other shards is there (an ``incremental`` phase replaced
    documents since, or a run before that record), says that the scan runs again."""
    try:
        recorded = json.loads((root / "exact.json").read_text()).get("index_shards")
    except (OSError, ValueError):
        recorded = None
    current = (root / "truth.json").exists() and recorded == shards_digest(json.loads((main_dir / "manifest.json").read_text()))
    if not current and (root / "truth.json").exists():
        print(f"{root / 'truth.json'}: not computed on the index's present shards (an incremental phase replaces "
              "documents in place), or by a run that did not record them: the exact scan runs again")
    return current


def index_figures(main_dir: Path) -> dict:
    """Rows, tokens, vector bytes and dim of the main index as it is now (the report's ``index:`` line)."""
    manifest = json.loads((main_dir / "manifest.json").read_text())
    return {**{key: manifest["totals"][key] for key in ("rows", "tokens", "bytes")}, "dim": manifest["dim"]}


if __name__ == "__main__":
    main()
