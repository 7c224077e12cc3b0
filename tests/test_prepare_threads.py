"""A chunk of vision documents is processed by threads, each with its own copy of the processor: the items are
those one thread gives (ids and every model input, bit for bit, in order), and a bad item fails the same way."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

import qwen_checkpoints
import vision_checkpoints
from tokembed.embedder import Embedder
from tokembed.errors import BadInputError
from tokembed.settings import EncodeFlags

BUILDERS = {
    "colpali": vision_checkpoints.build_colpali,
    "colqwen2": vision_checkpoints.build_colqwen2,
    "colmodernvbert": vision_checkpoints.build_colmodernvbert,
    "colqwen3_5": qwen_checkpoints.build_colqwen3_5,
}


def pages() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    sizes = [(320, 420), (64, 48), (500, 200), (97, 131), (256, 256), (130, 70), (420, 320), (33, 33)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_threads_prepare_what_one_thread_prepares(family, tmp_path, monkeypatch):
    import tokembed.models.vision as vision

    encoder = Embedder.load(str(BUILDERS[family](tmp_path / family)), EncodeFlags()).encoder
    images = pages()
    names = set()
    real = encoder._prepare
    monkeypatch.setattr(encoder, "_prepare", lambda value: names.add(threading.current_thread().name) or real(value))
    with torch_threads(2):
        threaded = encoder.tokenize(images)
    assert names and all(name.startswith("tokembed-prepare") for name in names)  # the pool's threads did the work
    monkeypatch.setattr(vision, "PREPARE_THREADS", 1)
    names.clear()
    alone = encoder.tokenize(images)
    assert names == {threading.current_thread().name}
    assert len(threaded) == len(alone) == len(images)
    for one, other in zip(threaded, alone):
        assert np.array_equal(one.ids, other.ids) and one.n_attend == other.n_attend
        assert one.payload.keys() == other.payload.keys()
        assert all(torch.equal(one.payload[key], other.payload[key]) for key in one.payload)


def test_a_bad_item_fails_as_with_one_thread(tmp_path):
    encoder = Embedder.load(str(vision_checkpoints.build_colpali(tmp_path / "colpali")), EncodeFlags()).encoder
    with torch_threads(2), pytest.raises(BadInputError, match="encodes documents as images; got text"):
        encoder.tokenize([*pages()[:3], "a text among images", *pages()[3:]])


@contextmanager
def torch_threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
