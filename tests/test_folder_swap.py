"""A reader holds one generation open: an index folder swapped under it (``mv X X.old; cp -a other X``, a
blue/green deploy) or a cron run's commit removing the files it lists changes nothing it reads, and its sha256
checks are of the files it holds, not of the new folder's files that happen to carry the same names."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from helpers import manifest, write_parquet
from plaid_support import corpus_rows, edited
from test_score import random_docs, write_index
from tokembed.errors import IndexCorruptError, IndexReplacedError
from tokembed.index import export as export_module
from tokembed.index.export import export_index
from tokembed.index.reader import open_index
from tokembed.search import search_vectors


@pytest.fixture
def swap(tmp_path):
    """(index folder, a function that swaps another valid index with the same shard names in for it)."""
    rng = np.random.default_rng(10)
    folder = write_index(tmp_path / "X", random_docs(rng, rng.integers(3, 12, size=30)), shard_rows=10)
    other = write_index(tmp_path / "other", random_docs(rng, rng.integers(3, 12, size=30)), shard_rows=10,
                        ids=[f"other{i}" for i in range(30)])
    names = [shard["file"] for shard in manifest(folder)["shards"]]
    assert names == [shard["file"] for shard in manifest(other)["shards"]]  # the same names, other bytes

    def swap_folder() -> None:
        folder.rename(tmp_path / "X.old")
        shutil.copytree(other, folder)

    return folder, swap_folder


def test_an_index_opened_before_its_folder_is_swapped_verifies_and_reads_its_own_rows(swap):
    folder, swap_folder = swap
    index = open_index(folder)
    swap_folder()
    index.verify()
    assert [row for batch in index.iter_batches(["id"]) for row in batch.column(0).to_pylist()] == [f"d{i}" for i in range(30)]


def test_an_exact_score_on_an_index_whose_folder_was_swapped_scores_the_generation_it_opened(swap, tmp_path, monkeypatch):
    folder, swap_folder = swap
    queries = [np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)]
    before = search_vectors(folder, queries, top_k=30, exact=True, device="cpu")
    monkeypatch.setenv("TOKEMBED_CACHE", str(tmp_path / "another-user"))  # no record of the writer's hashes: hashed here
    index = open_index(folder)
    swap_folder()
    assert search_vectors(index, queries, top_k=30, exact=True, device="cpu") == before


@pytest.mark.parametrize("fmt", ["parquet", "lance"])
def test_an_export_whose_folder_is_swapped_after_its_first_shard_exports_the_generation_it_opened(swap, tmp_path, monkeypatch, fmt):
    if fmt == "lance":
        pytest.importorskip("lancedb", reason="the [lance] extra is not installed")
    folder, swap_folder = swap
    real = export_module.fault_point
    monkeypatch.setattr(export_module, "fault_point", lambda event, count: (event, count) == ("export", 1) and swap_folder() or real(event, count))
    out = tmp_path / "out"
    summary = export_index(folder, out, fmt=fmt)
    assert summary.rows == 30
    if fmt == "parquet":
        ids = [row for file in sorted(out.glob("*.parquet")) for row in pq.read_table(file, columns=["id"]).column(0).to_pylist()]
        assert ids == [f"d{i}" for i in range(30)]


def test_a_structure_checks_and_maps_the_same_code_files_while_its_folder_is_swapped(compressed, tmp_path, monkeypatch):
    from tokembed.search.plaid import search as plaid_search_module

    folder = tmp_path / "index"
    shutil.copytree(compressed[0], folder)
    queries = compressed[2][:3]
    before = search_vectors(folder, queries, top_k=5)
    rng = np.random.default_rng(11)
    other = write_index(tmp_path / "other", random_docs(rng, [4] * 600, dim=compressed[1][0].shape[1]), shard_rows=200)
    index = open_index(folder)
    real = plaid_search_module.verify_files

    def swapped_first(*args, **kwargs):  # the code files are open by now: a deploy swaps the folder
        if not (tmp_path / "X.old").exists():
            folder.rename(tmp_path / "X.old")
            shutil.copytree(other, folder)
        return real(*args, **kwargs)

    monkeypatch.setattr(plaid_search_module, "verify_files", swapped_first)
    assert search_vectors(index, queries, top_k=5) == before


@pytest.mark.parametrize("drop", [[], ["--drop-vectors"]], ids=["vectors stored", "compressed-only"])
def test_a_structure_search_of_an_index_held_through_a_cron_commit_answers_from_the_generation_it_opened(
        tmp_path, cli, checkpoint, drop):
    """The structure's files were opened by path at each search: once a cron ``encode`` had committed and removed
    code files the held generation lists, its search was refused as corrupt ("manifest lists codes-..., which is
    missing"), and a compressed-only index held so could not be searched at all."""
    common = ["--model", checkpoint("pylate_bert"), "--shard-rows", 10, "-q"]
    folder = tmp_path / "index"
    first, second = (write_parquet(tmp_path / f"v{n}.parquet", rows) for n, rows in enumerate([corpus_rows(40), edited(corpus_rows(40))]))
    assert cli("encode", first, "-o", folder, "--nbits", 2, *drop, *common).exit_code == 0
    queries = [np.random.default_rng(0).standard_normal((4, manifest(folder)["dim"])).astype(np.float32)]
    before = search_vectors(folder, queries, top_k=5)
    held = open_index(folder)
    assert cli("encode", second, "-o", folder, *common).exit_code == 0
    assert [entry for entry in held.manifest["search"]["shards"] if not (folder / entry["file"]).exists()]
    assert search_vectors(held, queries, top_k=5) == before and len(before[0]) == 5


@pytest.mark.parametrize("drop", [[], ["--drop-vectors"]], ids=["vectors stored", "compressed-only"])
def test_a_structure_search_of_an_index_held_without_its_structure_after_a_cron_commit_says_reopen_it(
        tmp_path, cli, checkpoint, drop):
    """``open_index(..., structure=False)`` holds the shards alone: its structure search opens the structure's files by
    path, which the commit removed. That was "manifest lists codes-..., which is missing" (IndexCorruptError, exit 6):
    a sound index called damaged, which a caller would rebuild."""
    from cli._errors import exit_code_for

    common = ["--model", checkpoint("pylate_bert"), "--shard-rows", 10, "-q"]
    folder = tmp_path / "index"
    first, second = (write_parquet(tmp_path / f"v{n}.parquet", rows) for n, rows in enumerate([corpus_rows(40), edited(corpus_rows(40))]))
    assert cli("encode", first, "-o", folder, "--nbits", 2, *drop, *common).exit_code == 0
    queries = [np.random.default_rng(0).standard_normal((4, manifest(folder)["dim"])).astype(np.float32)]
    held = open_index(folder, structure=False)
    assert cli("encode", second, "-o", folder, *common).exit_code == 0
    with pytest.raises(IndexReplacedError, match="a newer generation of the index was committed since") as raised:
        search_vectors(held, queries, top_k=5)
    assert "structure=True" in raised.value.hint and exit_code_for(raised.value) == (6, "index replaced")
    assert len(search_vectors(open_index(folder, structure=False), queries, top_k=5)[0]) == 5  # reopened, it answers


def test_a_code_file_missing_from_the_generation_still_committed_is_corruption(compressed, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(compressed[0], folder)
    held = open_index(folder, structure=False)
    (folder / manifest(folder)["search"]["shards"][0]["file"]).unlink()
    with pytest.raises(IndexCorruptError, match="which is missing"):
        search_vectors(held, compressed[2][:1], top_k=5)


def test_a_scan_of_an_index_whose_folder_was_swapped_drops_the_pages_it_read(tmp_path):
    """The reader's own mapping is found by its address, not by the shard's path: after ``mv X X.old`` the
    mapping's name is ``X.old/...``, and a lookup by path found nothing to drop (the scan kept every page)."""
    from test_pages import mapped_rss
    from tokembed.search.maxsim import shard_batches

    rng = np.random.default_rng(3)
    folder = write_index(tmp_path / "X", random_docs(rng, [40] * 400, dim=128), shard_rows=200, batch_rows=20)
    index = open_index(folder)
    folder.rename(tmp_path / "X.old")
    shutil.copytree(tmp_path / "X.old", folder)
    assert sum(batch.num_rows for shard in index.shards for batch in shard_batches(index, shard, verify=False)) == 400
    old = [tmp_path / "X.old" / shard["file"] for shard in index.shards]
    assert sum(path.stat().st_size for path in old) > 4_000_000
    assert sum(mapped_rss(path) for path in old) < sum(path.stat().st_size for path in old) // 20  # the footers


def test_an_index_that_keeps_changing_while_it_is_opened_is_replaced_not_corrupt(swap, monkeypatch):
    """Every attempt found a shard gone and a newer manifest committed: the index is sound, only busy. That was
    IndexCorruptError ("index corrupt"), which a caller would answer with a rebuild."""
    from cli._errors import exit_code_for
    from tokembed.index import reader

    folder, _ = swap
    (folder / manifest(folder)["shards"][0]["file"]).unlink()
    read, calls = reader.read_manifest, iter(range(1_000))
    monkeypatch.setattr(reader, "read_manifest", lambda path: {**read(path), "created_at": str(next(calls))})
    with pytest.raises(IndexReplacedError, match="kept changing while it was being opened") as raised:
        open_index(folder)
    assert not isinstance(raised.value, IndexCorruptError) and exit_code_for(raised.value) == (6, "index replaced")
    assert "run the same command again" in raised.value.hint


def test_a_held_index_whose_manifest_was_deleted_is_not_called_replaced(compressed, tmp_path):
    """No manifest at all is no newer generation: that was "a newer generation ... the index is not damaged"."""
    folder = tmp_path / "index"
    shutil.copytree(compressed[0], folder)
    held = open_index(folder, structure=False)
    (folder / manifest(folder)["search"]["shards"][0]["file"]).unlink()
    (folder / "manifest.json").unlink()
    with pytest.raises(IndexCorruptError, match="which is missing") as raised:
        search_vectors(held, compressed[2][:1], top_k=5)
    assert not isinstance(raised.value, IndexReplacedError)
