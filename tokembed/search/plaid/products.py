"""A query's two products: its scores with every centroid (the first step of a search) and with its
candidates' vectors (the exact re-rank).

Where torch is imported already (``score`` and ``serve`` encode their queries with it) both run in torch, else
in numpy:

* the centroid product is oneDNN's linear on the centroids reordered once into its blocked layout, so that no
  call copies the [K, D] matrix into a BLAS's own layout again (14 query tokens x 65,536 centroids on one
  thread: 3.6 ms against numpy's 5.2 with the OpenBLAS kernel tokembed selects, 11 with its default one);
* the re-rank's product is ``torch.mm``. Its float32 sums depend less on where a vector sits in the matrix:
  of 1,000 duplicated columns in random products, numpy's scored 28 differently from their copy, torch's 3.
  Which of many exactly tied documents a search returns follows those last bits; it does not change how many
  of the returned documents are as good as the exact top 10 (the benchmark's "tied" recall, README, "Search
  with the structure").

Both in torch also keeps a single query's threaded work on one thread pool: torch's OpenMP threads spin a
while after a product, and numpy's BLAS threads running beside them lose their cores. Measured on the whole
search at 1M documents, alternating both in one process: one query at a time on both cores 25.9 against 27.9
ms, 100 queries batched 45.5 against 45.3 queries/s. (Every query now runs torch's OpenMP on one thread:
``threads._caller_on_one_openmp_thread``.)
"""

from __future__ import annotations

import numpy as np

from tokembed.search.plaid.imported import imported_torch

PACK_ROWS = 32  # the query-token count oneDNN's layout is chosen for (any count works)
_UNUSABLE = "unusable"
_SLOT = "_onednn_centroids"  # the packed centroids, kept in the codec's instance dict like a cached property


def centroid_scores(codec, queries: np.ndarray, out: np.ndarray) -> np.ndarray:
    """[n, K] float32: each query token's score with every centroid (``out`` is used by the numpy product)."""
    torch = imported_torch()
    packed = _packed_centroids(codec, torch) if torch is not None else None
    if packed is None:
        return np.matmul(queries, codec.columns, out=out)
    return _linear(torch, np.ascontiguousarray(queries, np.float32), packed)


def token_scores(queries: np.ndarray, vectors: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out`` [n, T] = queries [n, D] x vectors [T, D] transposed, float32: torch's product where torch is
    imported (the centroid product's threads), else numpy's."""
    torch = imported_torch()
    if torch is None:
        return np.matmul(queries, vectors.T, out=out)
    torch.mm(torch.from_numpy(np.ascontiguousarray(queries)), torch.from_numpy(vectors).T, out=torch.from_numpy(out))
    return out


def packed_bytes(codec) -> int:
    """The bytes the packed centroids hold, 0 where they were not made."""
    packed = codec.__dict__.get(_SLOT)
    return 0 if packed is None or isinstance(packed, str) else codec.k * codec.dim * 4


def _linear(torch, queries: np.ndarray, packed) -> np.ndarray:
    return torch.ops.mkldnn._linear_pointwise(torch.from_numpy(queries), packed, None, "none", [], "").numpy()


def _packed_centroids(codec, torch):
    packed = codec.__dict__.get(_SLOT)
    if packed is None:
        packed = codec.__dict__[_SLOT] = _pack(codec, torch)  # two threads may both pack once: the same result
    return None if isinstance(packed, str) else packed


def _pack(codec, torch):
    """The centroids in oneDNN's layout, or ``_UNUSABLE`` where this torch has no such op or its products do
    not agree with numpy's (checked once, on a few random query tokens)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return _UNUSABLE
        centroids = torch.from_numpy(np.ascontiguousarray(codec.centroids, np.float32))
        packed = torch.ops.mkldnn._reorder_linear_weight(centroids, PACK_ROWS)
        probe = np.random.default_rng(0).standard_normal((3, codec.dim))
        probe = (probe / np.linalg.norm(probe, axis=1, keepdims=True)).astype(np.float32)
        got = _linear(torch, probe, packed)
    except (AttributeError, RuntimeError, NotImplementedError):
        return _UNUSABLE
    expected = probe.astype(np.float64) @ codec.centroids.T.astype(np.float64)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=1e-4):
        return _UNUSABLE
    return packed
