"""``tokembed serve`` in operation: batching of concurrent requests, failures, bad requests, authentication and
the CLI process (live servers from ``serve_support``)."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from helpers import serve_process  # noqa: E402
from serve_support import API_KEY, DOCUMENTS, QUERIES  # noqa: E402


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


def test_an_empty_model_name_is_the_served_model_as_in_vllm(colbert_server):
    """vLLM's ``_is_model_supported`` takes a missing or empty name for the served model; "" was a 404."""
    for path, body in [("/pooling", {"input": "hello"}), ("/score", {"queries": "a", "documents": ["b"]}),
                       ("/rerank", {"query": "a", "documents": ["b"]})]:
        response = colbert_server.post(path, body | {"model": ""})
        assert response.status_code == 200 and response.json()["model"] == "tiny-colbert", response.text


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

    with serve_process(colbert_ckpt) as (process, url):
        assert httpx.post(url + "/pooling", json={"input": "hello"}, timeout=10).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "server stopped" in process.stderr.read()


def test_a_request_cut_off_by_the_shutdown_grace_gets_a_json_503():
    """uvicorn cancels the requests still running when its shutdown grace runs out; cancelled inside the app they
    used to reach the client as uvicorn's plain-text 500 (and a traceback each in the log)."""
    import asyncio
    import json

    from tokembed.serve.app import _answer

    class SilentClient:  # never disconnects
        async def receive(self):
            await asyncio.Event().wait()

    work_cancelled = asyncio.Event()

    async def slow_work():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            work_cancelled.set()
            raise

    async def scenario():
        handler = asyncio.ensure_future(_answer(SilentClient(), slow_work()))
        await asyncio.sleep(0.05)
        handler.cancel()  # what uvicorn does to running requests when timeout_graceful_shutdown expires
        response = await handler
        await asyncio.sleep(0)
        return response, work_cancelled.is_set()

    response, cancelled = asyncio.run(scenario())
    assert response.status_code == 503 and response.media_type == "application/json"
    assert json.loads(response.body)["error"]["type"] == "ServiceUnavailableError"
    assert cancelled  # the work itself was stopped, not left running


def test_a_huge_request_tokenizes_apart_and_never_stalls_the_others(colbert_server):
    """Requests of more than LARGE_REQUEST_CHARS go to a tokenizer thread of their own (with their own tokenizer
    copies): while that thread is busy, ordinary requests still answer; the huge request's vectors are those of
    its text, truncated, as the ordinary lane gives them."""
    import threading

    from serve_support import _pool
    from tokembed.serve.tokenizing import LARGE_REQUEST_CHARS

    service = colbert_server.service
    text = "alpha beta gamma delta " * (LARGE_REQUEST_CHARS // 20)
    assert len(text) > LARGE_REQUEST_CHARS
    release = threading.Event()
    service._lanes.large.thread.submit(release.wait, 60)  # the large lane, busy (as with a 15 MB single word)
    answers = {}

    def huge():
        answers["huge"] = _pool(colbert_server, [text], input_type="document")

    caller = threading.Thread(target=huge)
    caller.start()
    try:
        started = time.monotonic()
        short = _pool(colbert_server, [text[:4000]], input_type="document")  # the ordinary lane
        assert time.monotonic() - started < 20 and "huge" not in answers
    finally:
        release.set()
        caller.join(60)
    np.testing.assert_array_equal(answers["huge"][0], short[0])
