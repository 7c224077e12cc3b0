"""``tokembed serve --index X`` while a blue/green deploy swaps the folder (``mv X X.old; cp -a new X``, as the
README documents): requests are answered from the generation the server holds until the folder holds a complete
new one, which the next request then uses. Each state the copy passes through is made here one step at a time."""

from __future__ import annotations

import os
import shutil

import pytest

from helpers import write_jsonl
from test_serve_search import QUERIES, build_index, corpus_rows, held_replaced_files, hits_of, served, wait_until

NEW_QUERY = "zulu yankee xray"


@pytest.fixture()
def built(tmp_path, cli, colbert_ckpt):
    """``test_serve_search``'s index: 80 documents, a search structure. (index folder, corpus file)"""
    return build_index(tmp_path, cli, colbert_ckpt)


@pytest.fixture()
def other(built, tmp_path, cli, colbert_ckpt):
    """A copy of ``built``'s index after a cron run added the document "new" (a generation to deploy)."""
    index, corpus = built
    other = tmp_path / "other"
    shutil.copytree(index, other)
    write_jsonl(corpus, corpus_rows(80) + [{"id": "new", "text": "zulu yankee xray whiskey"}])
    assert cli("encode", corpus, "--model", colbert_ckpt, "-o", other, "--quiet").exit_code == 0
    return other


def answers(server, exact: bool = False) -> list:
    return hits_of(server.post("/search", {"query": [*QUERIES, NEW_QUERY], "top_k": 3, "exact": exact}))


def found_new(hits) -> bool:
    return "new" in [doc for found in hits for doc, _ in found]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc (Linux)")
def test_a_swapped_folder_is_searched_from_the_held_generation_until_the_new_one_is_whole(built, other):
    """Each step answered a 500 ("its manifest.json is gone", "no such index folder", "manifest lists
    data/part-000000.arrow, which is missing"), and the watcher let the held generation go once the manifest was gone."""
    index, _ = built
    server = served(index)
    served_index = server.service.index
    try:
        before, before_exact = answers(server), answers(server, exact=True)
        old = index.with_name("index.old")

        def still_the_held_generation() -> None:
            served_index.release_if_replaced()  # what the watcher does every few seconds
            assert answers(server) == before and answers(server, exact=True) == before_exact

        index.rename(old)  # mv X X.old
        still_the_held_generation()
        index.mkdir()
        shutil.copy2(other / "manifest.json", index / "manifest.json")  # cp -a's first file: the manifest
        still_the_held_generation()
        shutil.copytree(other / "data", index / "data")
        shard = sorted((index / "data").iterdir())[0]
        whole = shard.read_bytes()
        shard.write_bytes(whole[: len(whole) // 2])  # a shard cp -a is still writing
        still_the_held_generation()
        shard.write_bytes(whole)  # the shards whole, the structure's files not copied yet
        still_the_held_generation()
        shutil.copytree(other / "plaid", index / "plaid")  # the copy done: the next request searches it
        after = answers(server)
        assert not found_new(before) and found_new(after) and found_new(answers(server, exact=True))
        shutil.rmtree(old)  # the deploy's clean-up: the generation answered before is let go
        assert wait_until(lambda: not held_replaced_files(old), 2.0), held_replaced_files(old)
    finally:
        server.stop()


def test_a_folder_with_no_complete_generation_before_the_first_search_is_a_503_to_retry(built, other):
    index, _ = built
    server = served(index)

    def refused(state: str) -> None:
        for exact in (False, True):
            response = server.post("/search", {"query": "alpha", "exact": exact})
            error = response.json()["error"]
            assert response.status_code == 503 and error["type"] == "ServiceUnavailableError", (state, response.text)
            assert "being replaced" in error["message"] and str(index) in error["message"]

    try:
        index.rename(index.with_name("index.old"))
        refused("gone")
        index.mkdir()
        shutil.copy2(other / "manifest.json", index / "manifest.json")
        refused("manifest only")
        shutil.rmtree(index)
        shutil.copytree(other, index)
        assert found_new(answers(server))
    finally:
        server.stop()


def flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_whole_but_damaged_new_generation_replaces_the_held_one_and_is_not_reopened_per_request(built, cli, colbert_ckpt,
                                                                                                 monkeypatch):
    """A committed generation whose code file was damaged after the commit is not a copy under way: it was answered
    from the replaced generation (exact searches too, "new" missing), reopened and re-hashed at every request, and
    the replaced files were never let go. Now exact searches answer from it, structure searches name the damage,
    and it is opened (hashed) once."""
    import tokembed.search.plaid.search as plaid_search

    index, corpus = built
    server = served(index)
    try:
        answers(server)
        write_jsonl(corpus, corpus_rows(80) + [{"id": "new", "text": "zulu yankee xray whiskey"}])
        assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--quiet").exit_code == 0
        flip_last_byte(next((index / "plaid").glob("codes-*.safetensors")))
        checks = []
        real = plaid_search.verify_files
        monkeypatch.setattr(plaid_search, "verify_files", lambda *a, **k: checks.append(1) or real(*a, **k))
        for _ in range(4):
            assert found_new(answers(server, exact=True))
            refused = server.post("/search", {"query": NEW_QUERY})
            assert refused.status_code == 500 and "sha256 does not match the manifest" in refused.text
        assert len(checks) == 1
        assert wait_until(lambda: not held_replaced_files(index))
    finally:
        server.stop()


def test_a_copy_under_way_is_reported_once_for_its_manifest(built, other, caplog):
    """Every request during the copy logged another line (its reason holds the shard's size so far)."""
    import logging

    index, _ = built
    server = served(index)
    caplog.set_level(logging.WARNING, logger="tokembed.serve")
    try:
        before = answers(server)
        index.rename(index.with_name("index.old"))
        (index / "data").mkdir(parents=True)
        shutil.copy2(other / "manifest.json", index / "manifest.json")
        shard = sorted((other / "data").iterdir())[0]
        whole = shard.read_bytes()
        for step in range(1, 6):  # cp -a writing the shard, a request at each step
            (index / "data" / shard.name).write_bytes(whole[: len(whole) * step // 6])
            assert answers(server) == before
        assert len([record for record in caplog.records if record.name == "tokembed.serve"]) == 1
    finally:
        server.stop()


def test_a_server_started_while_the_structure_is_copied_uses_it_once_it_is_all_there(built):
    """With no other generation held, one whose code files are still being copied answers exact searches from its
    shards; its manifest does not change when the copy ends, so it must be opened again then."""
    index, _ = built
    codec = next((index / "plaid").glob("codec-*.safetensors"))
    whole = codec.read_bytes()
    codec.write_bytes(whole[: len(whole) // 2])
    server = served(index)
    try:
        exact = answers(server, exact=True)
        assert server.post("/search", {"query": NEW_QUERY}).status_code == 500
        codec.write_bytes(whole)
        assert answers(server) and answers(server, exact=True) == exact
    finally:
        server.stop()


def test_a_commit_while_the_first_generation_opens_does_not_make_it_a_copy_under_way(built, cli, monkeypatch):
    """Its structure files were held open and checked, then checked again by path: a cron commit that removed them in
    between made the healthy generation "a copy under way", and the first structure search a 500 ("manifest lists
    plaid/codec-....safetensors, which is missing")."""
    import numpy as np

    import tokembed.serve.index_search as index_search

    index, _ = built
    real = index_search._require_whole_shards

    def then_a_commit(opened) -> None:  # between the open and the structure's check
        real(opened)
        assert cli("compress", index, "--centroids", 8, "--retrain", "--quiet").exit_code == 0

    served_index = index_search.ServedIndex(index)
    dim = served_index.manifest["dim"]
    query = [np.ones((4, dim), np.float32) / np.sqrt(dim)]
    monkeypatch.setattr(index_search, "_require_whole_shards", then_a_commit)
    assert served_index.search(query, 3, False, None, None, "cpu")[0]  # from the generation it opened
    held = served_index._generation
    assert held.complete and held.index.manifest["search"]["centroids"] == 16
    monkeypatch.setattr(index_search, "_require_whole_shards", real)  # the next request opens the commit's
    assert served_index.search(query, 3, False, None, None, "cpu")[0]
    assert served_index.opened().index.manifest["search"]["centroids"] == 8
