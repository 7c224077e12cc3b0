"""``tokembed serve``: a live server on 127.0.0.1 (uvicorn in a thread, a free port), real HTTP.

Servers (module-scoped, each loads its model once):
* ``colbert_server``  the tiny PyLate BERT checkpoint (raw + query + document profiles), no API key;
* ``guarded_server``  the same checkpoint, ``--api-key``, a 1 s batch window (to catch a client leaving
  while its request waits) and a small body limit;
* ``minilm_server``   the demo MiniLM (raw only), for parity with ``tokembed encode --mode raw``.

References are computed here: ``Embedder`` / ``tokembed encode`` for vectors, numpy for MaxSim.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from helpers import read_index, write_jsonl  # noqa: E402

from tokembed.embedder import Embedder  # noqa: E402
from tokembed.settings import EncodeFlags  # noqa: E402

API_KEY = "s3cret-key"
QUERIES = ["what is the capital of france", "red planet", "hello world"]
DOCUMENTS = [
    "paris is the capital of france.",
    "berlin is the capital of germany, a large city.",
    "mars is known as the red planet!",
    "the cat and the dog read a book",
]


class LiveServer:
    """``create_app(service)`` served by uvicorn on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, service, **app_options) -> None:
        import uvicorn

        from tokembed.serve import bind_socket, create_app

        self.service = service
        sock = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(service, **app_options), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.01)

    def post(self, path: str, body, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=30, **kwargs)

    def metrics(self, headers=None) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", headers=headers, timeout=10).text
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.service.close()


def _service(path, **options):
    from tokembed.serve import EmbeddingService, ServeOptions

    return EmbeddingService.load(str(path), "cpu", ServeOptions(**options))


@pytest.fixture(scope="module")
def colbert_ckpt(checkpoint_store):
    return checkpoint_store("pylate_bert")


@pytest.fixture(scope="module")
def colbert_server(colbert_ckpt):
    server = LiveServer(_service(colbert_ckpt, served_model_name="tiny-colbert"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded_server(colbert_ckpt):
    server = LiveServer(_service(colbert_ckpt, batch_window_ms=1000, max_inputs=8), api_key=API_KEY, max_body_bytes=4096)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def minilm_server(minilm_path):
    server = LiveServer(_service(minilm_path, served_model_name="minilm"))
    yield server
    server.stop()


def _pool(server, inputs, **options) -> list[np.ndarray]:
    response = server.post("/pooling", {"model": None, "input": inputs, **options})
    assert response.status_code == 200, response.text
    return [np.asarray(item["data"], dtype=np.float32) for item in response.json()["data"]]


def _reference(path, texts, **flags) -> list[tuple[np.ndarray, np.ndarray]]:
    embedder = Embedder.load(str(path), EncodeFlags(store_dtype="float32", **flags))
    return embedder.embed(texts)


def _maxsim(q: np.ndarray, d: np.ndarray) -> float:
    """Brute force: for every query token the best document token, summed."""
    return float(sum(max(float(np.dot(qv, dv)) for dv in d) for qv in q))


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

    truncated = _pool(colbert_server, [long_text], truncate_prompt_tokens=10)[0]
    assert len(truncated) == 10
    assert len(_pool(colbert_server, [long_text], truncate_prompt_tokens=-1)[0]) == limit
    expected = _reference(colbert_ckpt, [long_text], mode="raw", max_length=10)[0][0]
    np.testing.assert_allclose(truncated, expected, atol=2e-5)
    assert len(_pool(colbert_server, [list(range(5, 60))], truncate_prompt_tokens=12)[0]) == 12
    # ColBERT documents are cut to the checkpoint's document length, as PyLate does: no error
    assert len(_pool(colbert_server, [long_text], input_type="document")[0]) <= 40


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


def test_concurrent_requests_are_merged_and_match_sequential(colbert_server):
    rng = random.Random(0)
    pool = QUERIES + DOCUMENTS + ["a b c d e f g", "one two three", "the sun and the moon"]
    kinds = [None, "query", "document"]
    requests = [(rng.sample(pool, rng.randint(1, 3)), rng.choice(kinds)) for _ in range(200)]

    # sequential references: every (text, kind) alone in its request
    reference = {}
    for text, kind in sorted({(t, k) for texts, k in requests for t in texts}, key=str):
        body = {"input": [text]} | ({"input_type": kind} if kind else {})
        reference[(text, kind)] = np.asarray(colbert_server.post("/pooling", body).json()["data"][0]["data"])

    before = colbert_server.metrics()

    async def load() -> list:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=colbert_server.url, limits=limits, timeout=30) as client:
            gate = asyncio.Semaphore(64)

            async def one(texts, kind):
                async with gate:
                    body = {"input": texts} | ({"input_type": kind} if kind else {})
                    return await client.post("/pooling", json=body)

            return await asyncio.wait_for(asyncio.gather(*(one(t, k) for t, k in requests)), timeout=60)

    responses = asyncio.run(load())
    after = colbert_server.metrics()

    assert len(responses) == 200 and all(r.status_code == 200 for r in responses)
    for (texts, kind), response in zip(requests, responses, strict=True):
        data = response.json()["data"]
        assert [item["index"] for item in data] == list(range(len(texts)))
        for text, item in zip(texts, data, strict=True):
            np.testing.assert_allclose(np.asarray(item["data"]), reference[(text, kind)], atol=2e-5)
    submitted = after["tokembed_batcher_requests"] - before["tokembed_batcher_requests"]
    batches = after["tokembed_batcher_batches"] - before["tokembed_batcher_batches"]
    rounds = after["tokembed_batcher_rounds"] - before["tokembed_batcher_rounds"]
    assert submitted == 200
    # three profiles (raw, query, document) never share a forward pass, so a round runs up to 3 batches
    assert batches <= 0.8 * submitted and rounds < submitted / 1.5, f"{submitted} requests: {rounds} rounds, {batches} batches"
    assert after["tokembed_batcher_largest_batch_requests"] > 1


def test_window_bounds_the_wait_before_a_batch_starts():
    from tokembed.engine.runner import BatchOutput
    from tokembed.models.steps import Tokenized
    from tokembed.serve.batcher import DynamicBatcher

    started = []

    class Recorder:
        encoder = None

        def run(self, items):
            started.append(time.monotonic())
            return BatchOutput([(np.zeros((len(i.ids), 2), np.float32), i.ids) for i in items], 0, 0)

    batcher = DynamicBatcher({"raw": Recorder()}, budget=1000, window=0.05)

    async def submit_two():
        t0 = time.monotonic()
        item = Tokenized(np.arange(3), 3)
        rows = await asyncio.gather(batcher.submit("raw", [item]), batcher.submit("raw", [item, item]))
        return t0, rows

    try:
        t0, rows = asyncio.run(submit_two())
    finally:
        batcher.close()
    assert [len(r) for r in rows] == [1, 2] and len(started) == 1  # merged into one batch
    assert 0.04 <= started[0] - t0 < 0.5
    assert batcher.stats.largest_batch_requests == 2


def test_engine_failure_answers_only_its_profile_and_the_worker_goes_on():
    from tokembed.engine.runner import BatchOutput
    from tokembed.models.steps import Tokenized
    from tokembed.serve.batcher import DynamicBatcher

    class Echo:
        encoder = None

        def run(self, items):
            return BatchOutput([(np.zeros((len(i.ids), 2), np.float32), i.ids) for i in items], 0, 0)

    class Broken(Echo):
        def run(self, items):
            raise MemoryError("device lost")

    batcher = DynamicBatcher({"raw": Echo(), "query": Broken()}, budget=1000, window=0.02)
    item = Tokenized(np.arange(4), 4)

    async def both():
        return await asyncio.gather(batcher.submit("query", [item]), batcher.submit("raw", [item]), return_exceptions=True)

    try:
        failed, ok = asyncio.run(both())
        again = asyncio.run(both())[1]
    finally:
        batcher.close()
    assert isinstance(failed, MemoryError) and len(ok) == 1 and len(again) == 1
    assert batcher.stats.failed_requests == 2


def test_client_that_disconnects_is_dropped_before_its_batch(guarded_server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    before = guarded_server.metrics(headers)
    body = json.dumps({"input": ["the red planet"]}).encode()
    port = int(guarded_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(
            b"POST /pooling HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        )
        deadline = time.monotonic() + 5  # wait until it is queued (the 1 s window has not run out)
        while guarded_server.metrics(headers)["tokembed_batcher_requests"] == before["tokembed_batcher_requests"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    time.sleep(1.5)  # past the window: the worker took the round and found the request cancelled
    after = guarded_server.metrics(headers)
    assert after["tokembed_batcher_dropped_requests"] == before["tokembed_batcher_dropped_requests"] + 1
    assert after["tokembed_batcher_batches"] == before["tokembed_batcher_batches"]
    ok = guarded_server.post("/pooling", {"input": "still alive"}, headers=headers)
    assert ok.status_code == 200


# -- errors and limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, status, param",
    [
        ("/pooling", b"{not json", 400, None),
        ("/pooling", b"[1, 2]", 400, None),
        ("/pooling", {}, 400, "input"),
        ("/pooling", {"input": 5}, 400, "input"),
        ("/pooling", {"input": [1, "a"]}, 400, "input"),
        ("/pooling", {"input": [-1, 3]}, 400, "input"),
        ("/pooling", {"input": [5, 99999]}, 400, "input"),
        ("/pooling", {"input": []}, 400, "input"),
        ("/pooling", {"input": [[]]}, 400, "input"),
        ("/pooling", {"input": "x", "dimensions": "8"}, 400, "dimensions"),
        ("/pooling", {"input": "x", "dimensions": 0}, 400, "dimensions"),
        ("/pooling", {"input": "x", "dimensions": 25}, 400, "dimensions"),
        ("/pooling", {"input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ("/pooling", {"input": "x", "embed_dtype": "fp8_e4m3"}, 400, "embed_dtype"),
        ("/pooling", {"input": "x", "truncate_prompt_tokens": -2}, 400, "truncate_prompt_tokens"),
        ("/pooling", {"input": "x", "truncate_prompt_tokens": 10_000}, 400, "truncate_prompt_tokens"),
        ("/pooling", {"input": "x", "task": "embed"}, 400, "task"),
        ("/pooling", {"input": "x", "input_type": "passage"}, 400, "input_type"),
        ("/pooling", {"input": [5, 6], "input_type": "query"}, 400, "input"),
        ("/pooling", {"input": "x", "use_activation": "yes"}, 400, "use_activation"),
        ("/pooling", {"input": "x", "model": "gpt-4"}, 404, "model"),
        ("/pooling", {"input": ["x"] * 1025}, 400, "input"),
        ("/score", {"queries": ["a", "b"], "documents": ["a", "b", "c"]}, 400, "queries"),
        ("/score", {"queries": "a"}, 400, "queries"),
        ("/score", {"queries": "a", "documents": []}, 400, "documents"),
        ("/score", {"queries": "a", "documents": [1, 2]}, 400, "documents"),
        ("/rerank", {"documents": ["a"]}, 400, "query"),
        ("/rerank", {"query": "a", "documents": []}, 400, "documents"),
        ("/v1/pooling", {"input": "x", "add_special_tokens": False}, 400, "add_special_tokens"),
    ],
)
def test_bad_requests_get_json_errors(colbert_server, path, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(colbert_server.url + path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["message"] and error["type"] in ("BadRequestError", "NotFoundError")
    assert error["param"] == param


def test_unknown_routes_and_methods(colbert_server):
    for method, path, status in [("GET", "/pooling", 405), ("GET", "/nope", 404), ("POST", "/health", 405)]:
        response = httpx.request(method, colbert_server.url + path)
        assert response.status_code == status
        assert response.json()["error"]["code"] == status
    assert httpx.get(colbert_server.url + "/health").status_code == 200
    models = httpx.get(colbert_server.url + "/v1/models").json()
    assert models["data"][0]["id"] == "tiny-colbert" and models["data"][0]["max_model_len"] == 39


def test_api_key_and_body_limit(guarded_server):
    url = guarded_server.url
    body = {"input": "hello"}
    assert httpx.post(url + "/pooling", json=body).status_code == 401
    wrong = httpx.post(url + "/v1/pooling", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == 401
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/health").status_code == 200  # probes need no key
    headers = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.post(url + "/pooling", json=body, headers=headers).status_code == 200

    too_big = httpx.post(url + "/pooling", json={"input": ["x" * 5000]}, headers=headers)
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == 413

    def chunks():  # no Content-Length: the limit applies while the body streams in
        for _ in range(10):
            yield b" " * 1000

    streamed = httpx.post(url + "/pooling", content=chunks(), headers=headers | {"Content-Type": "application/json"})
    assert streamed.status_code == 413
    many = httpx.post(url + "/pooling", json={"input": ["a"] * 9}, headers=headers)
    assert many.status_code == 400 and "at most 8" in many.json()["error"]["message"]


def test_unexpected_errors_become_500_and_the_server_goes_on(colbert_server, monkeypatch):
    executor = colbert_server.service.batcher.executors["raw"]

    def broken(items):
        raise RuntimeError("boom")

    monkeypatch.setattr(executor, "run", broken)
    response = colbert_server.post("/pooling", {"input": ["hello"]})
    assert response.status_code == 500
    assert response.json()["error"] == {"message": "RuntimeError: boom", "type": "InternalServerError", "param": None, "code": 500}
    monkeypatch.undo()

    def broken_response(*args):
        raise ValueError("cannot build")

    monkeypatch.setattr(colbert_server.service, "_pooling_response", broken_response)
    assert colbert_server.post("/pooling", {"input": ["hello"]}).status_code == 500
    monkeypatch.undo()
    assert colbert_server.post("/pooling", {"input": ["hello"]}).status_code == 200


# -- the command -----------------------------------------------------------------------------------------------


def test_cli_serve_errors(cli, monkeypatch, colbert_ckpt):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        result = cli("serve", "--model", colbert_ckpt, "--port", busy.getsockname()[1])
    assert result.exit_code == 2 and "cannot listen on 127.0.0.1" in result.stderr
    result = cli("serve", "--model", colbert_ckpt, "--devices", "cpu:2", "--port", 0)
    assert result.exit_code == 2 and "one device" in result.stderr

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    result = cli("serve", "--model", colbert_ckpt)
    assert result.exit_code == 2 and "pip install 'tokembed[serve]'" in result.stderr


@pytest.mark.slow
def test_cli_serve_process_answers_and_stops_cleanly(colbert_ckpt):
    import signal

    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--model", str(colbert_ckpt), "--port", "0", "--log-level", "warning"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stderr.readline()
        assert "tokembed: serving" in line, line
        url = line.rsplit(" at ", 1)[1].strip()
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        assert httpx.post(url + "/pooling", json={"input": "hello"}, timeout=10).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "server stopped" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
