"""The benchmark's phases that change or rebuild the index, and the Voyager peer (``bench/search.py``'s workers:
each runs in a process of its own)."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from _search_data import read_truth, recall, recall_with_ties, synthetic_docs, write_synthetic
from _timing import peak_rss_mb

GRID = [(8, 128), (16, 128), (16, 320), (24, 384), (32, 512), (64, 512)]  # (probe, candidates); (24, 384) are the defaults
DEFAULTS = GRID.index((24, 384))


def worker_incremental(folder: str, real_file: str, queries: str, truth_file: str, full_seconds: str) -> dict:
    """1% of the documents replaced: the structure part of an incremental run (what encode calls)."""
    from tokembed.index.previous import PreviousIndex
    from tokembed.index.reader import open_index
    from tokembed.index.writer import next_shard_number
    from tokembed.search.plaid.build import StructureOptions, commit_manifest, refresh_structure

    real = list(np.load(real_file, allow_pickle=True))
    work = Path(folder)
    previous = PreviousIndex(open_index(work))
    rows = previous.index.rows
    changed = set(np.random.default_rng(5).choice(rows, size=max(1, rows // 100), replace=False).tolist())
    # new content on every run, also when the phase runs again in place (``--reuse``) on what it wrote last time
    fresh = synthetic_docs(real, len(changed), seed=int(previous.index.manifest["shards"][0]["sha256"][:8], 16), prefix="new")
    replacement = {f"doc{r}": v for r, v in zip(sorted(changed), [v for _, vs in fresh for v in vs])}
    template = previous.index.manifest

    def batches():
        for ids, vectors in synthetic_docs(real, rows, seed=1):
            yield ids, [replacement.get(i, v) for i, v in zip(ids, vectors)]

    staging = work.parent / "staging"
    write_synthetic(staging, template, batches())  # the new generation's shards, in another folder
    manifest = json.loads((staging / "manifest.json").read_text())
    first = next_shard_number(work / "data")  # numbers after the live generation's: its shards stay as they are
    for number, shard in enumerate(manifest["shards"], start=first):
        name = f"data/part-{number:06d}.arrow"
        shutil.move(str(staging / shard["file"]), str(work / name))
        shard["file"] = name
    # what the refresh imports on first use (the weights check: tokembed.models, so torch, ~1.5 s; the tensor files'
    # safetensors): an encode re-run has them loaded already, so they are imported here, outside the timed window
    import safetensors.numpy  # noqa: F401

    import tokembed.models.resolve  # noqa: F401

    started = time.perf_counter()
    new = refresh_structure(work, manifest, previous.index.manifest, StructureOptions(), previous, log=lambda m: None)
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
    carried = PreviousIndex(open_index(half))
    new = refresh_structure(half, manifest, carried.index.manifest, StructureOptions(), carried, log=lambda m: None)
    commit_manifest(half, new)
    qs, truth = list(np.load(queries, allow_pickle=True)), json.loads(Path(truth_file).read_text())
    index, structure = open_searchable(half)
    out = {"drift": new["search"]["drift"]}
    for probe, candidates in (GRID[1], GRID[2], GRID[DEFAULTS]):
        got = plaid_search(index, structure, qs, 100, probe, max(candidates, 100))
        out[f"recall10_probe{probe}_cand{candidates}"] = recall(truth, got, 10)
    return out


def worker_pooled(folder: str, pooled: str, queries: str, truth_file: str, centroids: str) -> dict:
    """The same documents pooled with factor 2 (PyLate's hierarchical pooling, ``encode --pool-factor 2``'s
    function, here on the stored float16 vectors), compressed and searched against the unpooled exact truth."""
    import torch

    from tokembed.index import open_index
    from tokembed.models.pooling import pool_document
    from tokembed.search.maxsim import batch_arrays
    from tokembed.search.plaid import compress_index, open_searchable, plaid_search
    from tokembed.search.plaid.report import structure_facts

    source = open_index(folder)

    def batches():
        for batch in source.iter_batches():
            offsets, vectors, _ = batch_arrays(batch, source.dim, folder)
            ids = batch.column("id").to_pylist()
            docs = [torch.from_numpy(vectors[a - offsets[0] : b - offsets[0]].astype(np.float32)) for a, b in zip(offsets[:-1], offsets[1:])]
            yield ids, [pool_document(v, np.zeros(len(v), np.int32), 2)[0].numpy() for v in docs]

    started = time.perf_counter()
    write_synthetic(Path(pooled), source.manifest, batches())
    pool_seconds = time.perf_counter() - started
    compress_index(pooled, nbits=2, centroids=int(centroids) or None)
    index, structure = open_searchable(pooled)
    facts = structure_facts(index)
    qs = list(np.load(queries, allow_pickle=True))
    truth, scores = read_truth(truth_file)
    latencies = []
    for q in qs:
        started = time.perf_counter()
        plaid_search(index, structure, [q], 10)
        latencies.append(time.perf_counter() - started)
    got = plaid_search(index, structure, qs, 10)
    return {"tokens": index.tokens, "source_tokens": source.tokens, "bytes_per_vector": facts["bytes_per_token"]["total"],
            "bytes_per_token": facts["bytes"] / source.tokens, "p50_ms": 1000 * statistics.median(latencies),
            "recall10": recall(truth, got, 10), "recall10_ties": recall_with_ties(truth, scores, got), "pool_seconds": pool_seconds}
