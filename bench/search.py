"""Benchmark search with the PLAID-style structure against the exhaustive scan (and a Voyager HNSW baseline).

    python bench/search.py                       # 20k synthetic documents (~1.1M tokens), dim 128
    python bench/search.py --docs 1000000        # the issue's scale (hours of k-means/coding on 2 cores)

Data: ``--real`` real docstrings are encoded once with the demo model (all-MiniLM-L6-v2, raw mode,
``--dimensions 128``: real token statistics at ColBERT's width); the benchmark's documents are random
spans of those real token vectors (16-96 tokens each), written straight into an index (no encoding).
Queries: 100 other docstrings' first lines, encoded with the same model (kind=query), 32 tokens at most.

Each phase runs in its own worker process, so each peak RSS is its own:

* ``compress``: ``compress_index`` (nbits 2): build seconds, peak RSS, bytes/token per part.
* ``exact``: the exhaustive scan, 100 queries batched (the ground truth, top-100) and 5 one at a time.
* ``search``: the structure, opened once (warm steady state): per (probe, candidates) p50/p95 latency one
  query at a time, queries/s for 100 queries in one call, recall@10/@100 against exact; re-ranking from the
  stored vectors and from the codes only (compressed-only).
* ``incremental``: a generation with 1% of the documents replaced, coded by ``refresh_structure`` as an
  encode re-run does (encoding excluded) vs. the full compress; and recall@10 after the index doubles
  through an incremental run without retraining.
* ``voyager`` (if ``pip install voyager`` and at most ``--voyager-max-tokens``): HNSW over every token,
  candidates = documents of each query token's nearest tokens, exact re-rank (PyLate's Voyager style).

Latencies are the search part alone (vectors in, hits out; query encoding excluded), warm, one BLAS thread
for the structure (PLAID's and WARP's anchors are single-threaded), the default threads for the exhaustive
scan. Prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GRID = [(4, 128), (8, 256), (16, 256), (16, 512), (32, 1024)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- data


def encode_real(root: Path, n_docs: int) -> tuple[Path, Path]:
    """Encode real docstrings (documents) and 100 other first lines (queries) with the demo model."""
    from _corpus import docstrings

    def write_jsonl(path: Path, rows: list[dict]) -> Path:  # as Parquet
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = path.with_suffix(".parquet")
        pq.write_table(pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]}), path)
        return path

    texts = docstrings(n_docs + 100)
    docs = write_jsonl(root / "docs.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(texts[:n_docs])])
    queries = write_jsonl(root / "queries.jsonl", [{"id": str(i), "text": t.splitlines()[0]} for i, t in enumerate(texts[n_docs:])])
    for corpus, out, kind in ((docs, root / "real", "document"), (queries, root / "queries", "query")):
        subprocess.run([sys.executable, "-m", "cli.main", "encode", corpus, "-o", out, "--kind", kind, "--dimensions", "128",
                        "--max-length", "96" if kind == "document" else "32", "--devices", "cpu", "-q"], check=True, cwd=REPO)
    return root / "real", root / "queries"


def read_vectors(folder: Path) -> list[np.ndarray]:
    from tokembed.index import open_index
    from tokembed.search.maxsim import batch_arrays

    index, out = open_index(folder), []
    for batch in index.iter_batches():
        offsets, vectors, _ = batch_arrays(batch, index.dim, str(folder))
        out += [vectors[a - offsets[0] : b - offsets[0]].copy() for a, b in zip(offsets[:-1], offsets[1:])]
    return out


def synthetic_docs(real: list[np.ndarray], count: int, seed: int, prefix: str = "doc"):
    """Batches of (ids, vectors): each document a random span (16-96 tokens) of a random real document."""
    rng = np.random.default_rng(seed)
    pool = np.concatenate(real)
    for start in range(0, count, 1000):
        n = min(1000, count - start)
        lengths = rng.integers(16, 97, size=n)
        firsts = rng.integers(0, len(pool) - 96, size=n)
        yield [f"{prefix}{start + i}" for i in range(n)], [pool[f : f + l] for f, l in zip(firsts, lengths)]


def write_synthetic(folder: Path, template: dict, batches) -> None:
    from tokembed.index.writer import IndexWriter

    writer = IndexWriter(folder, template["dim"], "float16", shard_rows=50_000)
    for ids, vectors in batches:
        hashes = [hashlib.sha256(v.tobytes()).digest() for v in vectors]  # content: the vectors
        writer.write(ids, vectors, [np.zeros(len(v), np.int32) for v in vectors], hashes)
    writer.close_shard()
    shards = [s.to_json() for s in writer.shards]
    totals = {"rows": sum(s["rows"] for s in shards), "tokens": sum(s["tokens"] for s in shards), "bytes": sum(s["bytes"] for s in shards)}
    writer.commit({**{k: v for k, v in template.items() if k != "search"}, "shards": shards, "totals": totals})


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
    started = time.perf_counter()
    hits = search_vectors(folder, qs, top_k=100, exact=True)
    batched = time.perf_counter() - started
    single = []
    for q in qs[:5]:
        started = time.perf_counter()
        search_vectors(folder, [q], top_k=10, exact=True)
        single.append(time.perf_counter() - started)
    return {"truth": [[h.id for h in row] for row in hits], "batched_seconds": batched, "single_seconds": single,
            "peak_rss_mb": peak_rss_mb()}


def recall(truth: list[list[str]], got: list[list[tuple[str, float]]], k: int) -> float:
    return float(np.mean([len(set(t[:k]) & {doc for doc, _ in g[:k]}) / k for t, g in zip(truth, got)]))


def worker_search(folder: str, queries: str, truth_file: str, grid: str) -> dict:
    from tokembed.search.plaid import open_searchable, plaid_search

    qs = list(np.load(queries, allow_pickle=True))
    truth = json.loads(Path(truth_file).read_text())
    index, structure = open_searchable(folder)
    plaid_search(index, structure, qs[:3], 10)  # warm-up: page cache, BLAS
    rows = []
    for probe, candidates in json.loads(grid):
        for rerank in ("vectors", "codes"):
            latencies = []
            for q in qs:
                started = time.perf_counter()
                plaid_search(index, structure, [q], 10, probe, candidates, rerank)
                latencies.append(time.perf_counter() - started)
            started = time.perf_counter()
            got = plaid_search(index, structure, qs, 100, probe, max(candidates, 100), rerank)
            batched = time.perf_counter() - started
            rows.append({"probe": probe, "candidates": candidates, "rerank": rerank,
                         "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * float(np.percentile(latencies, 95)),
                         "qps_batched": len(qs) / batched, "recall10": recall(truth, got, 10), "recall100": recall(truth, got, 100)})
    return {"grid": rows, "peak_rss_mb": peak_rss_mb()}


def worker_incremental(folder: str, real_file: str, queries: str, truth_file: str, full_seconds: str) -> dict:
    """1% of the documents replaced: the structure part of an incremental run (what encode calls)."""
    from tokembed.index.previous import PreviousIndex
    from tokembed.index.reader import open_index
    from tokembed.search.plaid.build import StructureOptions, commit_manifest, refresh_structure

    real = list(np.load(real_file, allow_pickle=True))
    work = Path(folder)
    previous = PreviousIndex(open_index(work))
    rows = previous.index.rows
    changed = set(np.random.default_rng(5).choice(rows, size=max(1, rows // 100), replace=False).tolist())
    fresh = synthetic_docs(real, len(changed), seed=99, prefix="new")
    replacement = {f"doc{r}": v for r, v in zip(sorted(changed), [v for _, vs in fresh for v in vs])}
    template = previous.index.manifest

    def batches():
        for ids, vectors in synthetic_docs(real, rows, seed=1):
            yield ids, [replacement.get(i, v) for i, v in zip(ids, vectors)]

    staging = work.parent / "staging"
    write_synthetic(staging, template, batches())  # the new generation's shards, in another folder
    for shard in json.loads((staging / "manifest.json").read_text())["shards"]:
        shutil.move(str(staging / shard["file"]), str(work / shard["file"].replace("part-", "part-9")))
    manifest = json.loads((staging / "manifest.json").read_text())
    for shard in manifest["shards"]:
        shard["file"] = shard["file"].replace("part-", "part-9")
    started = time.perf_counter()
    new = refresh_structure(work, manifest, StructureOptions(), previous, log=lambda m: None)
    seconds = time.perf_counter() - started
    commit_manifest(work, new)
    return {"seconds": seconds, "full_compress_seconds": float(full_seconds), "changed_docs": len(changed),
            "coded_tokens": new["search"]["last_run"]["coded_tokens"], "carried_tokens": new["search"]["last_run"]["carried_tokens"],
            "peak_rss_mb": peak_rss_mb()}


def worker_voyager(folder: str, queries: str, truth_file: str) -> dict:
    from voyager import Index, Space

    from tokembed.index import open_index
    from tokembed.search.maxsim import batch_arrays

    qs = list(np.load(queries, allow_pickle=True))
    truth = json.loads(Path(truth_file).read_text())
    index = open_index(folder)
    hnsw = Index(Space.InnerProduct, num_dimensions=index.dim, M=12, ef_construction=200)
    docs, owner = [], []
    started = time.perf_counter()
    for batch in index.iter_batches():
        offsets, vectors, ids = batch_arrays(batch, index.dim, folder)
        hnsw.add_items(vectors.astype(np.float32), num_threads=-1)
        owner.append(np.repeat(np.arange(len(docs), len(docs) + len(ids)), np.diff(offsets)))
        docs += [(i, vectors[a - offsets[0] : b - offsets[0]]) for i, a, b in zip(ids, offsets[:-1], offsets[1:])]
    owner = np.concatenate(owner)
    build = time.perf_counter() - started
    latencies, got = [], []
    for q in qs:
        started = time.perf_counter()
        neighbours, _ = hnsw.query(q, k=32)
        candidates = np.unique(owner[neighbours.reshape(-1)])
        scores = [float((q @ docs[c][1].astype(np.float32).T).max(axis=1).sum()) for c in candidates]
        order = np.lexsort((candidates, -np.asarray(scores)))[:100]
        got.append([(docs[candidates[i]][0], scores[i]) for i in order])
        latencies.append(time.perf_counter() - started)
    return {"build_seconds": build, "p50_ms": 1000 * statistics.median(latencies), "recall10": recall(truth, got, 10),
            "recall100": recall(truth, got, 100), "peak_rss_mb": peak_rss_mb()}


def run_worker(name: str, *args, threads: int | None = None) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)} if threads else None
    out = subprocess.run([sys.executable, __file__, "--worker", name, *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_doubling(folder: str, real_file: str, n_docs: str, queries: str, truth_file: str, centroids: str) -> dict:
    """Train on the first half of the documents, then add the second half in one incremental run."""
    from tokembed.index.previous import PreviousIndex
    from tokembed.index.reader import open_index
    from tokembed.search.plaid import compress_index, open_searchable, plaid_search
    from tokembed.search.plaid.build import StructureOptions, commit_manifest, refresh_structure

    real, total = list(np.load(real_file, allow_pickle=True)), int(n_docs)
    half, work = Path(folder), Path(folder).parent / "doubled-staging"
    template = json.loads((half.parent / "main" / "manifest.json").read_text())
    write_synthetic(half, template, synthetic_docs(real, total // 2, seed=1))
    compress_index(half, nbits=2, centroids=int(centroids) or None)
    write_synthetic(work, template, synthetic_docs(real, total, seed=1))
    manifest = json.loads((work / "manifest.json").read_text())
    for shard in manifest["shards"]:
        target = shard["file"].replace("part-", "part-9")
        shutil.move(str(work / shard["file"]), str(half / target))
        shard["file"] = target
    new = refresh_structure(half, manifest, StructureOptions(), PreviousIndex(open_index(half)), log=lambda m: None)
    commit_manifest(half, new)
    qs, truth = list(np.load(queries, allow_pickle=True)), json.loads(Path(truth_file).read_text())
    index, structure = open_searchable(half)
    out = {"drift": new["search"]["drift"]}
    for probe, candidates in GRID[1:4]:
        got = plaid_search(index, structure, qs, 100, probe, max(candidates, 100))
        out[f"recall10_probe{probe}_cand{candidates}"] = recall(truth, got, 10)
    return out


WORKERS = {"compress": worker_compress, "exact": worker_exact, "search": worker_search,
           "incremental": worker_incremental, "voyager": worker_voyager, "doubling": worker_doubling}


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


def report(args, main_dir: Path, compress: dict, exact: dict, search: dict, incremental: dict, doubling: dict, voyager) -> None:
    manifest = json.loads((main_dir / "manifest.json").read_text())
    tokens, rows = manifest["totals"]["tokens"], manifest["totals"]["rows"]
    vector_bytes = manifest["totals"]["bytes"] / tokens
    per = compress["facts"]["bytes_per_token"]
    print(f"index: {rows} documents, {tokens} tokens, dim {manifest['dim']} (spans of real MiniLM token vectors)")
    print(f"compress nbits 2, {compress['centroids']} centroids: {compress['seconds']:.1f} s, peak RSS {compress['peak_rss_mb']:.0f} MB")
    print(f"bytes/token: vectors (Arrow shards) {vector_bytes:.1f}; structure {per['total']:.2f} = " + ", ".join(f"{k} {v}" for k, v in per.items() if k != "total"))
    print(f"  all-in with vectors {vector_bytes + per['total']:.1f} B/token; without vectors {per['total']:.2f} B/token + ids/offsets")
    single = statistics.median(exact["single_seconds"])
    print(f"exhaustive: p50 {1000 * single:.1f} ms/query one at a time, {100 / exact['batched_seconds']:.2f} queries/s batched (100), peak RSS {exact['peak_rss_mb']:.0f} MB")
    print("structure search on 1 thread, warm (index opened once):")
    print(f"{'probe':>5} {'cand':>5} {'rerank':>7} {'p50 ms':>8} {'p95 ms':>8} {'q/s':>7} {'R@10':>6} {'R@100':>6} {'speedup':>8}")
    for row in search["grid"]:
        print(f"{row['probe']:>5} {row['candidates']:>5} {row['rerank']:>7} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} "
              f"{row['qps_batched']:>7.1f} {row['recall10']:>6.3f} {row['recall100']:>6.3f} {1000 * single / row['p50_ms']:>7.1f}x")
    print(f"search peak RSS {search['peak_rss_mb']:.0f} MB (structure {compress['facts']['bytes'] / 2**20:.0f} MB, "
          f"memory it touches on every query {compress['facts']['search_memory_bytes'] / 2**20:.0f} MB)")
    print(f"incremental run, {incremental['changed_docs']} documents (1%) replaced: structure refresh {incremental['seconds']:.2f} s "
          f"= {100 * incremental['seconds'] / incremental['full_compress_seconds']:.1f}% of the full compress "
          f"(coded {incremental['coded_tokens']}, carried {incremental['carried_tokens']} tokens)")
    print(f"doubled through an incremental run without retraining: {json.dumps({k: v for k, v in doubling.items() if k != 'drift'})}; "
          f"drift {json.dumps(doubling['drift'])}")
    if voyager:
        print(f"voyager HNSW (every token, 32 neighbours/query token, exact re-rank): build {voyager['build_seconds']:.1f} s, "
              f"p50 {voyager['p50_ms']:.1f} ms, R@10 {voyager['recall10']:.3f}, R@100 {voyager['recall100']:.3f}, peak RSS {voyager['peak_rss_mb']:.0f} MB")
    print("pool factor 2: not measured here (an index built with encode --pool-factor 2 compresses the same way)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs="+")
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--real", type=int, default=1500, help="real docstrings encoded once")
    parser.add_argument("--work", type=Path, default=None, help="keep the data here (default: a temp folder)")
    parser.add_argument("--centroids", type=int, default=4096,
                        help="k-means centroids (0: colbert-ai's rule, 16384 at ~1M tokens: hours of k-means on 2 busy cores)")
    parser.add_argument("--voyager-max-tokens", type=int, default=1_200_000)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker[0]](*args.worker[1:])))
        return
    root = args.work or Path(tempfile.mkdtemp(prefix="tokembed-bench-search-"))
    root.mkdir(parents=True, exist_ok=True)
    main_dir, real_file, queries = prepare(root, args.real, args.docs)
    compress = run_worker("compress", main_dir, args.centroids)
    exact = run_worker("exact", main_dir, queries)
    truth = root / "truth.json"
    truth.write_text(json.dumps(exact.pop("truth")))
    search = run_worker("search", main_dir, queries, truth, json.dumps(GRID), threads=1)  # one thread, as the anchors
    copy = root / "incremental"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(main_dir, copy)
    incremental = run_worker("incremental", copy, real_file, queries, truth, compress["seconds"])
    shutil.rmtree(root / "half", ignore_errors=True)
    shutil.rmtree(root / "doubled-staging", ignore_errors=True)
    doubling = run_worker("doubling", root / "half", real_file, args.docs, queries, truth, args.centroids)
    tokens = json.loads((main_dir / "manifest.json").read_text())["totals"]["tokens"]
    voyager = None
    if tokens <= args.voyager_max_tokens:
        try:
            voyager = run_worker("voyager", main_dir, queries, truth)
        except RuntimeError as exc:
            print(f"voyager baseline skipped: {str(exc).splitlines()[-1]}")
    report(args, main_dir, compress, exact, search, incremental, doubling, voyager)


if __name__ == "__main__":
    main()
