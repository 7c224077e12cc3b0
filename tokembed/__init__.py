"""tokembed: batch indexer for late-interaction retrieval.

Pipeline (one subpackage per stage): ``sources`` -> ``models`` -> ``engine`` -> ``index`` -> ``search``.
The public API is re-exported here lazily so that ``import tokembed`` does not import torch; the
search function is ``tokembed.search.search`` (the name ``tokembed.search`` is its subpackage).
"""

from __future__ import annotations

import os

# oneDNN (primitive cache) and PyTorch's ideep layer (LRU_CACHE_CAPACITY) each keep a compiled kernel per
# input shape, 1,024 by default. Sorted-length batches have ever new shapes, so on a CPU in bfloat16
# those caches grew with the corpus (~0.5 MB per shape, ~1 GB over 200k rows). 16 keeps memory flat and
# still holds every shape one batch needs. Read once when torch loads: set before, and only if unset.
for _cache in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
    os.environ.setdefault(_cache, "16")
# MKL's sgemm may split the reduction across threads for short matrices (ColQwen2's 10 x 128 patch
# merger), so `cpu` (all cores) and `cpu:N` workers (cores / N each) differed in the last bit. Strict
# conditional numerical reproducibility makes gemm results independent of the thread count, measured at
# no cost here. MKL reads it at its first call, so setting it after `import torch` still works, but not
# after a first matrix product: a library caller who ran one before importing tokembed gets non-strict
# results in process (its `cpu:N` workers are strict), so import tokembed first, or set MKL_CBWR yourself.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
# With TOKEMBED_GPU_LANES=2, batches run on two CUDA streams (engine/local.py). cuBLAS gives the same bits on
# every stream only with a fixed workspace per stream (NVIDIA's reproducibility notes); ~24 MB of GPU
# memory. Read when cuBLAS initializes.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _native_settings() -> None:
    from tokembed.cpu import one_malloc_arena, prefer_avx2_openblas_kernels

    prefer_avx2_openblas_kernels()
    one_malloc_arena()


_native_settings()

__version__ = "0.1.0"

_LAZY = {
    "EncodeJob": "tokembed.encode",
    "EncodeSummary": "tokembed.encode",
    "encode_corpus": "tokembed.encode",
    "EncodeFlags": "tokembed.settings",
    "SourceOptions": "tokembed.sources",
    "open_index": "tokembed.index",
    "Hit": "tokembed.search",
    "search_vectors": "tokembed.search",
    "load_document": "tokembed.search",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokembed' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
