"""Every model family on a CUDA device: its default compute dtype there (bfloat16) and float32 on the GPU,
each against float32 on the CPU, for queries and for documents (images for the vision families).

Each tiny checkpoint is built in its real layout (the same builders as the parity tests). The same token
ids must come out; vectors per token within a cosine floor: float32 on the GPU runs the same math in another
order, bfloat16 rounds every layer (these random tiny models are harsher on it than trained ones; the
MiniLM checks in ``test_devices.py`` hold real weights to 0.999). Runs only where CUDA exists (marker
``gpu``); ``TOKEMBED_TEST_GPU=cpu`` runs the same comparisons with the CPU standing in (bfloat16 there),
to check this file on a machine without one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

DEVICE = os.environ.get("TOKEMBED_TEST_GPU", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SAMPLE_IMAGES = Path(__file__).resolve().parent.parent / "sample_data" / "images"
QUERIES = ["what is the capital of france?", "hello", "invoice total due from Bluefin Office Supplies"]
DOCUMENTS = ["Paris is the capital and most populous city of France.", "a , b .", "short"]
FLOORS = {"float32": 0.9999, "bfloat16": 0.995}  # least per-token cosine to the CPU's float32


def _builders() -> dict:
    import checkpoints
    import colpali_engine_checkpoints as engine
    import qwen3_vl_checkpoints
    import qwen_checkpoints
    import vision_checkpoints
    from jina_checkpoints import build_jina_colbert

    builders = {**{name: b for name, b in checkpoints.BUILDERS.items() if name != "unknown_layout"}, "jina_colbert": build_jina_colbert}
    builders.update(vision_checkpoints.VISION_BUILDERS)
    builders.update(qwen3_vl_checkpoints.QWEN3_VL_BUILDERS)
    builders.update(qwen_checkpoints.QWEN_BUILDERS)
    builders.update({f"engine_{name}": b for name, b in engine.ENGINE_BUILDERS.items()})
    builders["peft_adapter"] = engine.build_peft_adapter
    return builders


BUILDERS = _builders()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = BUILDERS[name](tmp_path_factory.mktemp(name) / "ckpt")
        return cache[name]

    return get


def _images() -> list:
    from tokembed.sources.images import decode_image

    return [decode_image(path.read_bytes(), 40_000_000).image for path in sorted(SAMPLE_IMAGES.iterdir())[:3]]


def _embed(path: Path, kind: str, device: str, dtype: str, inputs=None):
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    embedder = Embedder.load(str(path), EncodeFlags(kind=kind, dtype=dtype, store_dtype="float32"), device,
                             trust_remote_code=True)
    if inputs is None:
        inputs = QUERIES if kind == "query" else (_images() if embedder.is_vision else DOCUMENTS)
    return embedder.embed(inputs), embedder.settings.dtype


def _least_cosine(got, want) -> float:
    least = 1.0
    for (x, x_ids), (y, y_ids) in zip(got, want, strict=True):
        assert np.array_equal(x_ids, y_ids)
        if len(x):
            cosine = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1) + 1e-12)
            least = min(least, float(cosine.min()))
    return least


@pytest.mark.parametrize("kind", ["query", "document"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_family_on_the_gpu_matches_float32_on_the_cpu(built, name, kind):
    path = built(name)
    want, _ = _embed(path, kind, "cpu", "float32")
    assert len(want) and all(len(v) for v, _ in want)
    for dtype in ("float32", "auto"):
        if DEVICE == "cpu" and dtype == "float32":
            continue  # the reference itself
        got, resolved = _embed(path, kind, DEVICE, dtype if DEVICE != "cpu" else "bfloat16")
        least = _least_cosine(got, want)
        print(f"{name} {kind} {DEVICE} {resolved}: least per-token cosine {least:.6f}")
        assert least >= FLOORS[resolved if resolved in FLOORS else "bfloat16"], (name, kind, resolved, least)
