"""``tokembed serve --index``: ``POST /search`` answers as ``tokembed score`` does, follows the generations a cron
job commits, and refuses what it cannot answer exactly (another model, other settings, a LoRA adapter)."""

from __future__ import annotations

import pytest

from helpers import write_jsonl, write_manifest
from serve_support import LiveServer

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
QUERIES = ["alpha bravo", "november oscar papa", "kilo lima mike golf", "nothing like it"]


def corpus_rows(count: int, start: int = 0) -> list[dict]:
    return [{"id": f"d{i}", "text": " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(3 + i % 9))} for i in range(start, start + count)]


@pytest.fixture()
def built(tmp_path, cli, colbert_ckpt):
    """A ColBERT index of 80 documents with a search structure (16 centroids): (index folder, corpus file)."""
    return build_index(tmp_path, cli, colbert_ckpt)


def build_index(tmp_path, cli, colbert_ckpt):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(80))
    index = tmp_path / "index"
    assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--nbits", 2, "--quiet").exit_code == 0
    assert cli("compress", index, "--centroids", 16, "--quiet").exit_code == 0
    return index, corpus


def served(index, model=None, **options):
    from tokembed.serve import EmbeddingService, ServeOptions

    return LiveServer(EmbeddingService.load(None if model is None else str(model), "cpu", ServeOptions(**options), index=str(index)))


def hits_of(response) -> list[list[tuple[str, float]]]:
    assert response.status_code == 200, response.text
    return [[(hit["id"], hit["score"]) for hit in item["results"]] for item in response.json()["data"]]


def expected(index, queries, **options) -> list[list[tuple[str, float]]]:
    from tokembed.search import search

    return [[(hit.id, hit.score) for hit in found] for found in search(index, queries, **options)]


def same_hits(got, want) -> None:
    assert [[doc for doc, _ in found] for found in got] == [[doc for doc, _ in found] for found in want]
    for found, wanted in zip(got, want):
        assert [score for _, score in found] == pytest.approx([score for _, score in wanted], abs=1e-4)


def test_search_answers_as_score_does_with_the_structure_and_exactly(built):
    index, _ = built
    from tokembed.search.plaid.search import has_structure
    from tokembed.index import open_index

    assert has_structure(open_index(index))
    server = served(index)  # --model left out: the index's own
    try:
        same_hits(hits_of(server.post("/search", {"query": QUERIES, "top_k": 5})), expected(index, QUERIES, top_k=5))
        exact = hits_of(server.post("/v1/search", {"query": QUERIES[1], "top_k": 7, "exact": True}))
        same_hits(exact, expected(index, QUERIES[1:2], top_k=7, exact=True))
        every = hits_of(server.post("/search", {"query": QUERIES, "top_k": 10, "probe": 16, "candidates": 80}))
        same_hits(every, expected(index, QUERIES, top_k=10, exact=True))  # everything probed: the scan's answer
        assert server.metrics()['tokembed_requests_total{endpoint="search"}'] == 3
    finally:
        server.stop()


def test_search_runs_the_candidate_stages_on_the_served_device(built, monkeypatch):
    """A server on a GPU searches there too (the CPU stands in for it), as ``score --device cuda`` does."""
    from tokembed.search.plaid import on_device

    index, _ = built
    seen = []
    real = on_device.device_candidates

    def recorded(structure, q, probe, pool, candidates, device):
        seen.append(device)
        return real(structure, q, probe, pool, candidates, "cpu")

    monkeypatch.setattr(on_device, "device_candidates", recorded)
    server = served(index)
    try:
        on_cpu = hits_of(server.post("/search", {"query": QUERIES[:2], "top_k": 5}))
        assert seen == []
        server.service.embedder.device = "cuda:1"  # its batches already run on their executors' device
        on_gpu = hits_of(server.post("/search", {"query": QUERIES[:2], "top_k": 5}))
        assert seen == ["cuda:1"] * 2 and on_gpu == on_cpu
    finally:
        server.stop()


def test_a_generation_committed_while_serving_is_searched_by_the_next_request(built, cli, colbert_ckpt):
    index, corpus = built
    server = served(index, colbert_ckpt)
    try:
        before = hits_of(server.post("/search", {"query": "zulu yankee xray", "top_k": 3}))[0]
        write_jsonl(corpus, corpus_rows(80) + [{"id": "new", "text": "zulu yankee xray whiskey"}])
        assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--quiet").exit_code == 0  # cron's re-run
        after = hits_of(server.post("/search", {"query": "zulu yankee xray", "top_k": 3}))[0]
        assert "new" not in [doc for doc, _ in before] and after[0][0] == "new"
        same_hits([after], expected(index, ["zulu yankee xray"], top_k=3))
    finally:
        server.stop()


def held_replaced_files(index) -> list[str]:
    """Files of ``index`` this process still holds open or mapped after they were deleted (replaced generations)."""
    import os
    from pathlib import Path

    fds = Path("/proc/self/fd")
    opened = [os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink() and os.path.exists(fd)]
    mapped = Path("/proc/self/maps").read_text().splitlines()
    return sorted({name for name in opened + mapped if str(index) in name and "(deleted)" in name})


def wait_until(condition, seconds: float = 10.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="reads /proc (Linux)")
def test_an_idle_server_lets_a_replaced_generation_go(built, cli, colbert_ckpt, monkeypatch):
    """A server that answered one search held the replaced generation's deleted shards and code files open until
    the next search with the structure: after `encode --full` (or `compress --drop-vectors`) the disk kept both."""
    from tokembed.serve import index_search

    monkeypatch.setattr(index_search, "WATCH_SECONDS", 0.05, raising=False)
    index, corpus = built
    server = served(index, colbert_ckpt)
    try:
        hits_of(server.post("/search", {"query": QUERIES, "top_k": 3}))
        assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--full", "--quiet").exit_code == 0
        assert wait_until(lambda: not held_replaced_files(index)), held_replaced_files(index)
        same_hits(hits_of(server.post("/search", {"query": QUERIES, "top_k": 3})), expected(index, QUERIES, top_k=3))
    finally:
        server.stop()


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="reads /proc (Linux)")
def test_an_exact_search_lets_a_replaced_generation_go(built, cli, colbert_ckpt, monkeypatch):
    from tokembed.serve import index_search

    monkeypatch.setattr(index_search, "WATCH_SECONDS", 3600.0, raising=False)  # the watcher out of the way
    index, corpus = built
    server = served(index, colbert_ckpt)
    try:
        hits_of(server.post("/search", {"query": QUERIES, "top_k": 3}))
        assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--full", "--quiet").exit_code == 0
        assert held_replaced_files(index)  # the watcher sleeps: the generation answered before is still open
        same_hits(hits_of(server.post("/search", {"query": QUERIES, "top_k": 3, "exact": True})),
                  expected(index, QUERIES, top_k=3, exact=True))
        assert wait_until(lambda: not held_replaced_files(index), 2.0), held_replaced_files(index)
    finally:
        server.stop()


def test_an_earlier_releases_index_keeps_answering_after_the_cron_run_that_records_its_weights(built, cli, colbert_ckpt):
    """The first cron run after an upgrade records the weights' digest that an earlier release's manifest lacks:
    a server started before it answered every /search with a 500 "restart" from then on."""
    import json

    index, corpus = built
    manifest = json.loads((index / "manifest.json").read_text())
    del manifest["model"]["weights_sha256"]  # as an earlier release wrote it
    write_manifest(index, manifest, sealed=False)
    server = served(index, colbert_ckpt)
    try:
        assert server.post("/search", {"query": "alpha"}).status_code == 200
        write_jsonl(corpus, corpus_rows(80) + [{"id": "new", "text": "zulu yankee xray whiskey"}])
        assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--quiet").exit_code == 0
        assert "weights_sha256" in json.loads((index / "manifest.json").read_text())["model"]
        assert hits_of(server.post("/search", {"query": "zulu yankee xray", "top_k": 1}))[0][0][0] == "new"
    finally:
        server.stop()


def test_an_index_rebuilt_with_other_settings_is_refused_until_restart(built, cli, colbert_ckpt, caplog):
    """The server's log said nothing of it (the 500's client alone read it); now it says so once, not per request.
    A client's mistake (a 400) is not logged."""
    import logging

    index, corpus = built
    server = served(index)
    caplog.set_level(logging.DEBUG, logger="tokembed.serve")
    try:
        assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--max-length", 8, "--quiet").exit_code == 0
        for _ in range(3):
            response = server.post("/search", {"query": "alpha"})
            assert response.status_code == 500 and "restart" in response.json()["error"]["message"]
        assert server.post("/search", {"query": "alpha", "top_k": 0}).status_code == 400
        assert server.post("/search", {"query": "alpha", "model": "other"}).status_code in (400, 404)
        logged = [record for record in caplog.records if record.name == "tokembed.serve" and record.levelno >= logging.WARNING]
        assert len(logged) == 1 and logged[0].levelno == logging.ERROR
        assert str(index) in logged[0].getMessage() and "restart tokembed serve" in logged[0].getMessage()
    finally:
        server.stop()


def test_bad_requests_and_a_server_without_index(built, colbert_server):
    index, _ = built
    response = colbert_server.post("/search", {"query": "alpha"})
    assert response.status_code == 404 and "--index" in response.json()["error"]["message"]
    server = served(index)
    try:
        for body, param in (({"query": "alpha", "top_k": 0}, "top_k"), ({"query": []}, "query"),
                            ({"query": "alpha", "probe": 0}, "probe"), ({"query": "alpha", "model": "other"}, "model")):
            response = server.post("/search", body)
            assert response.status_code in (400, 404) and response.json()["error"]["param"] == param, response.text
    finally:
        server.stop()


def test_loading_refuses_another_model_or_dtype_than_the_index(built, minilm_path):
    from tokembed.errors import IndexNotFoundError, ModelMismatchError, UsageError
    from tokembed.serve import EmbeddingService, ServeOptions

    index, _ = built
    with pytest.raises(ModelMismatchError):
        EmbeddingService.load(str(minilm_path), "cpu", ServeOptions(), index=str(index))
    with pytest.raises(UsageError, match="--dtype"):
        EmbeddingService.load(None, "cpu", ServeOptions(dtype="bfloat16"), index=str(index))
    with pytest.raises(IndexNotFoundError, match="not a tokembed index"):
        EmbeddingService.load(None, "cpu", ServeOptions(), index=str(index / "data"))


def test_a_compressed_only_index_is_searched_from_its_codes_and_refuses_exact(built, cli):
    index, _ = built
    assert cli("compress", index, "--drop-vectors", "--quiet").exit_code == 0
    server = served(index)
    try:
        same_hits(hits_of(server.post("/search", {"query": QUERIES, "top_k": 4})), expected(index, QUERIES, top_k=4))
        response = server.post("/search", {"query": "alpha", "exact": True})
        message = response.json()["error"]["message"]
        assert response.status_code == 400 and "vectors" in message
        assert '"exact": true' in message and "score --exact" not in message  # the request's words, not the CLI's
    finally:
        server.stop()


def test_cli_serve_index_errors_exit_as_the_table_says(cli, tmp_path, built, minilm_path):
    index, _ = built
    result = cli("serve", "--index", tmp_path / "nope", "--port", 0)
    assert result.exit_code == 6 and "not a tokembed index" in result.stderr  # index not found
    result = cli("serve", "--index", index, "--dtype", "bfloat16", "--port", 0)
    assert result.exit_code == 2 and "--dtype" in result.stderr
    result = cli("serve", "--index", index, "--model", minilm_path, "--port", 0)
    assert result.exit_code != 0 and "not the model the index was built with" in result.stderr


def test_exact_search_answers_when_the_structure_is_damaged(built):
    """As ``score --exact``: the scan reads the vectors only; the structure's search names the damage."""
    import json as _json

    index, _ = built
    server = served(index)
    try:
        want = hits_of(server.post("/search", {"query": QUERIES, "top_k": 5, "exact": True}))
        codec = _json.loads((index / "manifest.json").read_text())["search"]["codec"]["file"]
        (index / codec).unlink()
        server.service.index._generation = None  # as a fresh server would: nothing of the structure kept open
        assert hits_of(server.post("/search", {"query": QUERIES, "top_k": 5, "exact": True})) == want
        assert server.post("/search", {"query": QUERIES, "top_k": 5}).status_code == 500
    finally:
        server.stop()


def test_search_cuts_queries_as_pooling_does_and_refuses_another_activation_than_the_index(built):
    """Both fields are in /search's schema (from vLLM's request); they were taken and ignored: a query answered whole
    although ``truncate_prompt_tokens`` asked for 4 tokens, unnormalized query vectors asked for and not given."""
    from dataclasses import replace

    from tokembed.embedder import Embedder, index_checkpoint
    from tokembed.index_colbert import index_colbert
    from tokembed.index import open_index
    from tokembed.search import search_vectors

    index, _ = built
    manifest = open_index(index).manifest
    where, flags = index_checkpoint(manifest, "query")
    embedder = Embedder.load(where, replace(flags, max_length=4), "cpu", False, index_colbert(manifest))
    cut = [vectors for vectors, _ in embedder.embed(QUERIES)]  # what `tokembed score` searches with --max-length 4
    want = [[(hit.id, hit.score) for hit in found] for found in search_vectors(index, cut, top_k=5, exact=True)]
    server = served(index)
    try:
        response = server.post("/search", {"query": QUERIES, "top_k": 5, "exact": True, "truncate_prompt_tokens": 4})
        same_hits(hits_of(response), want)
        assert response.json()["usage"]["prompt_tokens"] == 4 * len(QUERIES)
        whole = hits_of(server.post("/search", {"query": QUERIES, "top_k": 5, "exact": True}))
        assert whole != hits_of(response)
        for value in (1, 100_000):  # /pooling's refusals, word for word
            searched = server.post("/search", {"query": "alpha", "truncate_prompt_tokens": value}).json()["error"]
            pooled = server.post("/pooling", {"input": "alpha", "truncate_prompt_tokens": value}).json()["error"]
            assert searched == pooled and searched["param"] == "truncate_prompt_tokens"
        assert hits_of(server.post("/search", {"query": QUERIES, "top_k": 5, "exact": True, "use_activation": True})) == whole
        response = server.post("/search", {"query": "alpha", "use_activation": False})
        assert response.status_code == 400 and response.json()["error"]["param"] == "use_activation", response.text
        assert "normalized" in response.json()["error"]["message"]
    finally:
        server.stop()
