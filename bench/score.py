"""Benchmark ``tokembed score``'s scan (``search_vectors``) against the dense zero-padded reference.

    python bench/score.py                # ~1M document tokens, dim 128, 100 queries x 32 tokens
    python bench/score.py --big          # instead: an index of >= 2 GB on disk, peak RSS while scanning
    python bench/score.py --device cuda  # both sides on the GPU (the reference's documents held there)

The reference is MaxSim in the style of ``pylate.scores.colbert_scores``: documents padded with zeros
to the longest of their batch, ``einsum("ash,bth->abst")``, max over document tokens, sum over query
tokens (batched over documents so memory stays sane), then ``torch.topk``. Both run on the CPU with
the default thread count, in separate worker processes (so each peak RSS is its own), each after a
warm-up; the two sides alternate and times are the median of 3 runs per side. tokembed's time includes reading the shards from the (warm) page cache
and checking their sha256; the reference's documents are already in memory as float32 tensors.

Two rates, padding never counted as work: token pairs/s (query tokens x real document tokens) and, in
the issue's unit, query pairs/s (whole 32-token queries x real document tokens). The box's float32
matmul ceiling is measured in the same run and printed in both units. Prints, asserts nothing.
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

import numpy as np
from _timing import peak_rss_mb, timed_runs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def build_index(folder: Path, total_tokens: int, dim: int, seed: int = 0, shard_rows: int = 50_000) -> dict:
    """Random unit-norm float16 vectors, document lengths uniform in [30, 300]."""
    from tokembed.index.format import FORMAT, FORMAT_VERSION
    from tokembed.index.writer import IndexWriter

    rng = np.random.default_rng(seed)
    writer = IndexWriter(folder, dim, "float16", shard_rows=shard_rows)
    rows = tokens = 0
    while tokens < total_tokens:  # batches of up to 1000 documents, fewer near the end (165 tokens on average)
        lengths = rng.integers(30, 301, size=min(1000, (total_tokens - tokens) // 165 + 1))
        flat = rng.standard_normal((int(lengths.sum()), dim), dtype=np.float32)
        flat /= np.linalg.norm(flat, axis=1, keepdims=True)
        vectors = np.split(flat.astype(np.float16), np.cumsum(lengths)[:-1])
        ids = [f"doc{rows + i}" for i in range(len(lengths))]
        token_ids = [np.zeros(n, np.int32) for n in lengths]
        writer.write(ids, vectors, token_ids, [bytes(32)] * len(ids))
        rows += len(ids)
        tokens += int(lengths.sum())
    writer.close_shard()
    shards = [s.to_json() for s in writer.shards]
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dim": dim,
        "embedding_dtype": "float16",
        "shards": shards,
        "totals": {"rows": rows, "tokens": tokens, "bytes": sum(s["bytes"] for s in shards)},
    }
    writer.commit(manifest)
    return manifest


def make_queries(n: int, length: int, dim: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, length, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=2, keepdims=True)
    return list(q.astype(np.float16))


# ---------------------------------------------------------------------------------------------- workers


def worker_tokembed(index_dir: str, n_queries: int, runs: int, top_k: int, device: str = "cpu") -> dict:
    from tokembed.index import open_index
    from tokembed.search import search_vectors

    index = open_index(index_dir)
    queries = make_queries(n_queries, 32, index.dim)
    search_vectors(index, queries[:2], top_k=top_k, device=device)  # warm-up (page cache, BLAS, CUDA context)
    times = timed_runs(lambda: search_vectors(index, queries, top_k=top_k, device=device), runs)
    return {"seconds": statistics.median(times), "times": times, "peak_rss_mb": peak_rss_mb(), "threads": _blas_threads()}


def worker_reference(index_dir: str, n_queries: int, runs: int, top_k: int, device: str = "cpu", doc_batch: int = 128) -> dict:
    import torch
    from torch.nn.utils.rnn import pad_sequence

    from tokembed.index import open_index

    index = open_index(index_dir)
    docs = []
    for batch in index.iter_batches(["embeddings"]):
        column = batch.column(0)
        offsets = column.offsets.to_numpy()
        flat = column.values.values.to_numpy().reshape(-1, index.dim)
        docs += [torch.from_numpy(flat[a:b].astype(np.float32)).to(device) for a, b in zip(offsets[:-1], offsets[1:])]
    queries = torch.from_numpy(np.stack(make_queries(n_queries, 32, index.dim)).astype(np.float32)).to(device)

    def colbert_scores(q, d):  # pylate.scores.colbert_scores, without masks: zero padding
        return torch.einsum("ash,bth->abst", q, d).max(axis=-1).values.sum(axis=-1)

    def run(qs):
        scores = torch.cat([colbert_scores(qs, pad_sequence(docs[i : i + doc_batch], batch_first=True))
                            for i in range(0, len(docs), doc_batch)], dim=1)
        top = torch.topk(scores, min(top_k, scores.shape[1]), dim=1)
        if device != "cpu":
            torch.cuda.synchronize()
        return top

    run(queries[:2])
    times = timed_runs(lambda: run(queries), runs)
    return {"seconds": statistics.median(times), "times": times, "peak_rss_mb": peak_rss_mb(), "threads": _threads()}


def _threads() -> dict:
    import torch

    return {"torch": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def _blas_threads() -> dict:
    """numpy's BLAS threads, without importing torch (its libraries would count in the peak RSS)."""
    try:
        from threadpoolctl import threadpool_info

        blas = [f"{i['internal_api']}:{i['num_threads']}" for i in threadpool_info() if i["user_api"] == "blas"]
    except ImportError:
        blas = []
    return {"numpy_blas": blas or f"default ({os.cpu_count()} CPUs)", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def run_worker(name: str, index_dir: Path, n_queries: int, runs: int, top_k: int, device: str = "cpu") -> dict:
    command = [sys.executable, __file__, "--worker", name, "--index", str(index_dir),
               "--queries", str(n_queries), "--runs", str(runs), "--top-k", str(top_k), "--device", device]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def interleaved(folder: Path, n_queries: int, runs: int, top_k: int, device: str = "cpu") -> tuple[dict, dict]:
    """Alternate the two workers (one timed run each, after its own warm-up), so that load from other
    processes on the machine hits both sides alike; the median and the highest peak RSS per side."""
    results: dict[str, list[dict]] = {"tokembed": [], "reference": []}
    for _ in range(runs):
        for name in results:
            results[name].append(run_worker(name, folder, n_queries, 1, top_k, device))
    merged = []
    for name, parts in results.items():
        times = [t for part in parts for t in part["times"]]
        merged.append({"seconds": statistics.median(times), "times": times, "threads": parts[0]["threads"],
                       "peak_rss_mb": max(part["peak_rss_mb"] for part in parts)})
    return merged[0], merged[1]


# ---------------------------------------------------------------------------------------------- modes


def report(name: str, result: dict, n_queries: int, query_tokens: int, doc_tokens: int) -> None:
    seconds = result["seconds"]
    pairs = query_tokens * doc_tokens / seconds
    query_pairs = n_queries * doc_tokens / seconds
    print(f"{name:>10}: {seconds:8.3f} s  {n_queries / seconds:10.2f} queries/s  {pairs / 1e6:8.1f} M token pairs/s  "
          f"{query_pairs / 1e6:6.2f} M query pairs/s  peak RSS {result['peak_rss_mb']:.0f} MB  "
          f"runs {[round(t, 3) for t in result['times']]}")


def matmul_ceiling(dim: int, query_tokens: int = 32) -> None:
    """The box's float32 GEMM rate (numpy BLAS, large square-ish product) and what it means in pairs/s."""
    a = np.random.default_rng(0).standard_normal((4096, 1024), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((1024, 2048), dtype=np.float32)
    a @ b
    seconds = min(timed_runs(lambda: a @ b, 5))
    flops = 2 * 4096 * 1024 * 2048 / seconds
    token_pairs = flops / (2 * dim)
    print(f"float32 matmul ceiling: {flops / 1e9:.0f} GFLOP/s = {token_pairs / 1e6:.0f} M token pairs/s = "
          f"{token_pairs / query_tokens / 1e6:.1f} M query pairs/s at {query_tokens} query tokens x {dim} dims")


def normal_mode(root: Path, tokens: int, n_queries: int, runs: int, top_k: int, device: str = "cpu") -> None:
    folder = root / "index"
    start = time.perf_counter()
    manifest = build_index(folder, tokens, 128, shard_rows=2000)
    totals = manifest["totals"]
    print(f"index: {totals['rows']} docs, {totals['tokens']} tokens, dim 128 float16, {len(manifest['shards'])} shards, "
          f"{totals['bytes'] / 2**20:.0f} MiB (built in {time.perf_counter() - start:.1f} s)")
    print(f"queries: {n_queries} x 32 tokens; device {device}; CPU threads: torch default, numpy BLAS default")
    ours, reference = interleaved(folder, n_queries, runs, top_k, device)
    print(f"threads: tokembed {ours['threads']}, reference {reference['threads']}")
    report("reference", reference, n_queries, n_queries * 32, totals["tokens"])
    report("tokembed", ours, n_queries, n_queries * 32, totals["tokens"])
    if device == "cpu":
        matmul_ceiling(128)
    print(f"speedup: {reference['seconds'] / ours['seconds']:.2f}x")


def big_mode(root: Path, n_queries: int, runs: int, top_k: int, device: str = "cpu") -> None:
    folder = root / "big"
    start = time.perf_counter()
    manifest = build_index(folder, 8_500_000, 128)
    totals = manifest["totals"]
    print(f"big index: {totals['rows']} docs, {totals['tokens']} tokens, {len(manifest['shards'])} shards, "
          f"{totals['bytes'] / 2**30:.2f} GiB on disk (built in {time.perf_counter() - start:.1f} s)")
    ours = run_worker("tokembed", folder, n_queries, runs, top_k, device)
    report("tokembed", ours, n_queries, n_queries * 32, totals["tokens"])
    print(f"peak RSS {ours['peak_rss_mb']:.0f} MB while scanning {totals['bytes'] / 2**20:.0f} MiB on {device} "
          f"(default --block-tokens 262144: {_block_buffer(device)})")


def _block_buffer(device: str) -> str:
    """The scan's reusable host block (``tokembed/search/maxsim.py``): float32 on the CPU; on another device the
    stored float16, upcast there."""
    if device == "cpu":
        return f"a {262144 * 128 * 4 >> 20} MiB float32 block buffer"
    return f"a {262144 * 128 * 2 >> 20} MiB float16 block buffer on the host, upcast on {device}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000, help="document tokens of the normal index")
    parser.add_argument("--queries", type=int, default=None, help="default 100 (10 with --big)")
    parser.add_argument("--runs", type=int, default=None, help="default 3 (1 with --big)")
    parser.add_argument("--top-k", type=int, default=10, help="hits per query (default 10)")
    parser.add_argument("--big", action="store_true", help="scan a >= 2 GB index (512 MiB shards) and report peak RSS")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the indexes (default: a temp dir)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: both sides score there (the reference's "
                        "documents are moved to the GPU once, before timing; tokembed reads its shards per run; --big: tokembed alone)")
    parser.add_argument("--worker", choices=["tokembed", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.queries = args.queries or (10 if args.big else 100)
    args.runs = args.runs or (1 if args.big else 3)
    if args.worker:
        fn = worker_tokembed if args.worker == "tokembed" else worker_reference
        print(json.dumps(fn(args.index, args.queries, args.runs, args.top_k, args.device)))
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if args.big:
            big_mode(Path(tmp), args.queries, args.runs, args.top_k, args.device)
        else:
            normal_mode(Path(tmp), args.tokens, args.queries, args.runs, args.top_k, args.device)


if __name__ == "__main__":
    main()
