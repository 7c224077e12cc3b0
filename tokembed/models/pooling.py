"""Document token pooling (``encode --pool-factor N``), exact to PyLate 1.6's ``pool_factor``.

Stage: models, the last step of ``finish`` (after projection, ``--dimensions``, normalization and the
skiplist; before the cast to the store dtype). In: one document's vectors [n, D] float32 and token ids [n].
Out: [m, D] and [m] with m <= 1 + max(1, (n - 1) // pool_factor) (fcluster may give fewer clusters).

The algorithm is PyLate 1.6's ``ColBERT.pool_embeddings_hierarchical``, step for step:

* the first ``PROTECTED_TOKENS`` (1: ``[CLS]``/``<bos>``) vectors are kept as they are, first;
* the rest are clustered by scipy's hierarchical clustering: ward linkage on the condensed matrix of
  cosine distances ``1 - <x_i, x_j>`` (computed in float32 by ``torch.mm``, as PyLate does), cut with
  ``fcluster(criterion="maxclust")`` into at most ``max(1, n_rest // pool_factor)`` clusters;
* each cluster becomes the mean of its vectors, clusters in fcluster's label order. PyLate does not
  re-normalize the means, so neither do we: a pooled vector's norm is at most 1, and a loose cluster
  weighs less in MaxSim, as it does in PyLate;
* a document of at most two vectors (nothing to gain) is returned unchanged.

Where PyLate fails, tokembed does not: a cosine distance that float32 rounding makes slightly negative
(equal vectors) is clamped to 0. Vectors that are not unit-norm are refused up front (``--no-normalize``
with ``--pool-factor`` is a usage error): ``1 - <x, y>`` is no distance for them, and PyLate fails on them.

A pooled vector's token id is that of the cluster's earliest member (its first position in the document);
protected vectors keep their own ids. Queries are never pooled.
"""

from __future__ import annotations

import numpy as np
import torch

PROTECTED_TOKENS = 1  # PyLate's default ``protected_tokens``: the first token is never pooled


def pool_document(vectors: torch.Tensor, token_ids: np.ndarray, pool_factor: int) -> tuple[torch.Tensor, np.ndarray]:
    """One document's vectors [n, D] and token ids [n] -> pooled vectors [m, D] (CPU) and token ids [m]."""
    vectors = vectors.cpu()  # scipy clusters on the CPU anyway
    protected, to_pool = vectors[:PROTECTED_TOKENS], vectors[PROTECTED_TOKENS:]
    n = len(to_pool)
    n_clusters = max(n // pool_factor, 1)
    if n_clusters >= n:
        return vectors, token_ids
    labels = cluster_labels(to_pool, n_clusters)
    means, members = cluster_means(to_pool, labels)
    ids = first_member_ids(members, token_ids[PROTECTED_TOKENS:])
    return torch.cat([protected, means]), np.concatenate([token_ids[:PROTECTED_TOKENS], ids])


def cluster_labels(vectors: torch.Tensor, n_clusters: int) -> np.ndarray:
    """Ward clustering of [n, D] on cosine distances, cut to at most ``n_clusters`` -> labels [n], 1-based."""
    from scipy.cluster import hierarchy

    n = len(vectors)
    distances = 1 - torch.mm(vectors, vectors.t()).numpy()  # [n, n] float32
    condensed = distances[np.triu_indices(n, k=1)]  # scipy's condensed form: the upper triangle, row by row
    # Two equal unit vectors can have a float32 dot product just above 1; a negative distance makes scipy refuse
    # the linkage (PyLate then fails on the document). Clamping changes nothing where PyLate succeeds.
    condensed = np.maximum(condensed, 0)
    tree = hierarchy.linkage(condensed, method="ward")
    return hierarchy.fcluster(tree, t=n_clusters, criterion="maxclust")


def cluster_means(vectors: torch.Tensor, labels: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Mean of each non-empty cluster, in label order -> means [k, D] and each vector's row in ``means`` [n]."""
    present, members = np.unique(labels, return_inverse=True)
    index = torch.from_numpy(members.astype(np.int64))
    sums = torch.zeros(len(present), vectors.shape[1], dtype=vectors.dtype).index_add_(0, index, vectors)
    counts = torch.bincount(index, minlength=len(present)).to(vectors.dtype)
    return sums / counts.unsqueeze(1), members


def first_member_ids(members: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """Per cluster (in ``means`` order), the token id of its earliest member.

    The earliest member, not the one nearest the mean: in a two-member cluster both are exactly as near,
    and which one float rounding would pick could differ between devices.
    """
    _, first = np.unique(members, return_index=True)
    return token_ids[first]


def pool_rows(rows: list[tuple[torch.Tensor, np.ndarray]], pool_factor: int, store: torch.dtype) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pool each (vectors [n, D] float32, token ids [n]) and cast -> (vectors in ``store``, token ids int32)."""
    results = []
    for vectors, ids in rows:
        pooled, pooled_ids = pool_document(vectors.float(), ids, pool_factor)
        results.append((pooled.to(store).numpy(), np.asarray(pooled_ids).astype(np.int32)))
    return results
