"""What ``serve`` does to the vectors a request gets back: per-request finishing (cut to ``dimensions``, normalize),
vLLM's base64 payload, and MaxSim scores for ``/score`` and ``/rerank`` (exact, float32)."""

from __future__ import annotations

import base64
import sys

import numpy as np

from tokembed.errors import NonFiniteOutputError


def maxsim(query: np.ndarray, documents: list[np.ndarray]) -> np.ndarray:
    """[n_q, D] query vs documents [n_d, D] -> [n_docs] float32: sum_i max_j <q_i, d_j>.

    Exact, float32. A document with no token scores -inf (max over nothing), a query with none scores 0.
    """
    out = np.full(len(documents), -np.inf, dtype=np.float32)
    for index, doc in enumerate(documents):
        if len(doc):
            out[index] = (query @ doc.T).max(axis=1).sum(dtype=np.float32) if len(query) else 0.0
    return out


def pair_scores(queries: list[np.ndarray], documents: list[np.ndarray], pairs: list[tuple[int, int]]) -> list[float]:
    if len(queries) == 1:
        return maxsim(queries[0], documents).tolist()
    return [float(maxsim(queries[q], [documents[d]])[0]) for q, d in pairs]


def encode_base64(vectors: np.ndarray, embed_dtype: str, endianness: str, what: str) -> str:
    """vLLM's base64 payload: the flattened [n_tokens * D] array in ``embed_dtype`` (bfloat16 as its raw
    2-byte pattern), in ``endianness`` (native: the server's), base64-encoded. ``what``: the item, for a 400."""
    from tokembed.embedder import all_finite
    from tokembed.serve.schemas import APIError

    flat = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1)
    if embed_dtype == "float16":
        flat = flat.astype(np.float16)
        if not all_finite(flat):  # finite before: unnormalized values past 65504, inf bytes for the client to read
            raise APIError(f"{what}: its vector values pass float16's largest (65504), which embed_dtype float16 "
                           "would send as inf; ask for float32 or bfloat16", param="embed_dtype")
    elif embed_dtype == "bfloat16":
        import torch

        flat = torch.from_numpy(flat).to(torch.bfloat16).view(torch.int16).numpy()
    if endianness != "native" and endianness != sys.byteorder:
        flat = flat.byteswap()
    return base64.b64encode(flat.tobytes()).decode("ascii")


def finish(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Per-request end of ``TextEncoder.finish``: cut to ``dimensions``, then L2-normalize (same eps)."""
    import torch

    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    if normalize and len(vectors):
        vectors = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(vectors)), p=2, dim=-1).numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)


def refuse_non_finite_rows(rows: list, field: str) -> None:
    """The batcher's ``rows`` for a request's ``field``, refused as ``encode`` refuses a row (the same check and words)
    when a vector value is NaN or inf: a 500 naming the item, never vectors of null or NaN bytes nor a null score."""
    from tokembed.embedder import non_finite_problem, non_finite_remedy

    for index, (vectors, _) in enumerate(rows):
        if problem := non_finite_problem(f"{field} {index}", vectors):
            raise NonFiniteOutputError(f"{problem}; {non_finite_remedy('restart the server')}")


def finite(value: float, what: str) -> float | None:
    """JSON has no -inf: a document left with no token (all skiplisted: MaxSim over nothing) scores null. A NaN or
    +inf score (finite vectors whose products overflow float32) is the server's 500 naming ``what``, never a null."""
    value = float(value)
    if np.isfinite(value):
        return value
    if value == -np.inf:
        return None
    raise NonFiniteOutputError(f"{what}: its MaxSim score is {value}: the products of its vectors overflow "
                               "float32 (vectors that large come unnormalized, use_activation false)")
