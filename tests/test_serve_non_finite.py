"""``tokembed serve`` over a forward whose vectors hold NaN or inf (a float16 forward that overflows, weights holding
NaN): the server's 500 naming the request's item and the --dtype to restart with, as ``encode`` and ``score`` refuse
such vectors (exit 2, ``tests/test_non_finite.py``). It answered 200: /pooling vectors of null (NaN bytes in base64;
a 500 with a traceback without orjson), /score and /rerank null scores."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_support import LiveServer, _service  # noqa: E402

NOT_FINITE = re.compile(r"NaN or inf.*restart the server with --dtype bfloat16 or float32")


def changed(checkpoint_store, tmp_path, change):
    from safetensors.numpy import load_file, save_file

    folder = shutil.copytree(checkpoint_store("pylate_bert"), tmp_path / "ckpt")
    weights = load_file(str(folder / "model.safetensors"))
    for name in [name for name in weights if "layer.1.output.LayerNorm" in name]:
        weights[name] = change(weights[name])
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def overflowing(checkpoint_store, tmp_path_factory):
    """Hidden states ~1e5: finite in float32, inf in float16 (NaN once normalized)."""
    return changed(checkpoint_store, tmp_path_factory.mktemp("overflowing"), lambda w: w * 1e5)


def refused(response, item: str) -> str:
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["type"] == "InternalServerError" and re.match(item, error["message"]), error
    assert NOT_FINITE.search(error["message"]), error["message"]
    return error["message"]


def test_a_float16_forward_that_overflows_is_a_500_naming_the_item_on_every_endpoint(overflowing):
    server = LiveServer(_service(overflowing, dtype="float16"))
    try:
        refused(server.post("/pooling", {"input": ["hello world"]}), "input 0: ")
        refused(server.post("/pooling", {"input": "paris", "input_type": "document", "encoding_format": "base64"}),
                "input 0: ")
        refused(server.post("/score", {"queries": "capital", "documents": ["paris", "berlin"]}), "(queries|documents) 0: ")
        refused(server.post("/rerank", {"query": "capital", "documents": ["paris", "berlin"]}), "(query|documents) 0: ")
    finally:
        server.stop()


def test_weights_holding_nan_are_a_500_in_float32_too(checkpoint_store, tmp_path):
    server = LiveServer(_service(changed(checkpoint_store, tmp_path, lambda w: np.full_like(w, np.nan))))
    try:
        message = refused(server.post("/pooling", {"input": ["hello", "world"]}), "input 0: ")
        assert "damaged weights" in message
    finally:
        server.stop()


def test_search_refuses_query_vectors_that_are_not_finite(checkpoint_store, cli, tmp_path, monkeypatch):
    """An index is encoded with its queries' --dtype, which its model computes finite: a forward made to give NaN."""
    from helpers import write_jsonl
    from tokembed.serve import EmbeddingService

    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"d{i}", "text": f"document {i}"} for i in range(3)])
    index = tmp_path / "index"
    assert cli("encode", corpus, "--model", checkpoint_store("pylate_bert"), "-o", index, "-q").exit_code == 0
    server = LiveServer(EmbeddingService.load(None, "cpu", index=str(index)))
    executor = server.service.batcher.executors["index"]
    run = executor.run

    def with_nan(items):
        output = run(items)
        vectors, ids = output.rows[-1]
        output.rows[-1] = (np.full_like(vectors, np.nan), ids)
        return output

    try:
        monkeypatch.setattr(executor, "run", with_nan)
        refused(server.post("/search", {"query": ["alpha", "beta"], "exact": True}), r"query \d: ")
        monkeypatch.undo()
        assert server.post("/search", {"query": ["alpha", "beta"], "exact": True}).status_code == 200
    finally:
        server.stop()


def test_unnormalized_values_past_float16_are_a_400_in_a_float16_payload(overflowing):
    server = LiveServer(_service(overflowing))  # float32: finite vectors of ~1e5 when not normalized
    try:
        body = {"input": "hello", "use_activation": False, "encoding_format": "base64"}
        response = server.post("/pooling", body | {"embed_dtype": "float16"})
        assert response.status_code == 400 and response.json()["error"]["param"] == "embed_dtype", response.text
        assert response.json()["error"]["message"].startswith("input 0: its vector values pass float16's largest")
        assert server.post("/pooling", body | {"embed_dtype": "float32"}).status_code == 200
    finally:
        server.stop()


def test_a_score_that_is_not_finite_is_never_a_null_but_a_document_with_no_token_is():
    from tokembed.errors import NonFiniteOutputError
    from tokembed.serve.vectors import finite

    assert finite(-np.inf, "score 0") is None and finite(np.float32(1.5), "score 0") == 1.5
    for value in (np.nan, np.inf):
        with pytest.raises(NonFiniteOutputError, match="score 3: its MaxSim score is"):
            finite(value, "score 3")
