"""Writes ``tests/pylate_pooling_reference.npz``: PyLate 1.6.0's own ``pool_embeddings_hierarchical`` outputs.

PyLate cannot be a test dependency (it pins fast-plaid, which pins an older torch), so ``tests/test_pooling.py``
compares ``tokembed.models.pooling`` with outputs PyLate computed once, by this script, on stored inputs.
To regenerate (PyLate's ``datasets`` import is unrelated to pooling and is stubbed)::

    pip download pylate==1.6.0 --no-deps -d /tmp/pylate && unzip -q /tmp/pylate/pylate-1.6.0-*.whl -d /tmp/pylate/src
    PYTHONPATH=/tmp/pylate/src python tests/make_pylate_pooling_reference.py
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).with_name("pylate_pooling_reference.npz")
POOL_FACTORS = (2, 3, 4)


def documents() -> list[np.ndarray]:
    """Unit-norm float32 documents (dim 8) of many lengths, one with repeated vectors, one with tight groups.

    Vectors that are not unit-norm are not among them: their ``1 - <x, y>`` goes negative and PyLate's
    ward linkage then fails (scipy: "Linkage 'Z' contains negative distances"); tokembed refuses
    ``--pool-factor`` with ``--no-normalize`` instead."""
    rng = np.random.default_rng(14)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    docs = [unit(rng.standard_normal((n, 8))) for n in (1, 2, 3, 4, 5, 9, 17, 33, 64, 180)]
    docs.append(np.zeros((0, 8), dtype=np.float32))
    repeated = unit(rng.standard_normal((6, 8)))
    docs.append(np.concatenate([repeated, repeated[:4], repeated[1:3]]))
    centres = rng.standard_normal((5, 8))
    docs.append(unit(np.repeat(centres, 7, axis=0) + 0.05 * rng.standard_normal((35, 8))))
    return docs


def main() -> None:
    import sentence_transformers  # noqa: F401  (before the stub: transformers probes installed packages once)

    sys.modules.setdefault("datasets", types.ModuleType("datasets"))
    import pylate
    from pylate.models.colbert import ColBERT

    assert pylate.__version__ == "1.6.0", pylate.__version__
    docs = documents()
    arrays = {f"doc_{i}": doc for i, doc in enumerate(docs)}
    for factor in POOL_FACTORS:
        # The method never touches ``self``; call it unbound on the stored inputs.
        pooled = ColBERT.pool_embeddings_hierarchical(None, [torch.from_numpy(d) for d in docs], pool_factor=factor, protected_tokens=1)
        for i, result in enumerate(pooled):
            arrays[f"pooled_{factor}_{i}"] = result.numpy()
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({len(docs)} documents, pool factors {POOL_FACTORS})")


if __name__ == "__main__":
    main()
