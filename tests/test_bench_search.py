"""bench/search.py's own machinery, on tiny indexes and without the model.

* bench/_plaid_shortcut.py (``--pool-codes``, the build ``bench/gpu_search.sh`` runs on a lent GPU machine) writes
  code files that ``compress_index`` takes through its resume path: a change of what compress requires of a code
  file it keeps breaks this test, not the benchmark's GPU command (it broke once when compress began keeping only
  files beside a ``.coded.json`` record).
* ``--work DIR --reuse`` scores recall against an exact truth of the index as it is, not as it was before an
  ``incremental`` phase replaced documents in place.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tokembed.index.format import FORMAT, FORMAT_VERSION
from tokembed.index.reader import open_index
from tokembed.search import search_vectors
from tokembed.search.maxsim import batch_arrays
from tokembed.search.plaid.codec import Codec, residual_buckets
from tokembed.search.plaid.files import map_tensors, write_tensors

BENCH = Path(__file__).resolve().parent.parent / "bench"
DIM, CENTROIDS = 16, 16
TEMPLATE = {"format": FORMAT, "format_version": FORMAT_VERSION, "dim": DIM, "embedding_dtype": "float16"}


@pytest.fixture
def bench(monkeypatch):
    """bench/'s modules, imported as its scripts import them (bench/ on the path)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import _plaid_shortcut
    import _search_data

    return _plaid_shortcut, _search_data


def _unit_rows(rng, n: int) -> np.ndarray:
    """Unit vectors exact in float16, as an index gives them back."""
    v = rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)


def _codec_file(path: Path, pool: np.ndarray, rng) -> Path:
    """A codec without k-means (as ``--codec`` carries one to a machine without faiss): pool vectors as centroids."""
    centroids = pool[rng.choice(len(pool), CENTROIDS, replace=False)]
    partial = Codec(centroids, np.zeros(0, np.float32), np.zeros(0, np.float32), 2)
    cutoffs, weights = residual_buckets((pool - centroids[partial.assign(pool)]).reshape(-1), 4)
    write_tensors(path, Codec(centroids, cutoffs, weights, 2).tensors(), {"nbits": "2"})
    return path


@pytest.mark.parametrize("training", ["codec file", "k-means"])
def test_the_pool_codes_build_is_taken_by_compress(tmp_path, bench, training):
    if training == "k-means":
        pytest.importorskip("faiss")
    shortcut, data = bench
    rng = np.random.default_rng(0)
    real = [_unit_rows(rng, n) for n in (60, 50, 40)]  # the benchmark's "real" documents: the pool
    np.save(tmp_path / "real.npy", np.array(real, dtype=object), allow_pickle=True)
    folder = tmp_path / "main"
    data.write_synthetic(folder, TEMPLATE, data.synthetic_docs(real, 8, seed=1))  # as bench/search.py's prepare
    codec = str(_codec_file(tmp_path / "codec.safetensors", np.concatenate(real), rng)) if training == "codec file" else ""

    built = shortcut.build(str(folder), str(tmp_path / "real.npy"), str(CENTROIDS), codec)  # asserts compress took its files

    index = open_index(folder)
    structure = index.manifest["search"]
    assert built["facts"]["centroids"] == structure["centroids"] == CENTROIDS
    assert structure["last_run"] == {"coded_tokens": index.tokens, "carried_tokens": 0}
    assert not list((folder / "plaid").glob("*.coded.json"))  # the records went with the commit
    # the figures compress would have recorded coding the stored vectors itself
    codec = Codec.from_tensors(*map_tensors(folder / structure["codec"]["file"]))
    vectors = np.concatenate([batch_arrays(batch, DIM, "shard")[1] for batch in index.iter_batches()])
    assert structure["training"]["residual_norm"] == pytest.approx(float(codec.encode(vectors)[2].mean()), abs=1e-5)


def _search_bench(work: Path, *args) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(BENCH / "search.py"), "--work", work, "--docs", "60",
                          "--centroids", str(CENTROIDS), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_reuse_after_an_incremental_phase_scores_against_the_index_as_it_is(tmp_path, bench):
    """Was: ``--reuse`` kept truth.json from before the incremental phase replaced 1% of the documents, so recall
    was measured against documents that are no longer there in that form (and the report's ``index:`` line read
    the manifest after the incremental phase, not the one the phases measured)."""
    _, data = bench
    rng = np.random.default_rng(1)
    work = tmp_path / "work"
    real = [_unit_rows(rng, n) for n in (60, 50, 40)]
    queries = [_unit_rows(rng, n) for n in range(4, 9)]  # of other lengths: np.save keeps them apart
    data.write_synthetic(work / "real", TEMPLATE, [([f"r{i}" for i in range(3)], real)])  # what --real encodes
    data.write_synthetic(work / "queries", TEMPLATE, [([f"q{i}" for i in range(5)], queries)])
    codec = _codec_file(tmp_path / "codec.safetensors", np.concatenate(real), rng)
    _search_bench(work, "--pool-codes", "--codec", codec, "--phases", "incremental")
    main = work / "main"
    present = search_vectors(str(main), queries, top_k=100, exact=True)  # the index the next run measures
    tokens = open_index(main).tokens

    out = _search_bench(work, "--reuse", "--phases", "voyager")  # a phase that leaves the index as it is

    truth = json.loads((work / "truth.json").read_text())
    scores = json.loads((work / "truth.scores.json").read_text())
    assert truth == [[hit.id for hit in row] for row in present]
    np.testing.assert_allclose(scores, [[hit.score for hit in row] for row in present], atol=1e-5)
    assert "the exact scan runs again" in out.stdout
    assert f"index: 60 documents, {tokens} tokens," in out.stdout
    again = _search_bench(work, "--reuse", "--phases", "voyager")  # the index as the truth is: kept
    assert "the exact scan runs again" not in again.stdout
    assert json.loads((work / "truth.json").read_text()) == truth
