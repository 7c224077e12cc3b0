"""``tokembed serve`` with a vision retrieval model (the tiny random ColPali): its text queries through the
model's own query processing, as ``tokembed score`` encodes them; ``--index`` over a page-image index answers
``/search`` as ``score`` does; what it cannot answer (documents are images) is a 400 that says so, never a 500."""

from __future__ import annotations

import numpy as np
import pytest

from serve_support import LiveServer

SAMPLE_IMAGES = __import__("conftest").SAMPLE_DATA / "images"
QUERIES = ["invoice total", "a rainfall chart", "boarding pass gate"]


@pytest.fixture(scope="module")
def colpali(tmp_path_factory):
    from vision_checkpoints import build_colpali

    return build_colpali(tmp_path_factory.mktemp("vision") / "colpali")


@pytest.fixture(scope="module")
def server(colpali):
    from tokembed.serve import EmbeddingService, ServeOptions

    live = LiveServer(EmbeddingService.load(str(colpali), "cpu", ServeOptions()))
    yield live
    live.stop()


def test_text_queries_get_the_models_own_query_processing(server, colpali):
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    response = server.post("/pooling", {"input": QUERIES, "input_type": "query"})
    assert response.status_code == 200, response.text
    expected = Embedder.load(str(colpali), EncodeFlags(kind="query", store_dtype="float32")).embed(QUERIES)
    for item, (vectors, _) in zip(response.json()["data"], expected):
        assert np.asarray(item["data"]).shape == vectors.shape
        assert np.abs(np.asarray(item["data"]) - vectors).max() < 1e-5


@pytest.mark.parametrize("path, body, param", [
    ("/pooling", {"input": "invoice total"}, "input_type"),  # raw mode: no such thing for an image model here
    ("/pooling", {"input": "invoice total", "input_type": "document"}, "input_type"),
    ("/pooling", {"input": [[5, 6, 7]], "input_type": "query"}, "input"),
    ("/pooling", {"input": "invoice total", "input_type": "query", "truncate_prompt_tokens": 4}, "truncate_prompt_tokens"),
    ("/score", {"text_1": "invoice total", "text_2": "a page"}, "model"),
    ("/rerank", {"query": "invoice total", "documents": ["a page"]}, "model"),
])
def test_what_a_vision_model_cannot_answer_is_a_400_that_says_why(server, path, body, param):
    response = server.post(path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    if param in ("model", "input_type"):
        assert "vision retrieval model" in error["message"] and "tokembed encode" in error["message"]


def test_a_query_longer_than_the_models_positions_is_a_400_and_the_server_keeps_answering(server):
    """A vision query was processed whole: 40,000 words got the server OOM-killed (every request in flight lost),
    3,000 words came back as 9,000 vectors from positions the model never learned."""
    response = server.post("/pooling", {"input": "invoice total " * 3000, "input_type": "query"})
    assert response.status_code == 400, response.text
    assert "positions" in response.json()["error"]["message"]
    assert server.post("/pooling", {"input": "invoice total", "input_type": "query"}).status_code == 200


def test_a_query_holding_the_image_placeholder_is_a_400_that_says_why(server):
    """ColPaliProcessor raises on ``<image>`` in a text without an image: that was a 500."""
    response = server.post("/pooling", {"input": ["invoice total", "see <image> here"], "input_type": "query"})
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "a query holding '<image>', the ColPaliForRetrieval processor's image/video placeholder" in message
    assert server.post("/pooling", {"input": "invoice total", "input_type": "query"}).status_code == 200


def test_search_over_a_page_image_index_answers_as_score_does(cli, colpali, tmp_path):
    from tokembed.search import search
    from tokembed.serve import EmbeddingService, ServeOptions

    index = tmp_path / "index"
    assert cli("encode", SAMPLE_IMAGES, "--model", colpali, "-o", index, "--quiet").exit_code == 0
    live = LiveServer(EmbeddingService.load(None, "cpu", ServeOptions(), index=str(index)))
    try:
        response = live.post("/search", {"query": QUERIES, "top_k": 4})
        assert response.status_code == 200, response.text
        got = [[(hit["id"], hit["score"]) for hit in item["results"]] for item in response.json()["data"]]
    finally:
        live.stop()
    want = [[(hit.id, hit.score) for hit in found] for found in search(index, QUERIES, top_k=4)]
    assert [[doc for doc, _ in found] for found in got] == [[doc for doc, _ in found] for found in want]
    for found, wanted in zip(got, want):
        assert [score for _, score in found] == pytest.approx([score for _, score in wanted], abs=1e-4)


def test_a_huge_query_is_processed_apart_and_never_stalls_the_others(server):
    """The processor tokenizes a query whole before its length is checked (20-25 s for 15 MB of text): a query of
    more than LARGE_REQUEST_CHARS goes to the second lane, with a processor of its own, as text services' do."""
    import threading
    import time

    from tokembed.serve.tokenizing import LARGE_REQUEST_CHARS

    lanes = server.service._lanes
    release = threading.Event()
    lanes.large.thread.submit(release.wait, 60)  # the large lane, busy (as with a 15 MB query)
    answers = {}
    caller = threading.Thread(target=lambda: answers.setdefault(
        "huge", server.post("/pooling", {"input": "w " * LARGE_REQUEST_CHARS, "input_type": "query"})))
    caller.start()
    try:
        started = time.monotonic()
        assert server.post("/pooling", {"input": "a query", "input_type": "query"}).status_code == 200
        assert time.monotonic() - started < 20 and "huge" not in answers
    finally:
        release.set()
        caller.join(60)
    assert answers["huge"].status_code == 400 and "positions" in answers["huge"].json()["error"]["message"]
    profile = server.service.profiles["query"]
    assert lanes.large.view("query", profile).processor is not profile.view.processor
