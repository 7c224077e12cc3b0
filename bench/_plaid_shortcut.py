"""A faster build of the benchmark index's search structure, with the same files ``compress`` would write.

The benchmark's documents are spans of one pool of real token vectors, so every token is a copy of a pool
vector. Centroid assignment and residual coding are per token and row-independent (``codec.py``), so a
token's codes are its pool vector's codes: the pool is coded once and each shard's code file is assembled
by lookup. k-means runs on the pool's distinct vectors (what a sample of the index would hold anyway).

Then ``compress_index`` itself finishes the build through its resume path: it takes the codec named by
``plaid/pending.json`` and every code file already on disk under its name beside the record a coding run
leaves (``write_coding_figures``: the file's sha256, its tokens' residual norms, here every token coded
from the pool, and the committed manifest it replaces), checks and lists them, and commits the manifest
(``retrain``: on an index that already has a structure, the pending codec replaces it rather than the committed
one being kept); the build stops if compress
wrote any code file itself. Before that, the codes of a slice of the first shard are coded by the codec itself
and must equal the assembled ones byte for byte. Use: ``bench/search.py --docs 1000000 --pool-codes``,
where k-means and coding of ~56M tokens by ``compress`` would take hours on 2 cores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

CHECK_TOKENS = 20_000


def pool_positions(real: list[np.ndarray], count: int, seed: int):
    """Per synthetic document (``synthetic_docs``' order and draws), the pool positions of its tokens."""
    from _search_data import spans

    for _, firsts, lengths in spans(sum(len(v) for v in real), count, seed):
        yield from (np.arange(f, f + l) for f, l in zip(firsts, lengths))


def build(folder: str, real_file: str, centroids: str, codec_file: str = "") -> dict:
    """``codec_file``: a codec written by an earlier build on the same pool (``bench/gpu_assets.py --search-seed``),
    used instead of k-means: the same files without faiss (a lent GPU machine has none)."""
    from tokembed.index.atomic import atomic_write_bytes
    from tokembed.index.reader import open_index
    from tokembed.search.maxsim import batch_arrays, shard_batches
    from tokembed.search.plaid import compress_index
    from tokembed.search.plaid.build import PENDING
    from tokembed.search.plaid.codec import KMEANS_ITERATIONS, KMEANS_SEED, codec_id, train
    from tokembed.search.plaid.codes import CODES_DIR, ShardCodes, codes_name, inverted_lists
    from tokembed.search.plaid.files import committed_generation, write_coding_figures, write_tensors
    from tokembed.search.plaid.report import structure_facts

    started = time.perf_counter()
    folder, k = Path(folder), int(centroids)
    real = list(np.load(real_file, allow_pickle=True))
    pool = np.concatenate(real).astype(np.float32)
    codec = _load_codec(Path(codec_file), k) if codec_file else train(pool, k, 2)
    trained = time.perf_counter()
    pool_ids, pool_residuals, pool_norms = codec.encode(pool)
    data = codec.to_bytes()
    entry = {"file": f"{CODES_DIR}/codec-{codec_id(data)[:16]}.safetensors"}
    entry.update(write_tensors(folder / entry["file"], codec.tensors(), {"nbits": "2"}))
    index = open_index(folder)
    key = {"shards": [shard["sha256"] for shard in index.shards], "nbits": 2, "centroids": k}
    training = {"sample_tokens": len(pool), "index_tokens": index.tokens, "kmeans_iterations": KMEANS_ITERATIONS, "seed": KMEANS_SEED,
                "library": "faiss", "note": "bench/_plaid_shortcut.py: k-means on the benchmark's pool of real vectors"
                + (f" (codec {Path(codec_file).name}, trained by an earlier build)" if codec_file else "")}
    atomic_write_bytes(folder / PENDING, json.dumps({"key": key, "codec": entry, "centroids": codec.k, "training": training}).encode())
    positions = pool_positions(real, index.rows, seed=1)
    replacing = committed_generation(folder)  # the generation compress_index replaces next
    assembled_files = {}  # path -> inode: compress rewriting a file (temp, rename) gives it another
    for number, shard in enumerate(index.shards):
        rows = [next(positions) for _ in range(shard["rows"])]
        lengths = np.array([len(r) for r in rows], np.int64)
        where = np.concatenate(rows)
        ids, residuals = pool_ids[where], pool_residuals[where]
        if number == 0:
            _check_against_the_codec(codec, index, shard, ids, residuals, batch_arrays, shard_batches)
        offsets, lists = inverted_lists(ids, lengths, codec.k)  # fewer than k where k-means made identical ones
        codes = ShardCodes(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), ids, residuals, offsets, lists,
                           codec.id_bits)
        path = folder / codes_name(shard["sha256"], entry["sha256"])
        write_coding_figures(path, len(ids), float(pool_norms[where].sum(dtype=np.float64)), codes.write(path), replacing)
        assembled_files[path] = path.stat().st_ino
    assembled = time.perf_counter()
    summary = compress_index(folder, nbits=2, centroids=k, retrain=True)  # resumes: takes the codec and the code files
    recoded = [path.name for path, inode in assembled_files.items() if path.stat().st_ino != inode]
    assert not recoded, f"compress coded {len(recoded)} shard(s) itself: the assembled files were not taken ({recoded[0]})"
    from _timing import peak_rss_mb

    return {"seconds": time.perf_counter() - started, "kmeans_seconds": trained - started,
            "assemble_seconds": assembled - trained, "commit_seconds": summary.seconds, "peak_rss_mb": peak_rss_mb(),
            "centroids": k, "facts": structure_facts(open_index(folder)), "pool_tokens": len(pool),
            "codec_carried": bool(codec_file)}


def _load_codec(path: Path, k: int):
    from tokembed.search.plaid.build import read_codec

    codec = read_codec(path)
    if codec.k > k:  # fewer is a codec whose identical centroids training kept once
        raise SystemExit(f"{path}: a codec of {codec.k} centroids, more than the --centroids {k} asked for")
    return codec


def _check_against_the_codec(codec, index, shard, ids, residuals, batch_arrays, shard_batches) -> None:
    vectors = []
    for batch in shard_batches(index, shard, verify=False):
        vectors.append(batch_arrays(batch, index.dim, "shard")[1])
        if sum(len(v) for v in vectors) >= CHECK_TOKENS:
            break
    vectors = np.concatenate(vectors)[:CHECK_TOKENS]
    coded_ids, coded_residuals, _ = codec.encode(vectors)
    assert np.array_equal(coded_ids, ids[:CHECK_TOKENS]) and np.array_equal(coded_residuals, residuals[:CHECK_TOKENS]), \
        "assembled codes differ from the codec's"
