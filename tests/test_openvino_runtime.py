"""``TOKEMBED_CPU_RUNTIME=openvino``: the native BERT backbone's forward in OpenVINO (``models/openvino_backbone.py``).

Same vectors as torch within the parity tolerance (max |Δ| <= 1e-5 on the normalized vectors), the same token
ids, the same bytes run after run, and the converted model read from the cache on later loads."""

from __future__ import annotations

import threading

import numpy as np
import openvino
import pytest

from tokembed.embedder import Embedder
from tokembed.errors import UsageError
from tokembed.models import openvino_backbone
from tokembed.settings import EncodeFlags

TEXTS = ["how do I sort a list", "a short one", "Return a new sorted list from the items in iterable. " * 12, "x"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKEMBED_CACHE", str(tmp_path))
    return tmp_path / "openvino"


def embed(monkeypatch, runtime: str, dtype: str = "float32"):
    monkeypatch.setenv(openvino_backbone.RUNTIME_VARIABLE, runtime)
    embedder = Embedder.load(None, EncodeFlags(store_dtype="float32", dtype=dtype))
    return embedder, embedder.embed(TEXTS, batch_tokens=64)  # several batches: both lanes take some


def test_openvino_gives_torchs_vectors_and_the_same_bytes_each_run(cache, monkeypatch):
    _, expected = embed(monkeypatch, "torch")
    embedder, got = embed(monkeypatch, "openvino")
    assert isinstance(embedder.model.backbone, openvino_backbone.OpenVinoBackbone)
    for (want, want_ids), (vectors, ids) in zip(expected, got):
        assert np.array_equal(ids, want_ids)
        assert np.abs(vectors - want).max() <= 1e-5
    _, again = embed(monkeypatch, "openvino")
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(got, again))


def test_the_converted_model_is_read_from_the_cache(cache, monkeypatch):
    embed(monkeypatch, "openvino")
    assert sorted(p.suffix for p in cache.iterdir()) == [".bin", ".xml"]

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    _, got = embed(monkeypatch, "openvino")
    assert len(got) == len(TEXTS)


def test_bfloat16_in_openvino_stays_close_to_float32(cache, monkeypatch):
    _, expected = embed(monkeypatch, "torch")
    _, got = embed(monkeypatch, "openvino", dtype="bfloat16")
    cosines = np.concatenate([(a * b).sum(axis=1) for (a, _), (b, _) in zip(expected, got)])
    assert cosines.min() >= 0.999


def test_an_unknown_runtime_is_refused(monkeypatch):
    monkeypatch.setenv(openvino_backbone.RUNTIME_VARIABLE, "onnx")
    with pytest.raises(UsageError, match="TOKEMBED_CPU_RUNTIME"):
        Embedder.load(None, EncodeFlags())


def test_serve_refuses_lora_adapters_on_an_openvino_backbone(cache, monkeypatch):
    """peft would patch torch modules the compiled model never runs: refused, not served as the base."""
    from tokembed.serve.lora import attach_adapters

    embedder, _ = embed(monkeypatch, "openvino")
    with pytest.raises(UsageError, match="no torch weights"):
        attach_adapters(embedder, [("mine", "/nonexistent/adapter")])


def test_the_first_inference_runs_on_the_loading_thread(cache, monkeypatch):
    """Lanes must never make the process's first OpenVINO inference concurrently (a deadlock in the binding's lazy
    numpy set-up, see ``first_inference_here``): loading has already run one, on the loading thread."""
    calls = []
    forward = openvino_backbone.OpenVinoBackbone.forward

    def recorded(self, *args, **kwargs):
        calls.append(threading.current_thread())
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(openvino_backbone.OpenVinoBackbone, "forward", recorded)
    monkeypatch.setenv(openvino_backbone.RUNTIME_VARIABLE, "openvino")
    Embedder.load(None, EncodeFlags(store_dtype="float32"))
    assert calls == [threading.current_thread()]


def test_a_cache_that_cannot_be_written_warns_and_still_encodes(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("TOKEMBED_CACHE", str(blocker))
    _, expected = embed(monkeypatch, "torch")
    with caplog.at_level("WARNING", logger="tokembed"):
        embedder, got = embed(monkeypatch, "openvino")
    assert isinstance(embedder.model.backbone, openvino_backbone.OpenVinoBackbone)
    assert "cannot keep the OpenVINO model" in caplog.text and str(blocker) in caplog.text
    for (want, _), (vectors, _) in zip(expected, got):
        assert np.abs(vectors - want).max() <= 1e-5


def test_an_unreadable_cached_model_is_converted_again(cache, monkeypatch, caplog):
    embed(monkeypatch, "openvino")
    (xml,) = cache.glob("*.xml")
    xml.write_text("<net broken")
    with caplog.at_level("WARNING", logger="tokembed"):
        _, got = embed(monkeypatch, "openvino")
    assert "cannot be read" in caplog.text
    assert xml.read_text().startswith("<?xml")  # replaced by a whole conversion
    _, expected = embed(monkeypatch, "torch")
    for (want, _), (vectors, _) in zip(expected, got):
        assert np.abs(vectors - want).max() <= 1e-5
