"""``bench/search.py``'s printed report: one block of figures per phase that ran."""

from __future__ import annotations

import json
import os
import statistics


def report(r: dict) -> None:
    """``r``: the phases' results; ``r["index"]``: the main index the phases before ``incremental`` measured."""
    tokens, rows = r["index"]["tokens"], r["index"]["rows"]
    vector_bytes = r["index"]["bytes"] / tokens
    compress, exact, search = r["compress"], r["exact"], r.get("search", {"grid": [], "peak_rss_mb": float("nan")})
    per = compress["facts"]["bytes_per_token"]
    print(f"index: {rows} documents, {tokens} tokens, dim {r['index']['dim']} (spans of real MiniLM token vectors)")
    how = _build_kind(compress)
    print(f"build nbits 2, {compress['centroids']} centroids by {how}: {compress['seconds']:.1f} s, peak RSS {compress['peak_rss_mb']:.0f} MB")
    print(f"bytes/token: vectors (Arrow shards) {vector_bytes:.1f}; structure {per['total']:.2f} = " + ", ".join(f"{k} {v}" for k, v in per.items() if k != "total"))
    print(f"  all-in with vectors {vector_bytes + per['total']:.1f} B/token; without vectors {per['total']:.2f} B/token + ids/offsets")
    single = statistics.median(exact["single_seconds"]) if exact else None
    if exact:
        print(exhaustive_line(exact, single))
    else:
        print("exhaustive scan skipped (--no-exact): no recall, no speedup")
    print(f"structure search on 1 thread, warm (index opened once), candidate stages: {search.get('device', 'numpy on the CPU')}:")
    print("(p50/p95: the second pass over the queries, their candidates' vectors in the page cache; 1st p50: the first pass;")
    print(" ties: recall@10 counting documents that tie the 10th best among the scan's top 100; tied: among all, exact float64 scores)")
    print(f"{'probe':>5} {'cand':>7} {'rerank':>7} {'p50 ms':>8} {'p95 ms':>8} {'1st p50':>8} {'q/s':>7} {'R@10':>6} {'ties':>6} {'tied':>6} {'R@100':>6} {'speedup':>8}")
    for row in search["grid"]:
        print(f"{row['probe']:>5} {_candidates(row):>7} {row['rerank']:>7} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['first_p50_ms']:>8.1f} "
              f"{row['qps_batched']:>7.1f} {_figure(row['recall10']):>6} {_figure(row['recall10_ties']):>6} {_figure(row.get('recall10_exact_ties')):>6} {_figure(row['recall100']):>6} "
              f"{_speedup(single, row):>8}")
    for row in r.get("search_cores", {"grid": []})["grid"]:
        print(f"the same with all {os.cpu_count()} cores ({_on_all_cores(r['search_cores'])}), probe {row['probe']}, "
              f"candidates {_candidates(row)}, {row['rerank']}: p50 {row['p50_ms']:.1f} ms, p95 {row['p95_ms']:.1f} ms (first pass {row['first_p50_ms']:.1f}), "
              f"{row['qps_batched']:.1f} q/s batched{_kind_of_batch(row)}{_first_call(row)}, R@10 {_figure(row['recall10'])} (ties {_figure(row['recall10_ties'])}, tied {_figure(row.get('recall10_exact_ties'))}), {_speedup(single, row)} the exhaustive p50")
    print(f"search peak RSS {search['peak_rss_mb']:.0f} MB (structure {compress['facts']['bytes'] / 2**20:.0f} MB, "
          f"memory searching needs whatever it asks, per info {compress['facts']['search_memory_bytes'] / 2**20:.0f} MB)")
    cores = r.get("search_cores", {})
    if "batch_tree_pss_mb" in cores:
        who = "this process and its query processes together" if cores["grid"][-1].get("query_processes") else "this process"
        print(f"a batch of {queries(cores)} on all cores, {who}: peak PSS {cores['batch_tree_pss_mb']:.0f} MB")
    if "pooled" in r:
        pooled = r["pooled"]
        print(f"pool factor 2: {pooled['tokens']} vectors for {pooled['source_tokens']} tokens; structure {pooled['bytes_per_vector']:.2f} B per stored vector = "
              f"{pooled['bytes_per_token']:.2f} B per original token; the defaults: p50 {pooled['p50_ms']:.1f} ms, "
              f"R@10 vs the unpooled exact scan {pooled['recall10']:.3f} (ties {pooled['recall10_ties']:.3f}); pooling {pooled['pool_seconds']:.0f} s")
    if "voyager" in r:
        voyager = r["voyager"]
        print(f"voyager HNSW (every token, 32 neighbours/query token, exact re-rank): build {voyager['build_seconds']:.1f} s, "
              f"p50 {voyager['p50_ms']:.1f} ms, R@10 {voyager['recall10']:.3f}, R@100 {voyager['recall100']:.3f}, peak RSS {voyager['peak_rss_mb']:.0f} MB")
    if "doubling" in r:
        doubling = r["doubling"]
        print(f"doubled through an incremental run without retraining: {json.dumps({k: round(v, 3) for k, v in doubling.items() if k != 'drift'})}; "
              f"drift {json.dumps(doubling['drift'])}")
    if "incremental" in r:
        incremental = r["incremental"]
        print(f"incremental run, {incremental['changed_docs']} documents (1%) replaced: structure refresh {incremental['seconds']:.2f} s "
              f"= {100 * incremental['seconds'] / incremental['full_compress_seconds']:.1f}% of {_full_build(compress)} "
              f"(coded {incremental['coded_tokens']}, carried {incremental['carried_tokens']} tokens), peak RSS {incremental['peak_rss_mb']:.0f} MB")


def exhaustive_line(exact: dict, single: float) -> str:
    """The exhaustive scan's figures: the batch's rate over the queries it had (fewer than 100 where --real left fewer)."""
    count = queries(exact)
    return (f"exhaustive: p50 {1000 * single:.1f} ms/query one at a time, {count / exact['batched_seconds']:.2f} queries/s "
            f"batched ({count}), peak RSS {exact['peak_rss_mb']:.0f} MB")


def queries(figures: dict) -> int:
    """How many queries a worker ran: 100 but where ``--real`` left fewer; 100 in figures of runs that did not count them."""
    return figures.get("queries", 100)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _speedup(single: float | None, row: dict) -> str:
    return "-" if single is None else f"{1000 * single / row['p50_ms']:.1f}x"


def _build_kind(compress: dict) -> str:
    """How the structure was built: by ``compress_index``, or by the pool-codes shortcut (with its parts' times)."""
    if "pool_tokens" not in compress:
        return "compress_index"
    training = ("codec carried from an earlier build" if compress.get("codec_carried")
                else f"k-means on {compress['pool_tokens']} pool vectors {compress['kmeans_seconds']:.0f} s")
    return (f"pool codes ({training}, code files assembled {compress['assemble_seconds']:.0f} s, "
            f"compress_index resume + commit {compress['commit_seconds']:.0f} s)")


def _full_build(compress: dict) -> str:
    """What the incremental refresh's time is a share of: a real compress, or only the pool-codes shortcut's build."""
    return "the pool-codes build's time (a shortcut, not a full compress)" if "pool_tokens" in compress else "the full compress"


def _on_all_cores(cores: dict) -> str:
    """What the run with every core measures: a query alone runs in the caller's thread with torch's OpenMP on one
    thread (``tokembed/search/plaid/threads.py``), so only the batch spreads over the cores."""
    device = cores.get("device", "")
    alone = f"candidate stages {device}" if device.startswith("torch on") else (
        "torch's products on one OpenMP thread" if "torch" in device else "numpy's BLAS on its own threads")
    return f"one query at a time: in the caller's thread, {alone}; batched: one query per core"


def _kind_of_batch(row: dict) -> str:
    if "qps_batched_threads" not in row:
        return ""
    return f" in query processes ({row['qps_batched_threads']:.1f} on query threads)"


def _first_call(row: dict) -> str:
    """The first batched call's queries/s, where the run recorded it (it also starts the query threads)."""
    return f" (first call {row['first_qps_batched']:.1f})" if "first_qps_batched" in row else ""


def _candidates(row: dict) -> str:
    """The candidates, and the stage-1 pool where it is not the default 5x."""
    pool = row.get("pool", 5)
    return str(row["candidates"]) if pool == 5 else f"{row['candidates']}/{pool}x"
