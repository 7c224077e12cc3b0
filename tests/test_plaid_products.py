"""The query x centroid product: oneDNN's linear on centroids packed once where torch is imported, numpy's
product elsewhere or where that op is missing or disagrees; every query runs torch's OpenMP on one thread."""

from __future__ import annotations

import importlib.machinery
import sys
import threading
import types

import numpy as np
import pytest
import torch

from tokembed.search.plaid import products, threads
from tokembed.search.plaid.codec import Codec

K, DIM = 4096, 128


def codec() -> Codec:
    rng = np.random.default_rng(3)
    centroids = rng.standard_normal((K, DIM))
    centroids = (centroids / np.linalg.norm(centroids, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
    return Codec(centroids, np.zeros(3, np.float32), np.zeros(4, np.float32), 2)


def queries(n: int) -> np.ndarray:
    q = np.random.default_rng(n).standard_normal((n, DIM))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def exact(codec: Codec, q: np.ndarray) -> np.ndarray:
    return q.astype(np.float64) @ codec.centroids.T.astype(np.float64)


@pytest.mark.parametrize("n", [1, 14, 32, 77])  # below, at and past the count the layout is packed for
def test_packed_product_equals_the_float64_product_and_is_used(n):
    c = codec()
    scores = products.centroid_scores(c, queries(n), np.empty((n, K), np.float32))
    assert scores.shape == (n, K) and scores.dtype == np.float32 and scores.flags.c_contiguous
    assert np.abs(scores - exact(c, queries(n))).max() < 1e-5
    assert products.packed_bytes(c) == (K * DIM * 4 if torch.backends.mkldnn.is_available() else 0)


def test_without_torch_numpys_product_fills_out(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")
    c, out = codec(), np.empty((14, K), np.float32)
    scores = products.centroid_scores(c, queries(14), out)
    assert scores is out and np.abs(out - exact(c, queries(14))).max() < 1e-5
    assert products.packed_bytes(c) == 0


def test_a_packed_product_that_disagrees_is_not_used(monkeypatch):
    real = products._linear
    monkeypatch.setattr(products, "_linear", lambda torch, q, packed: real(torch, q, packed) + 1e-3)
    c, out = codec(), np.empty((5, K), np.float32)
    assert products.centroid_scores(c, queries(5), out) is out  # numpy's product, into out
    assert products.packed_bytes(c) == 0
    assert np.abs(out - exact(c, queries(5))).max() < 1e-5


def test_a_torch_without_the_op_falls_back(monkeypatch):
    def missing(*args):
        raise RuntimeError("no such op")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", missing)
    c = codec()
    assert np.abs(products.centroid_scores(c, queries(3), np.empty((3, K), np.float32)) - exact(c, queries(3))).max() < 1e-5
    assert products.packed_bytes(c) == 0


@pytest.mark.parametrize("with_torch", [True, False])
def test_token_scores_fill_out_with_the_product(monkeypatch, with_torch):
    if not with_torch:
        monkeypatch.delitem(sys.modules, "torch")
    vectors = queries(300)
    q = queries(20)[::-2]  # reversed and strided, as a caller's slice may be
    out = np.full((10, 300), 7.0, np.float32)
    assert products.token_scores(q, vectors, out) is out
    assert np.abs(out - q.astype(np.float64) @ vectors.T.astype(np.float64)).max() < 1e-5


def test_query_threads_run_openmp_on_one_thread_and_the_caller_keeps_its_own(monkeypatch):
    monkeypatch.setattr(threads, "_blas_threads", lambda: 2)
    before = torch.get_num_threads()
    seen = threads.map_queries(lambda q: torch.get_num_threads(), list(range(8)))
    assert seen == [1] * 8
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("blas_threads, count", [(2, 1), (1, 6)])  # one query; a batch one at a time (OPENBLAS_NUM_THREADS=1)
def test_queries_in_the_callers_thread_run_openmp_on_one_thread_and_restore_its_count(monkeypatch, blas_threads, count):
    # two OpenMP threads spin and wait at barriers: beside a busy process a single query searched ~2.6x slower
    monkeypatch.setattr(threads, "_blas_threads", lambda: blas_threads)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = threads.map_queries(lambda q: (threading.current_thread().name, torch.get_num_threads()), list(range(count)))
        assert seen == [(threading.current_thread().name, 1)] * count
        assert torch.get_num_threads() == 2  # the caller encodes its next queries on its own count

        def failing(q):
            raise ValueError("query failed")

        with pytest.raises(ValueError, match="query failed"):
            threads.map_queries(failing, [0])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_query_threads_keep_one_openmp_thread_after_torch_set_num_threads(monkeypatch):
    # torch gives each new thread the count last set, on the thread's first torch call (encoding sets it)
    monkeypatch.setattr(threads, "_blas_threads", lambda: 4)  # a pool of its own, its threads new
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert threads.map_queries(lambda q: torch.get_num_threads(), list(range(8))) == [1] * 8
    finally:
        torch.set_num_threads(before)


def test_query_threads_made_before_torch_was_imported_still_run_openmp_on_one_thread(monkeypatch):
    monkeypatch.setattr(threads, "_blas_threads", lambda: 3)  # a pool of its own, made while torch looks absent
    with monkeypatch.context() as hidden:
        hidden.delitem(sys.modules, "torch")
        assert threads.map_queries(lambda q: q, list(range(6))) == list(range(6))
    assert threads.map_queries(lambda q: torch.get_num_threads(), list(range(6))) == [1] * 6


def partially_imported_torch() -> types.ModuleType:
    """``sys.modules["torch"]`` while another thread imports torch: the module before its code has run."""
    module = types.ModuleType("torch")
    module.__spec__ = importlib.machinery.ModuleSpec("torch", None)
    module.__spec__._initializing = True  # as importlib's _load_unlocked leaves it until the module's code has run
    return module


def test_a_torch_still_being_imported_is_neither_used_nor_marked_unusable(compressed, monkeypatch):
    """A library search while another thread imported torch failed ("partially initialized module 'torch' has no
    attribute 'from_numpy'"), and the centroids' packing was marked unusable for the process's lifetime."""
    from tokembed.search import search_vectors

    folder, _, qs = compressed
    want = search_vectors(folder, qs)
    c, out = codec(), np.empty((5, K), np.float32)
    monkeypatch.setattr(threads, "_blas_threads", lambda: 3)  # the query threads' path too
    with monkeypatch.context() as importing:
        importing.setitem(sys.modules, "torch", partially_imported_torch())
        got = search_vectors(folder, qs)
        assert products.centroid_scores(c, queries(5), out) is out  # numpy's product
    assert [[h.id for h in hits] for hits in got] == [[h.id for h in hits] for hits in want]
    assert [h.score for hits in got for h in hits] == pytest.approx([h.score for hits in want for h in hits], abs=1e-5)
    products.centroid_scores(c, queries(5), out)  # the import done: torch's packed product from now on
    assert products.packed_bytes(c) == (K * DIM * 4 if torch.backends.mkldnn.is_available() else 0)
