"""Compressed-only indexes: ``compress --drop-vectors`` / ``encode --drop-vectors``.

A synthetic index (``IndexWriter``, no model) for the drop itself, its search and the refusals; a tiny PyLate
checkpoint in-process for the cron case (an ``encode`` re-run on a compressed-only index codes its new rows
with the same centroids and equals dropping a normal run's result, byte for byte); real subprocesses for
SIGKILL and resume.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from helpers import manifest, write_manifest, write_parquet
from plaid_support import clustered_docs, corpus_rows, edited, queries_from, structure_files, tokembed
from test_score import write_index
from tokembed.errors import IndexCorruptError, VectorsDroppedError
from tokembed.index import open_index
from tokembed.index.export import export_index
from tokembed.index.previous import PreviousIndex
from tokembed.search import load_document, search_vectors
from tokembed.search.maxsim import scan
from tokembed.search.plaid import compress_index, open_searchable, plaid_search

EMPTY_ROW = 5  # a row with no tokens: dropping must not turn rows into that, nor break on one


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    rng = np.random.default_rng(7)
    docs = clustered_docs(rng, 300)
    docs[EMPTY_ROW] = docs[EMPTY_ROW][:0]
    folder = write_index(tmp_path_factory.mktemp("plain") / "index", docs, shard_rows=100, batch_rows=25)
    compress_index(folder, nbits=2, centroids=64)
    return folder, docs, queries_from(rng, docs, 12)


@pytest.fixture(scope="module")
def dropped(plain, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dropped") / "index"
    shutil.copytree(plain[0], folder)
    summary = compress_index(folder, drop_vectors=True)
    assert summary.vectors == "dropped" and summary.coded_tokens == 0
    return folder


def shard_columns(folder: Path) -> list[pa.Table]:
    return [pa.ipc.open_file(pa.memory_map(str(folder / s["file"]))).read_all() for s in manifest(folder)["shards"]]


def code_entries(folder: Path) -> list[dict]:
    """The structure's per-shard entries without the data shard's file name (numbers differ between runs)."""
    return [{k: v for k, v in entry.items() if k != "shard"} for entry in manifest(folder)["search"]["shards"]]


def code_bytes(folder: Path) -> list[bytes]:
    return [(folder / entry["file"]).read_bytes() for entry in manifest(folder)["search"]["shards"]]


# ---------------------------------------------------------------------------------------------- the drop


def test_drop_keeps_rows_and_codes_and_frees_the_vectors(plain, dropped):
    before, after = manifest(plain[0]), manifest(dropped)
    assert after["search"]["vectors"] == "dropped" and "vectors" not in before["search"]
    assert [s["tokens"] for s in after["shards"]] == [s["tokens"] for s in before["shards"]]  # never 0 tokens
    assert after["totals"]["tokens"] == before["totals"]["tokens"]
    assert after["search"]["codec"] == before["search"]["codec"]
    assert code_bytes(dropped) == code_bytes(plain[0])  # the codes, byte for byte, under the new shards' names
    for old, new in zip(shard_columns(plain[0]), shard_columns(dropped)):
        assert "embeddings" not in new.column_names
        assert new.column_names == [name for name in old.column_names if name != "embeddings"]
        assert new.column("id").equals(old.column("id")) and new.column("token_ids").equals(old.column("token_ids"))
    shard_bytes = [sum(s["bytes"] for s in m["shards"]) for m in (before, after)]
    assert shard_bytes[1] < shard_bytes[0] / 4
    listed = {Path(s["file"]).name for s in after["shards"]}
    assert {p.name for p in (dropped / "data").iterdir()} == listed  # the shards with vectors are gone
    assert set(structure_files(dropped)) == {Path(e["file"]).name for e in after["search"]["shards"]} | {
        Path(after["search"]["codec"]["file"]).name}
    index = open_index(dropped)
    index.verify()
    previous = PreviousIndex(index)
    assert [len(previous.token_ids(row)) for row in range(len(plain[1]))] == [len(d) for d in plain[1]]
    with pytest.raises(VectorsDroppedError, match="drop-vectors"):
        previous.vectors(0)


def test_search_reranks_from_the_decoded_codes(plain, dropped):
    folder, docs, queries = plain
    index, structure = open_searchable(folder)
    expected = plaid_search(index, structure, queries, 10, rerank="codes")
    got = search_vectors(dropped, queries, top_k=10)
    assert [[(h.id, h.score) for h in hits] for hits in got] == expected
    everything = search_vectors(dropped, queries[:3], top_k=len(docs), probe=64, candidates=len(docs))
    assert f"d{EMPTY_ROW}" not in {h.id for hits in everything for h in hits}  # no tokens: in no list
    assert all(len(hits) == len(docs) - 1 for hits in everything)


def test_every_reader_of_vectors_refuses(plain, dropped, tmp_path, cli):
    name = str(dropped)
    for call in (
        lambda: search_vectors(dropped, plain[2][:1], exact=True),
        lambda: search_vectors(open_index(dropped), plain[2][:1], exact=True),
        lambda: scan(open_index(dropped), plain[2][:1], 5),
        lambda: load_document(dropped, "d1"),
        lambda: export_index(dropped, tmp_path / "out"),
    ):
        with pytest.raises(VectorsDroppedError, match="compress --drop-vectors") as caught:
            call()
        assert name in str(caught.value)
    before = manifest(dropped)
    for args in (["score", "--query", "x", dropped, "--exact"], ["export", dropped, "--to", tmp_path / "x", "--format", "parquet"],
                 ["compress", dropped, "--retrain"], ["compress", dropped, "--nbits", 4],
                 ["compress", dropped, "--centroids", 32]):
        result = cli(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "--drop-vectors" in result.stderr and name in result.stderr
    assert manifest(dropped) == before and not (tmp_path / "x").exists()
    again = cli("compress", dropped, "--drop-vectors", "--log-format", "json")  # nothing left to drop: kept as it is
    assert again.exit_code == 0 and json.loads(again.stdout)["vectors"] == "dropped"
    assert manifest(dropped)["shards"] == before["shards"] and code_bytes(dropped) == code_bytes(plain[0])


def test_drift_keeps_the_centroids_of_a_compressed_only_index(dropped, tmp_path, cli):
    folder = tmp_path / "index"
    shutil.copytree(dropped, folder)
    data = manifest(folder)
    data["search"]["drift"]["share_coded_since_training"] = 0.9  # past RETRAIN_SHARE: new centroids are due
    write_manifest(folder, data)
    result = cli("compress", folder)
    assert result.exit_code == 0, result.output
    assert "keeping the current ones" in result.stderr
    assert manifest(folder)["search"]["codec"] == data["search"]["codec"] and code_bytes(folder) == code_bytes(dropped)


@pytest.mark.parametrize("kill_at", ["drop:2", "commit"])
def test_sigkill_during_the_drop_then_rerun_gives_the_same_bytes(plain, dropped, tmp_path, kill_at):
    folder = tmp_path / "index"
    shutil.copytree(plain[0], folder)
    killed = tokembed("compress", folder, "--drop-vectors", env={"TOKEMBED_TEST_KILL_AT": kill_at})
    assert killed.returncode == -signal.SIGKILL
    assert manifest(folder) == manifest(plain[0])  # the generation with vectors is still the committed one
    open_index(folder).verify()
    rerun = tokembed("compress", folder, "--drop-vectors")
    assert rerun.returncode == 0, rerun.stderr
    assert ("3 kept from an interrupted run" if kill_at == "commit" else "2 kept from an interrupted run") in rerun.stderr
    assert [s["sha256"] for s in manifest(folder)["shards"]] == [s["sha256"] for s in manifest(dropped)["shards"]]
    assert code_entries(folder) == code_entries(dropped)
    assert structure_files(folder) == structure_files(dropped)
    assert len(list((folder / "data").iterdir())) == len(manifest(folder)["shards"])  # half-done shards removed


def test_a_killed_drop_then_a_plain_compress_leaves_no_shard_behind(plain, tmp_path):
    """The killed drop's shards without vectors were left in data/ by a plain compress's commit (nothing would
    ever resume from them: its pending record is gone)."""
    folder = tmp_path / "index"
    shutil.copytree(plain[0], folder)
    killed = tokembed("compress", folder, "--drop-vectors", env={"TOKEMBED_TEST_KILL_AT": "drop:2"})
    assert killed.returncode == -signal.SIGKILL
    rerun = tokembed("compress", folder)
    assert rerun.returncode == 0, rerun.stderr
    listed = {Path(shard["file"]).name for shard in manifest(folder)["shards"]}
    assert {file.name for file in (folder / "data").iterdir()} == listed
    open_index(folder).verify()


@pytest.mark.parametrize("flags", [[], ["--drop-vectors"]])
def test_a_drop_killed_after_its_commit_leaves_shards_that_the_next_compress_removes(plain, tmp_path, flags):
    """The shards with vectors a drop had replaced (the space it frees) stayed on disk for good: a compress of
    the compressed-only index removed only what a pending record named, which lists the new shards."""
    folder = tmp_path / "index"
    shutil.copytree(plain[0], folder)
    killed = tokembed("compress", folder, "--drop-vectors", env={"TOKEMBED_TEST_KILL_AT": "committed"})
    assert killed.returncode == -signal.SIGKILL and manifest(folder)["search"]["vectors"] == "dropped"
    assert len(list((folder / "data").iterdir())) == 2 * len(manifest(folder)["shards"])
    rerun = tokembed("compress", folder, *flags)
    assert rerun.returncode == 0, rerun.stderr
    listed = {Path(shard["file"]).name for shard in manifest(folder)["shards"]}
    assert {file.name for file in (folder / "data").iterdir()} == listed
    assert not (folder / "plaid" / "drop-pending.json").exists()
    open_index(folder).verify()


def test_a_compress_of_a_compressed_only_index_keeps_the_shards_an_interrupted_encode_journaled(dropped, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(dropped, folder)
    journaled = folder / "data" / "part-000900.arrow"  # a finished shard of an encode stopped before its commit
    shutil.copyfile(folder / manifest(folder)["shards"][0]["file"], journaled)
    (folder / "run-journal.json").write_text(json.dumps({"shards": [{"file": "data/part-000900.arrow"}]}))
    stray = folder / "data" / "part-000901.arrow"
    shutil.copyfile(journaled, stray)
    compress_index(folder)
    assert journaled.exists() and not stray.exists()


@pytest.mark.parametrize("damage", ["altered", "deleted"])
def test_a_damaged_code_file_of_a_compressed_only_index_is_kept_and_named(dropped, tmp_path, damage):
    """compress deleted the committed file, then failed with "this shard holds no vectors" (exit 2); a deleted one
    got that message, naming the shard, until this release."""
    folder = tmp_path / "index"
    shutil.copytree(dropped, folder)
    before = manifest(folder)
    damaged = folder / before["search"]["shards"][1]["file"]
    data = bytearray(damaged.read_bytes())
    data[-3] ^= 0xFF
    if damage == "altered":
        damaged.write_bytes(bytes(data))
    else:
        damaged.unlink()
    result = tokembed("compress", folder)
    assert result.returncode == 6, result.stderr
    assert damaged.name in result.stderr and "holds no vectors" in result.stderr and "--full" in result.stderr
    assert ("sha256 does not match" if damage == "altered" else "which is missing") in result.stderr
    assert manifest(folder) == before
    assert (damaged.read_bytes() == bytes(data)) if damage == "altered" else not damaged.exists()


def test_a_damaged_shard_of_a_compressed_only_index_is_refused_before_its_ids_are_read(plain, dropped, tmp_path):
    """The search read the hits' ids from the vectorless shards unchecked: one id byte flipped returned an id the
    index does not hold. Those small shards are hashed with the code files now (once per change of the file)."""
    folder = tmp_path / "index"
    shutil.copytree(dropped, folder)
    everything = {"top_k": 300, "probe": 64, "candidates": 300}
    assert {h.id for h in search_vectors(folder, plain[2][:1], **everything)[0]} >= {"d150"}  # matched: recorded
    shard = folder / manifest(folder)["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[data.index(b"d150")] ^= 0x01  # the id "e150"
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match=f"{shard}: sha256 does not match the manifest"):
        search_vectors(folder, plain[2][:1], **everything)


# ---------------------------------------------------------------------------------------------- cron


@pytest.mark.parametrize("vectors", ["unit", "pooled", "not normalized"])
def test_an_encode_rerun_stays_compressed_only_and_equals_dropping_a_normal_run(tmp_path, cli, checkpoint, vectors):
    """Pooled and un-normalized vectors are not unit length: their codes keep each vector's length, carried and
    coded alike (the same bytes either way)."""
    model = checkpoint("pylate_bert")
    first = write_parquet(tmp_path / "v1.parquet", corpus_rows(40))
    second = write_parquet(tmp_path / "v2.parquet", edited(corpus_rows(40)))
    kind = {"unit": [], "pooled": ["--pool-factor", 2], "not normalized": ["--no-normalize"]}[vectors]
    common = ["--model", model, "--shard-rows", 10, "-q", *kind]
    normal, compact, oneshot = tmp_path / "normal", tmp_path / "compact", tmp_path / "oneshot"
    assert cli("encode", first, "-o", normal, "--nbits", 2, *common).exit_code == 0
    shutil.copytree(normal, compact)
    assert cli("compress", compact, "--drop-vectors").exit_code == 0
    assert cli("encode", first, "-o", oneshot, "--nbits", 2, "--drop-vectors", *common).exit_code == 0
    assert code_entries(oneshot) == code_entries(compact) and structure_files(oneshot) == structure_files(compact)
    before = manifest(compact)
    for flags in (["--retrain"], ["--nbits", 4]):  # need new centroids, hence vectors: refused before encoding
        refused = cli("encode", second, "-o", compact, *common, *flags)
        assert refused.exit_code == 2 and "--drop-vectors" in refused.stderr and "--full" in refused.stderr
    assert manifest(compact) == before

    assert cli("encode", second, "-o", normal, *common).exit_code == 0  # the reference: a normal cron run ...
    assert cli("compress", normal, "--drop-vectors").exit_code == 0  # ... whose vectors are then dropped
    assert cli("encode", second, "-o", compact, *common).exit_code == 0  # the cron run on a compressed-only index
    got, want = manifest(compact), manifest(normal)
    assert got["search"]["vectors"] == "dropped" and got["search"]["codec"] == before["search"]["codec"]
    assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in want["shards"]]
    assert code_entries(compact) == code_entries(normal) and structure_files(compact) == structure_files(normal)
    assert got["totals"] == want["totals"] and got["stats"]["added"] > 0 and got["stats"]["updated"] > 0
    run = got["search"]["last_run"]
    assert 0 < run["coded_tokens"] < run["carried_tokens"]
    assert got["search"]["drift"]["tokens_coded_since_training"] == want["search"]["drift"]["tokens_coded_since_training"]
    assert all("embeddings" not in table.column_names for table in shard_columns(compact))

    info = cli("info", compact, "--json")
    assert info.exit_code == 0, info.output
    facts = json.loads(info.stdout)
    parts = facts["bytes_per_token_by_part"]
    assert facts["vectors"] == "dropped" and parts["vectors"] == 0
    assert parts["total"] == pytest.approx(parts["shards_without_vectors"] + parts["search_structure"] + parts["manifest"], abs=0.01)
    per_token = facts["search_structure"]["bytes_per_token"]
    assert per_token["residuals"] == pytest.approx(facts["dim"] * 2 / 8)
    assert per_token.get("vector_norms", 0) == (0 if vectors == "unit" else 2)
    assert ("vector_norms" in got["search"]) == (vectors != "unit")
    assert "dropped by `tokembed compress --drop-vectors`" in cli("info", compact).stdout
    hits = cli("score", "--query", "alpha beta gamma", compact, "--format", "jsonl", "-k", "3")
    assert hits.exit_code == 0, hits.output
    assert len(hits.stdout.splitlines()) == 3


@pytest.mark.parametrize("kind", [["--pool-factor", 2], ["--no-normalize"]], ids=["pooled", "not normalized"])
def test_compressed_only_scores_keep_the_vectors_lengths(tmp_path, cli, checkpoint, kind):
    """Decoded codes are unit vectors; pooled means and un-normalized vectors are not: their scores came back as
    of unit vectors (7x too low un-normalized, rankings changed), exit 0. Probing every centroid, the
    compressed-only scores now differ from the exact ones by the codes' rounding alone."""
    corpus = write_parquet(tmp_path / "docs.parquet", corpus_rows(40))
    folder = tmp_path / "index"
    common = ["--model", checkpoint("pylate_bert"), "-q", *kind]
    assert cli("encode", corpus, "-o", folder, *common).exit_code == 0
    assert cli("compress", folder, "--nbits", 4, "--centroids", 16).exit_code == 0
    queries = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]

    def top_scores(*flags):
        result = cli("score", folder, *[arg for q in queries for arg in ("--query", q)], "-k", 5, "-f", "jsonl", *flags)
        assert result.exit_code == 0, result.stderr
        return np.array([row["score"] for row in map(json.loads, result.stdout.splitlines())])

    exact = top_scores("--exact")
    assert cli("compress", folder, "--drop-vectors").exit_code == 0
    decoded = top_scores("--probe", 16, "--candidates", 1000)
    assert np.abs(decoded - exact).max() <= 0.03 * np.abs(exact).max()


def test_an_earlier_releases_unit_length_codes_of_pooled_vectors_are_refused(tmp_path, cli, checkpoint, monkeypatch):
    """A compressed-only pooled index whose codes keep no lengths (as an earlier release wrote them) would score
    wrong, and its vectors are gone: score, compress and a cron encode refuse it, naming `encode --full`; with
    its vectors kept, compress codes it again with the lengths."""
    from tokembed.search.plaid import codec as codec_mod

    corpus = write_parquet(tmp_path / "docs.parquet", corpus_rows(20))
    common = ["--model", checkpoint("pylate_bert"), "-q", "--pool-factor", 2]
    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    monkeypatch.setattr(codec_mod, "needs_vector_norms", lambda manifest: False)  # the earlier release
    assert cli("encode", corpus, "-o", kept, "--nbits", 2, *common).exit_code == 0
    shutil.copytree(kept, dropped)
    assert cli("compress", dropped, "--drop-vectors").exit_code == 0
    monkeypatch.undo()
    for args in (["score", dropped, "--query", "alpha"], ["compress", dropped], ["encode", corpus, "-o", dropped, *common]):
        refused = cli(*args)
        assert refused.exit_code == 2 and "earlier release" in refused.stderr and "--full" in refused.stderr, args
    assert "vector_norms" not in manifest(kept)["search"]
    assert cli("compress", kept).exit_code == 0
    assert manifest(kept)["search"]["vector_norms"] is True


@pytest.mark.slow  # a real encode subprocess (torch import, model load): ~7 s on 2 idle cores
def test_sigkill_during_an_encode_rerun_on_a_compressed_only_index_then_rerun(tmp_path, cli, checkpoint):
    model = checkpoint("pylate_bert")
    first = write_parquet(tmp_path / "v1.parquet", corpus_rows(40))
    second = write_parquet(tmp_path / "v2.parquet", edited(corpus_rows(40)))
    common = ["--model", model, "--shard-rows", 10, "-q"]
    reference, folder = tmp_path / "reference", tmp_path / "index"
    assert cli("encode", first, "-o", reference, "--nbits", 2, "--drop-vectors", *common).exit_code == 0
    shutil.copytree(reference, folder)
    assert cli("encode", second, "-o", reference, *common).exit_code == 0
    killed = tokembed("encode", second, "-o", folder, *common, env={"TOKEMBED_TEST_KILL_AT": "shard:2"})
    assert killed.returncode == -signal.SIGKILL
    assert "vectors" in manifest(folder)["search"] and len(list((folder / "data").glob("part-*"))) > 4
    resumed = cli("encode", second, "-o", folder, *common[:-1], "--log-format", "json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["resumed_shards"] == 2  # shards and code files of the killed run kept
    assert [s["sha256"] for s in manifest(folder)["shards"]] == [s["sha256"] for s in manifest(reference)["shards"]]
    assert code_entries(folder) == code_entries(reference) and structure_files(folder) == structure_files(reference)
    got, want = manifest(folder)["search"], manifest(reference)["search"]  # the killed run's shards count as coded
    assert got["drift"] == want["drift"] and got["last_run"] == want["last_run"]


def test_a_compressed_only_manifest_is_format_version_2_which_older_readers_refuse(plain, dropped, monkeypatch):
    from tokembed.errors import IndexCorruptError
    from tokembed.index import reader

    assert manifest(plain[0])["format_version"] == 1 and manifest(dropped)["format_version"] == 2
    monkeypatch.setattr(reader, "READABLE_VERSIONS", (1,))  # a tokembed from before --drop-vectors
    with pytest.raises(IndexCorruptError, match="format_version 2"):
        open_index(dropped)
    open_index(plain[0])  # an index with vectors stays readable by it


@pytest.mark.parametrize("drop, nbits_every_run", [(True, False), (False, False), (False, True)])
def test_an_empty_generation_remembers_the_structure_and_the_next_run_builds_it_again(tmp_path, cli, checkpoint, drop,
                                                                                      nbits_every_run):
    """``nbits_every_run``: the cron line carries --nbits; the empty night must not keep the old centroids either."""
    model = checkpoint("pylate_bert")
    rows = write_parquet(tmp_path / "rows.parquet", corpus_rows(30))
    empty = write_parquet(tmp_path / "empty.parquet", [])
    common = ["--model", model, "--shard-rows", 10, "-q", *(["--nbits", 2] if nbits_every_run else [])]
    folder = tmp_path / "index"
    assert cli("encode", rows, "-o", folder, "--nbits", 2, *(["--drop-vectors"] if drop else []), *common).exit_code == 0
    for _ in range(2):  # a night with no input, twice: no rows, no structure, but how it was asked for is kept
        assert cli("encode", empty, "-o", folder, *common).exit_code == 0
        got = manifest(folder)
        assert got["totals"]["tokens"] == 0 and not got.get("search")
        assert got["search_settings"] == {"nbits": 2, "drop_vectors": drop}
    other = write_parquet(tmp_path / "other.parquet", corpus_rows(20, version=2))
    assert cli("encode", other, "-o", folder, *common).exit_code == 0  # rows again: the structure is built again
    got = manifest(folder)
    assert got["search"]["nbits"] == 2 and "search_settings" not in got
    assert got["search"]["training"]["index_tokens"] == got["totals"]["tokens"]  # trained on these rows
    assert (got["search"].get("vectors") == "dropped") is drop and got["format_version"] == (2 if drop else 1)
    assert all(("embeddings" in table.column_names) is not drop for table in shard_columns(folder))


@pytest.mark.parametrize("rebuild", [["--full"], ["--max-length", 64]])
def test_an_index_that_was_only_ever_empty_keeps_its_structure_settings_through_a_full_rebuild(tmp_path, cli, checkpoint,
                                                                                              rebuild):
    """The first night had no rows (so no plaid/ folder yet); the next night's run was a full rebuild (--full, or a
    changed setting), which read the settings of no previous index: the index came back with vectors and no
    structure, and its search_settings were lost for good."""
    model = checkpoint("pylate_bert")
    empty = write_parquet(tmp_path / "empty.parquet", [])
    rows = write_parquet(tmp_path / "rows.parquet", corpus_rows(30))
    folder = tmp_path / "index"
    assert cli("encode", empty, "-o", folder, "--model", model, "--nbits", 2, "--drop-vectors", "-q").exit_code == 0
    assert manifest(folder)["search_settings"] == {"nbits": 2, "drop_vectors": True}
    result = cli("encode", rows, "-o", folder, "--model", model, "--shard-rows", 10, "-q", *rebuild)
    assert result.exit_code == 0, result.output
    got = manifest(folder)
    assert got["search"]["nbits"] == 2 and got["search"].get("vectors") == "dropped" and "search_settings" not in got
    assert not any("embeddings" in table.column_names for table in shard_columns(folder))


def test_a_compressed_only_index_whose_codes_keep_lengths_is_version_3_and_mixed_code_files_are_refused(
        tmp_path, cli, checkpoint, monkeypatch):
    """A release reading versions 1 and 2 decoded every code to unit length: it must refuse a pooled compressed-only
    index (wrong scores, then a cron run writing code files without lengths). Such code files beside a codec that
    keeps lengths (what that cron run left) are refused by score as encode and compress refuse them (exit 2,
    `encode --full`), not as a corrupt index."""
    from tokembed.errors import IndexCorruptError
    from tokembed.index import reader
    from tokembed.search.plaid import codes as codes_mod

    corpus = write_parquet(tmp_path / "docs.parquet", corpus_rows(20))
    folder = tmp_path / "pooled"
    assert cli("encode", corpus, "-o", folder, "--model", checkpoint("pylate_bert"), "-q", "--pool-factor", 2,
               "--nbits", 2, "--drop-vectors").exit_code == 0
    assert manifest(folder)["format_version"] == 3 and manifest(folder)["search"]["vector_norms"] is True
    assert cli("score", folder, "--query", "alpha").exit_code == 0
    with monkeypatch.context() as patch:
        patch.setattr(reader, "READABLE_VERSIONS", (1, 2))  # the release before the lengths
        with pytest.raises(IndexCorruptError, match="format_version 3"):
            open_index(folder)
    opened = codes_mod.ShardCodes.open
    monkeypatch.setattr(codes_mod.ShardCodes, "open", classmethod(
        lambda cls, *args: dataclasses.replace(opened(*args), vector_norms=None)))  # code files without lengths
    refused = cli("score", folder, "--query", "alpha")
    assert refused.exit_code == 2 and "earlier release" in refused.stderr and "--full" in refused.stderr
