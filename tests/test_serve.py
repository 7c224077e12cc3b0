"""``tokembed serve``'s API: vLLM's ``/pooling``, ``/score`` and ``/rerank`` answered as vLLM does, with tokembed's
vectors (live servers from ``serve_support``)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from helpers import read_index, write_jsonl  # noqa: E402
from serve_support import DOCUMENTS, QUERIES, _maxsim, _pool, _reference  # noqa: E402


# -- vLLM's client, unchanged ----------------------------------------------------------------------------


def test_vllm_multi_vector_retrieval_client(colbert_server):
    """vLLM's examples/pooling/token_embed/multi_vector_retrieval_online.py, pointed at tokembed."""
    try:
        import requests
    except ImportError:  # same call signature
        requests = httpx
    import torch

    def post_http_request(prompt: dict, api_url: str):
        headers = {"User-Agent": "Test Client"}
        response = requests.post(api_url, headers=headers, json=prompt)
        return response

    host, port = colbert_server.url.removeprefix("http://").split(":")
    pooling_url = f"http://{host}:{port}/pooling"
    score_url = f"http://{host}:{port}/score"
    model_name = "tiny-colbert"

    prompts = ["Hello, my name is", "The president of the United States is", "The capital of France is", "The future of AI is"]
    prompt = {"model": model_name, "input": prompts}
    pooling_response = post_http_request(prompt=prompt, api_url=pooling_url)
    shapes = []
    for output in pooling_response.json()["data"]:
        multi_vector = torch.tensor(output["data"])
        shapes.append(tuple(multi_vector.shape))

    queries = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    prompt = {"model": model_name, "queries": queries, "documents": documents}
    score_response = post_http_request(prompt=prompt, api_url=score_url).json()

    expected = _reference(colbert_server.service.embedder.resolved.path, prompts, mode="raw")
    assert shapes == [(len(ids), 24) for _, ids in expected]
    assert score_response["object"] == "list" and score_response["model"] == model_name
    assert [item["index"] for item in score_response["data"]] == [0, 1]
    assert all(item["object"] == "score" and isinstance(item["score"], float) for item in score_response["data"])


# -- /pooling --------------------------------------------------------------------------------------------


def test_pooling_raw_equals_tokembed_encode(minilm_server, minilm_path, tmp_path, cli):
    texts = ["The quick brown fox jumps over the lazy dog.", "short", "Paris is the capital of France; Berlin of Germany."]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(texts)])
    result = cli("encode", corpus, "--model", minilm_path, "--mode", "raw", "--output", tmp_path / "index", "--quiet")
    assert result.exit_code == 0, result.output
    stored = read_index(tmp_path / "index")  # float16 on disk

    response = minilm_server.post("/pooling", {"model": "minilm", "input": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == "minilm" and body["id"].startswith("pool-")
    served = [np.asarray(item["data"], dtype=np.float32) for item in body["data"]]
    exact = _reference(minilm_path, texts, mode="raw")
    for i, vectors in enumerate(served):
        assert vectors.shape == stored[str(i)][0].shape == exact[i][0].shape
        np.testing.assert_allclose(vectors, exact[i][0], atol=2e-5)
        np.testing.assert_allclose(vectors.astype(np.float16).astype(np.float32), stored[str(i)][0], atol=1e-3)
    assert body["usage"]["prompt_tokens"] == sum(len(ids) for _, ids in exact) == body["usage"]["total_tokens"]


@pytest.mark.parametrize("kind", ["query", "document"])
def test_pooling_input_type_equals_colbert_mode(colbert_server, colbert_ckpt, kind):
    texts = ["what is the capital of france?", "mars, the red planet!!!", "hello"]
    served = _pool(colbert_server, texts, input_type=kind)
    expected = _reference(colbert_ckpt, texts, mode="colbert", kind=kind)
    for vectors, (reference, _) in zip(served, expected, strict=True):
        assert vectors.shape == reference.shape
        np.testing.assert_allclose(vectors, reference, atol=2e-5)
    if kind == "query":
        assert {len(v) for v in served} == {16}  # expanded to the checkpoint's query length


def test_pooling_raw_on_colbert_checkpoint_and_token_ids(colbert_server, colbert_ckpt):
    texts = ["the capital of france is paris", "hello world"]
    served = _pool(colbert_server, texts)
    expected = _reference(colbert_ckpt, texts, mode="raw")
    for vectors, (reference, _) in zip(served, expected, strict=True):
        np.testing.assert_allclose(vectors, reference, atol=2e-5)
    # token ids go to the model as given (they already hold the special tokens the tokenizer added)
    ids = [ids.tolist() for _, ids in expected]
    for given, expect in ((ids[0], served[:1]), (ids, served)):
        for vectors, reference in zip(_pool(colbert_server, given), expect, strict=True):
            np.testing.assert_allclose(vectors, reference, atol=2e-5)
    without_specials = _pool(colbert_server, ids[0][1:-1])[0]
    assert len(without_specials) == len(ids[0]) - 2


def test_pooling_base64_dtypes_and_endianness(colbert_server):
    texts = ["paris is the capital of france", "red planet"]
    floats = _pool(colbert_server, texts)
    for embed_dtype, endianness, numpy_dtype, atol in [
        ("float32", "native", np.float32, 0.0),
        ("float16", "native", np.float16, 1e-3),
        ("float16", "big", ">f2", 1e-3),
        ("bfloat16", "little", None, 1e-2),
    ]:
        response = colbert_server.post(
            "/pooling", {"input": texts, "encoding_format": "base64", "embed_dtype": embed_dtype, "endianness": endianness}
        )
        assert response.status_code == 200, response.text
        for item, reference in zip(response.json()["data"], floats, strict=True):
            raw = base64.b64decode(item["data"])
            if numpy_dtype is None:  # bfloat16: the upper half of a float32
                decoded = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                decoded = np.frombuffer(raw, numpy_dtype).astype(np.float32)
            decoded = decoded.reshape(-1, 24)
            assert decoded.shape == reference.shape
            np.testing.assert_allclose(decoded, reference, atol=atol, rtol=0)


def test_pooling_dimensions_and_activation(colbert_server):
    texts = ["the red planet is mars"]
    full = _pool(colbert_server, texts, use_activation=False)[0]
    assert not np.allclose(np.linalg.norm(full, axis=1), 1.0)
    cut = _pool(colbert_server, texts, dimensions=8)[0]
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=2e-5)
    np.testing.assert_allclose(_pool(colbert_server, texts)[0], full / np.linalg.norm(full, axis=1, keepdims=True), atol=2e-5)


def test_pooling_length_limit_and_truncation(colbert_server, colbert_ckpt):
    limit = colbert_server.service.max_model_len  # the checkpoint's 39 tokens
    long_text = " ".join(["capital"] * 200)
    response = colbert_server.post("/pooling", {"input": [long_text]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "input_tokens" and f"maximum context length is {limit} tokens" in error["message"]
    assert f"you requested more than {limit} tokens" in error["message"]  # read to limit + 1 tokens: no exact count
    response = colbert_server.post("/pooling", {"input": [list(range(5, 60))]})  # token ids: their exact count
    assert response.status_code == 400 and "you requested 55 tokens" in response.json()["error"]["message"]

    truncated = _pool(colbert_server, [long_text], truncate_prompt_tokens=10)[0]
    assert len(truncated) == 10
    assert len(_pool(colbert_server, [long_text], truncate_prompt_tokens=-1)[0]) == limit
    expected = _reference(colbert_ckpt, [long_text], mode="raw", max_length=10)[0][0]
    np.testing.assert_allclose(truncated, expected, atol=2e-5)
    assert len(_pool(colbert_server, [list(range(5, 60))], truncate_prompt_tokens=12)[0]) == 12
    # ColBERT documents are cut to the checkpoint's document length, as PyLate does: no error
    assert len(_pool(colbert_server, [long_text], input_type="document")[0]) <= 40


def test_truncation_to_the_limit_is_what_no_value_gives_for_colbert_inputs(colbert_server, colbert_ckpt):
    """A PyLate checkpoint saves its ``document_length`` - 1 as ``max_seq_length`` (39 here), which is max_model_len,
    vLLM's limit of raw inputs; its documents are 40 tokens. -1 ("the model's limit") cut them to 39, one vector and a
    score apart from what no value (and ``encode``) gives, and an explicit 40 was a 400."""
    long_text = " ".join(["capital"] * 200)
    expected = _reference(colbert_ckpt, [long_text], mode="colbert", kind="document")[0][0]
    assert len(expected) == 40 > colbert_server.service.max_model_len == 39
    for extra in ({}, {"truncate_prompt_tokens": -1}, {"truncate_prompt_tokens": 40}):
        np.testing.assert_allclose(_pool(colbert_server, [long_text], input_type="document", **extra)[0], expected, atol=2e-5)
    whole, cut = (colbert_server.post("/score", {"queries": "capital", "documents": [long_text], **extra}).json()
                  for extra in ({}, {"truncate_prompt_tokens": -1}))
    assert whole["data"] == cut["data"] and whole["usage"] == cut["usage"]
    refused = colbert_server.post("/pooling", {"input": long_text, "input_type": "document", "truncate_prompt_tokens": 41})
    assert refused.status_code == 400 and "cannot be greater than 40" in refused.json()["error"]["message"]
    raw = colbert_server.post("/pooling", {"input": long_text, "truncate_prompt_tokens": 40})  # raw: vLLM's limit
    assert raw.status_code == 400 and "cannot be greater than max_model_len=39" in raw.json()["error"]["message"]


def test_truncation_that_cuts_the_colbert_marker_is_a_400(colbert_server):
    """As ``encode --max-length``: below [CLS] [Q] [SEP] the marker is cut and no token of the text is left;
    raw mode, which has no marker, still cuts to 2."""
    for input_type in ("query", "document"):
        response = colbert_server.post("/pooling", {"input": ["capital"], "input_type": input_type, "truncate_prompt_tokens": 2})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "truncate_prompt_tokens" and "cannot hold the 3 tokens" in error["message"]
        assert len(_pool(colbert_server, ["capital"], input_type=input_type, truncate_prompt_tokens=3)[0]) == 3
    assert len(_pool(colbert_server, ["capital city"], truncate_prompt_tokens=2)[0]) == 2


# -- /score and /rerank -------------------------------------------------------------------------------------


def test_score_and_rerank_equal_brute_force_maxsim(colbert_server):
    queries = _pool(colbert_server, QUERIES, input_type="query")
    documents = _pool(colbert_server, DOCUMENTS, input_type="document")

    one_to_many = colbert_server.post("/score", {"queries": QUERIES[0], "documents": DOCUMENTS}).json()
    assert one_to_many["id"].startswith("score-")
    got = [item["score"] for item in one_to_many["data"]]
    np.testing.assert_allclose(got, [_maxsim(queries[0], d) for d in documents], rtol=1e-5)

    pairs = colbert_server.post("/v1/score", {"text_1": QUERIES, "text_2": DOCUMENTS[:3]}).json()
    np.testing.assert_allclose(
        [item["score"] for item in pairs["data"]], [_maxsim(q, d) for q, d in zip(queries, documents[:3], strict=True)], rtol=1e-5
    )
    single = colbert_server.post("/score", {"queries": [QUERIES[1]], "documents": DOCUMENTS[2]}).json()
    assert single["data"][0]["score"] == pytest.approx(_maxsim(queries[1], documents[2]), rel=1e-5)
    items = colbert_server.post("/score", {"queries": QUERIES[0], "items": DOCUMENTS}).json()  # vLLM's 4th spelling
    assert [item["score"] for item in items["data"]] == got
    for mixed in ({"queries": QUERIES[0], "text_2": DOCUMENTS}, {"queries": QUERIES[0], "documents": DOCUMENTS, "items": DOCUMENTS}):
        response = colbert_server.post("/score", mixed)
        assert response.status_code == 400 and "exactly one pair of inputs" in response.json()["error"]["message"]

    ranked = colbert_server.post("/rerank", {"model": "tiny-colbert", "query": QUERIES[0], "documents": DOCUMENTS, "top_n": 2})
    assert ranked.status_code == 200, ranked.text
    body = ranked.json()
    brute = [_maxsim(queries[0], d) for d in documents]
    order = sorted(range(len(brute)), key=lambda i: -brute[i])[:2]
    assert [r["index"] for r in body["results"]] == order
    assert [r["document"]["text"] for r in body["results"]] == [DOCUMENTS[i] for i in order]
    np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], [brute[i] for i in order], rtol=1e-5)
    everything = colbert_server.post("/v1/rerank", {"query": QUERIES[0], "documents": DOCUMENTS}).json()
    assert len(everything["results"]) == len(DOCUMENTS) and body["usage"]["total_tokens"] > 0


def test_score_raw_model_uses_raw_vectors(minilm_server):
    queries = _pool(minilm_server, ["capital of france"])
    documents = _pool(minilm_server, DOCUMENTS)
    scores = minilm_server.post("/score", {"queries": "capital of france", "documents": DOCUMENTS}).json()["data"]
    np.testing.assert_allclose([s["score"] for s in scores], [_maxsim(queries[0], d) for d in documents], rtol=1e-5)


# -- dynamic batching ----------------------------------------------------------------------------------------


def test_a_lone_surrogate_is_the_clients_400_not_a_500(minilm_server):
    """JSON's "\\ud800" escape decodes to a lone surrogate, which the tokenizer refuses with a TypeError."""
    body = b'{"input": ["fine", "bad \\ud800 text"]}'
    response = httpx.post(minilm_server.url + "/pooling", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "input" and "input 1: text is not valid Unicode (a lone surrogate, U+D800" in error["message"]
    assert minilm_server.post("/pooling", {"input": ["fine"]}).status_code == 200


@pytest.mark.parametrize("field, value, says", [
    ("normalize", False, "Parameter `normalize` was removed; use `use_activation`"),
    ("truncation_side", "left", "truncation_side 'left': tokembed keeps the first tokens"),
    ("padding", "max_length", "padding 'max_length': tokembed does not pad prompts"),
])
def test_fields_that_would_change_the_vectors_are_refused_not_ignored(minilm_server, field, value, says):
    """Unknown fields are ignored as vLLM ignores them, but not these: answered as if absent, the vectors would
    silently differ from what the client asked for (vLLM itself refuses ``normalize``)."""
    for route, body in (("/pooling", {"input": ["fine"]}), ("/score", {"queries": "a", "documents": ["b"]})):
        response = minilm_server.post(route, {**body, field: value})
        assert response.status_code == 400 and says in response.json()["error"]["message"], response.text
    assert minilm_server.post("/pooling", {"input": ["fine"], "truncation_side": "right"}).status_code == 200
    assert minilm_server.post("/pooling", {"input": ["fine"], "padding": "do_not_pad"}).status_code == 200


def test_an_input_with_no_tokens_is_a_400_as_vllm_answers_it(checkpoint_store):
    """A decoder's tokenizer adds no special tokens: "" was a 200 with "data": [] (the vector width lost), an
    empty /score query scored 0.0 and an empty document null; vLLM refuses an empty prompt."""
    from conftest import _live_server

    server = _live_server(checkpoint_store("raw_decoder"))
    try:
        for route, body, field, item in (
            ("/pooling", {"input": ["", "hello"]}, "input", 0), ("/score", {"queries": "", "documents": ["hello"]}, "queries", 0),
            ("/score", {"text_1": "hello", "text_2": ["hello", ""]}, "text_2", 1),
            ("/rerank", {"query": "hello", "documents": ["hello", ""]}, "documents", 1),
        ):  # the error names the request's field and item
            response = server.post(route, body)
            error = response.json()["error"]
            assert response.status_code == 400 and f"{field} {item} is empty: it has no tokens" in error["message"], response.text
            assert error["param"] == field
        assert server.post("/pooling", {"input": ["hello"]}).status_code == 200
    finally:
        server.stop()
