"""The PLAID-style search structure (``tokembed compress``, ``encode --nbits``, ``score`` with candidates).

Synthetic indexes (written with ``IndexWriter``, no model) for the codec and the search; the demo model
in-process for the cron guarantees (incremental codes = a full rebuild's, byte for byte) and real
subprocesses for SIGKILL and resume.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from helpers import manifest, write_manifest, write_parquet
from plaid_support import DIM, clustered_docs, corpus_rows, edited, recall, structure_files, tokembed
from test_score import write_index
from tokembed.errors import IndexCorruptError
from tokembed.index.lock import IndexLock
from tokembed.search import search_vectors
from tokembed.search.plaid import compress_index, open_searchable, plaid_search
from tokembed.search.plaid.codec import Codec, train

# ---------------------------------------------------------------------------------------------- search


def test_candidate_search_recall_against_exact(compressed):
    folder, docs, queries = compressed
    index, structure = open_searchable(folder)
    exact = search_vectors(index, queries, top_k=10, exact=True)
    got = plaid_search(index, structure, queries, 10, probe=16, candidates=64)
    assert recall(exact, got, 10) >= 0.95
    first = got[0][0]
    assert first[1] == pytest.approx(next(h.score for h in exact[0] if h.id == first[0]), abs=1e-5)  # re-ranked exactly
    compressed_only = plaid_search(index, structure, queries, 10, probe=16, candidates=64, rerank="codes")
    assert recall(exact, compressed_only, 10) >= 0.7


def test_everything_probed_equals_the_exhaustive_scan(compressed):
    folder, docs, queries = compressed
    index, structure = open_searchable(folder)
    exact = search_vectors(index, queries, top_k=15, exact=True)
    got = search_vectors(index, queries, top_k=15, probe=structure.codec.k, candidates=len(docs))
    for e, g in zip(exact, got):
        assert [h.id for h in g] == [h.id for h in e]
        assert [h.score for h in g] == pytest.approx([h.score for h in e], abs=1e-5)


def test_probe_or_candidates_with_exact_are_said_to_be_unused_and_candidates_below_top_k_rerank_top_k(compressed,
                                                                                                   caplog):
    folder, _, queries = compressed
    with caplog.at_level("WARNING", logger="tokembed"):
        search_vectors(folder, queries[:1], top_k=5, exact=True, candidates=1)
        assert [r.getMessage() for r in caplog.records] == ["--candidates not used: --exact scans every document"]
        caplog.clear()
        fewer = search_vectors(folder, queries[:1], top_k=5, candidates=1)  # as --help says: top-k are re-ranked
        assert caplog.records == [] and len(fewer[0]) == 5
    assert fewer == search_vectors(folder, queries[:1], top_k=5, candidates=5)


def test_reranking_from_codes_scores_the_decoded_unit_vectors(compressed):
    from tokembed.search.plaid.codes import StoredCodes

    folder, docs, queries = compressed
    index, structure = open_searchable(folder)
    codes = StoredCodes(folder, manifest(folder)["search"]["shards"])
    decoded = [structure.codec.decode(*codes.row_codes(row)) for row in range(len(docs))]
    got = plaid_search(index, structure, queries, 10, probe=structure.codec.k, candidates=len(docs), rerank="codes")
    for q, hits in zip(queries, got):  # the fixture's ids: d0, d1, ... in index order
        scores = np.array([(q @ d.T).max(axis=1).sum() if len(d) else -np.inf for d in decoded])
        best = np.lexsort((np.arange(len(docs)), -scores))[:10]
        assert [score for _, score in hits] == pytest.approx(scores[best].tolist(), abs=1e-5)
        assert {doc for doc, _ in hits} <= {f"d{row}" for row in np.flatnonzero(scores >= scores[best[-1]] - 1e-5)}


def test_copying_many_rows_codes_at_once_equals_them_row_by_row(compressed):
    from tokembed.errors import IndexCorruptError
    from tokembed.search.plaid.codes import StoredCodes

    folder = compressed[0]
    codes = StoredCodes(folder, manifest(folder)["search"]["shards"])
    # out of order, repeated, across the three shards and their edges; runs of neighbours (198-201 spans a shard
    # edge) and gaps between the targets, which must not be bridged
    rows = np.array([450, 3, 3, 198, 199, 200, 201, 0, 599, 598, 10, 11, 12])
    one_by_one = [codes.row_codes(row) for row in rows.tolist()]
    lengths = np.array([len(row_ids) for row_ids, _ in one_by_one])
    gaps = np.zeros(len(rows), np.int64)
    gaps[[5, 10]] = 7  # free tokens before those rows' targets
    to = np.cumsum(np.concatenate([[0], lengths[:-1]])) + np.cumsum(gaps)
    total = int(to[-1] + lengths[-1])
    ids = np.full(total, 9999, np.uint16)
    residuals = np.full((total, one_by_one[0][1].shape[1]), 77, np.uint8)
    codes.copy_rows_into(rows, lengths, to, ids, residuals)
    for (row_ids, row_residuals), start, length in zip(one_by_one, to.tolist(), lengths.tolist()):
        assert np.array_equal(ids[start : start + length], row_ids)
        assert np.array_equal(residuals[start : start + length], row_residuals)
    untouched = np.ones(total, bool)
    for start, length in zip(to.tolist(), lengths.tolist()):
        untouched[start : start + length] = False
    assert untouched.sum() == 14 and (ids[untouched] == 9999).all() and (residuals[untouched] == 77).all()
    lengths[4] += 1  # a row whose token count changed cannot have its codes carried
    with pytest.raises(IndexCorruptError, match="code count"):
        codes.copy_rows_into(rows, lengths, to, ids, residuals)


def test_coding_a_shard_writes_the_stored_codes_and_refuses_a_wrong_token_count(compressed):
    from tokembed.search.maxsim import shard_batches
    from tokembed.search.plaid.codes import CodingStats, code_shard

    folder = compressed[0]
    index, structure = open_searchable(folder)
    shard = index.shards[0]
    codes = code_shard(structure.codec, shard_batches(index, shard), None, CodingStats(), shard["tokens"])
    assert np.array_equal(codes.residuals, structure.shards[0].residuals)
    assert np.array_equal(codes.centroid_ids, structure.shards[0].centroid_ids[0 : shard["tokens"]])
    for wrong in (shard["tokens"] - 1, shard["tokens"] + 1):
        with pytest.raises(IndexCorruptError, match=rf"part-\d+\.arrow: holds .*tokens.* {wrong}"):
            code_shard(structure.codec, shard_batches(index, shard), None, CodingStats(), wrong, str(index.shard_path(shard)))


def test_a_reader_keeps_its_generation_while_compress_replaces_it(compressed, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(compressed[0], folder)
    queries = compressed[2]
    import torch  # noqa: F401  (compress imports it; the search's products run in torch once it is imported,
    # numpy's before: another float32 summation order, a last-bit difference this test is not about)

    index, structure = open_searchable(folder)
    before = plaid_search(index, structure, queries, 5)
    compress_index(folder, nbits=1, centroids=128)  # a new generation; the old files are deleted
    assert plaid_search(index, structure, queries, 5) == before
    assert manifest(folder)["search"]["nbits"] == 1


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_exit_codes(compressed, tmp_path, cli):
    empty = write_index(tmp_path / "empty", [])
    assert cli("compress", empty).exit_code == 3
    small = write_index(tmp_path / "small", [np.eye(DIM, dtype=np.float16)[:5]])
    result = cli("compress", small, "--centroids", 16)
    assert result.exit_code == 2 and "only 5 tokens" in result.stderr
    assert cli("compress", small, "--nbits", 3).exit_code == 2
    assert cli("compress", tmp_path / "nowhere").exit_code == 6
    with IndexLock(small):
        assert cli("compress", small).exit_code == 7
    assert "search" not in manifest(small)
    assert cli("compress", small, "--centroids", 4).exit_code == 0
    assert manifest(small)["search"]["centroids"] == 4


def test_altered_or_missing_code_file_is_index_corruption(compressed, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(compressed[0], folder)
    entry = manifest(folder)["search"]["shards"][1]
    path = folder / entry["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="sha256"):
        open_searchable(folder)
    result = tokembed("score", "--query", "x", folder)
    assert result.returncode == 6, result.stderr
    path.unlink()
    with pytest.raises(IndexCorruptError, match="missing"):
        open_searchable(folder)


# ---------------------------------------------------------------------------------------------- cron


@pytest.mark.slow  # five in-process encodes and four score/info runs with the demo model (~40 s on 2 idle cores)
def test_incremental_codes_equal_a_full_rebuild_byte_for_byte(tmp_path, cli):
    first = write_parquet(tmp_path / "v1.parquet", corpus_rows(80))
    second = write_parquet(tmp_path / "v2.parquet", edited(corpus_rows(80)))
    out = tmp_path / "index"
    result = cli("encode", first, "-o", out, "--shard-rows", 10, "--nbits", 2, "-q")
    assert result.exit_code == 0, result.output
    v1 = manifest(out)["search"]
    assert v1["drift"]["tokens_coded_since_training"] == 0
    result = cli("encode", second, "-o", out, "--shard-rows", 10, "-q")
    assert result.exit_code == 0, result.output
    v2 = manifest(out)["search"]
    assert v2["codec"] == v1["codec"]  # same centroids
    kept = {e["file"] for e in v1["shards"]} & {e["file"] for e in v2["shards"]}
    assert kept  # the shards before the first edit did not change: their code files stay
    assert 0 < v2["last_run"]["coded_tokens"] < v2["last_run"]["carried_tokens"]
    assert v2["drift"]["tokens_coded_since_training"] == v2["last_run"]["coded_tokens"]
    assert 0 < v2["drift"]["share_coded_since_training"] < 1
    recoded = tmp_path / "recoded"  # the same shards, every row coded from scratch with the same centroids
    shutil.copytree(out, recoded)
    stripped = manifest(recoded)
    stripped["search"]["shards"] = []
    write_manifest(recoded, stripped)
    for entry in v2["shards"]:
        (recoded / entry["file"]).unlink()
    summary = compress_index(recoded)
    assert summary.carried_tokens == 0 and manifest(recoded)["search"]["codec"] == v1["codec"]
    assert manifest(recoded)["search"]["shards"] == v2["shards"]
    assert structure_files(recoded) == structure_files(out)
    assert set(structure_files(out)) == {Path(e["file"]).name for e in v2["shards"]} | {Path(v2["codec"]["file"]).name}
    # A full re-encode: shards it writes byte-identical keep their code files; the others are coded again
    # (re-encoded rows may differ from the carried ones in the last bits: another batch composition). Rows coded
    # to the codes they had count as carried: the drift grows only by the others.
    rebuild = tmp_path / "rebuild"
    shutil.copytree(out, rebuild)
    assert cli("encode", second, "-o", rebuild, "--shard-rows", 10, "--full", "-q").exit_code == 0
    rebuilt = manifest(rebuild)["search"]
    assert rebuilt["codec"] == v1["codec"]
    same_shards = {s["sha256"] for s in manifest(rebuild)["shards"]} & {s["sha256"] for s in manifest(out)["shards"]}
    assert 3 <= len(same_shards) < len(v2["shards"])
    recoded_tokens = sum(s["tokens"] for s in manifest(rebuild)["shards"] if s["sha256"] not in same_shards)
    assert rebuilt["last_run"]["coded_tokens"] < recoded_tokens
    drift = rebuilt["drift"]["tokens_coded_since_training"]
    assert drift == v2["drift"]["tokens_coded_since_training"] + rebuilt["last_run"]["coded_tokens"]
    for entry in rebuilt["shards"]:
        if (out / entry["file"]).is_file():
            assert (rebuild / entry["file"]).read_bytes() == (out / entry["file"]).read_bytes()
    check_score_and_info(cli, out)


def check_score_and_info(cli, folder: Path) -> None:
    """``score`` searches with the structure; ``--exact`` scans; with every centroid probed and every document
    a candidate the two agree. ``info`` reports the structure's bytes per token by part."""
    query = ["--query", "alpha beta gamma", "--query", "kappa mu", "--format", "jsonl", "-k", "5"]
    everything = cli("score", *query, folder, "--probe", 65536, "--candidates", 100000)
    exact = cli("score", *query, folder, "--exact")
    assert everything.exit_code == 0 and exact.exit_code == 0, everything.output + exact.output
    hits = [json.loads(line) for line in everything.stdout.splitlines()]
    expected = [json.loads(line) for line in exact.stdout.splitlines()]
    assert [h["doc_id"] for h in hits] == [h["doc_id"] for h in expected] and len(hits) == 10
    assert [h["score"] for h in hits] == pytest.approx([h["score"] for h in expected], abs=1e-4)
    assert cli("score", *query, folder, "--probe", 0).exit_code == 2
    info = cli("info", folder, "--json")
    assert info.exit_code == 0, info.output
    facts = json.loads(info.stdout)["search_structure"]
    parts, dim = facts["bytes_per_token"], json.loads(info.stdout)["dim"]
    bits = (facts["centroids"] - 1).bit_length()  # ids packed that narrow (2 padding bytes per code file)
    assert facts["nbits"] == 2 and bits < 16 and bits / 8 <= parts["centroid_ids"] < bits / 8 + 0.05
    assert parts["residuals"] == pytest.approx(dim * 2 / 8)
    assert parts["total"] > parts["centroid_ids"] + parts["residuals"] + parts["inverted_lists"]


def test_retrain_and_nbits_change_train_new_centroids(tmp_path, cli):
    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(40))
    out = tmp_path / "index"
    refused = cli("encode", corpus, "-o", out, "--retrain", "-q")  # no structure to retrain: was silently ignored
    assert refused.exit_code == 2 and "has no search structure" in refused.stderr and not out.exists()
    assert cli("encode", corpus, "-o", out, "-q").exit_code == 0
    assert cli("encode", corpus, "-o", out, "--retrain", "-q").exit_code == 2
    assert cli("encode", corpus, "-o", out, "--nbits", 1, "-q").exit_code == 0
    codec = manifest(out)["search"]["codec"]["file"]
    assert cli("encode", corpus, "-o", out, "--retrain", "-q").exit_code == 0
    assert manifest(out)["search"]["nbits"] == 1
    assert cli("encode", corpus, "-o", out, "--nbits", 4, "-q").exit_code == 0
    assert manifest(out)["search"]["nbits"] == 4 and manifest(out)["search"]["codec"]["file"] != codec
    assert cli("encode", corpus, "-o", out, "--nbits", 3, "-q").exit_code == 2


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["codes:2", "commit"])
def test_sigkill_during_compress_then_rerun_gives_the_same_bytes(compressed, tmp_path, kill_at):
    reference, folder = tmp_path / "reference", tmp_path / "index"
    for target in (reference, folder):
        shutil.copytree(compressed[0], target)
    assert tokembed("compress", reference, "--nbits", 4, "--centroids", 128).returncode == 0
    killed = tokembed("compress", folder, "--nbits", 4, "--centroids", 128, env={"TOKEMBED_TEST_KILL_AT": kill_at})
    assert killed.returncode == -signal.SIGKILL
    assert manifest(folder)["search"]["nbits"] == 2  # the previous generation is still the committed one
    written = {path: path.stat().st_mtime_ns for path in (folder / "plaid").glob("codes-*.safetensors")}
    rerun = tokembed("compress", folder, "--nbits", 4, "--centroids", 128, "--log-format", "json")
    assert rerun.returncode == 0, rerun.stderr
    kept = [path for path in written if path.exists()]  # the killed run's nbits-4 files (the nbits-2 ones are gone)
    assert kept and all(path.stat().st_mtime_ns == written[path] for path in kept)  # kept, not coded again
    got, want = manifest(folder)["search"], manifest(reference)["search"]
    assert got["shards"] == want["shards"] and structure_files(folder) == structure_files(reference)
    # the kept files count as coded, as in the uninterrupted run: the drift figures are the same
    assert got["drift"] == want["drift"] and got["last_run"] == want["last_run"]
    assert not list((folder / "plaid").glob("*.coded.json"))  # the coding figures go with the commit


@pytest.mark.slow
def test_sigkill_during_an_incremental_run_then_rerun_gives_the_same_bytes(tmp_path):
    first = write_parquet(tmp_path / "v1.parquet", corpus_rows(60))
    second = write_parquet(tmp_path / "v2.parquet", edited(corpus_rows(60)))
    reference, folder = tmp_path / "reference", tmp_path / "index"
    assert tokembed("encode", first, "-o", reference, "--shard-rows", 10, "--nbits", 2).returncode == 0
    shutil.copytree(reference, folder)
    assert tokembed("encode", second, "-o", reference, "--shard-rows", 10).returncode == 0
    killed = tokembed("encode", second, "-o", folder, "--shard-rows", 10, env={"TOKEMBED_TEST_KILL_AT": "codes:3"})
    assert killed.returncode == -signal.SIGKILL
    assert tokembed("encode", second, "-o", folder, "--shard-rows", 10).returncode == 0

    def entries(target):  # data shard file numbers may differ after a resume; their bytes may not
        return [{k: v for k, v in e.items() if k != "shard"} for e in manifest(target)["search"]["shards"]]

    assert [s["sha256"] for s in manifest(folder)["shards"]] == [s["sha256"] for s in manifest(reference)["shards"]]
    assert entries(folder) == entries(reference)
    assert structure_files(folder) == structure_files(reference)


def test_trained_centroids_are_stored_as_float16_and_read_back_exactly(tmp_path):
    from tokembed.search.plaid.files import map_tensors, write_tensors

    rng = np.random.default_rng(11)
    sample = rng.standard_normal((3000, DIM)).astype(np.float32)
    codec = train(sample, 64, 2)
    assert codec.tensors()["centroids"].dtype == np.float16
    write_tensors(tmp_path / "codec.safetensors", codec.tensors(), {"nbits": "2"})
    back = Codec.from_tensors(*map_tensors(tmp_path / "codec.safetensors"))
    assert back.centroids.dtype == np.float32 and np.array_equal(back.centroids, codec.centroids)
    assert np.array_equal(back.assign(sample), codec.assign(sample))
    loose = Codec(rng.standard_normal((8, DIM)).astype(np.float32), codec.cutoffs, codec.weights, 2)
    assert loose.tensors()["centroids"].dtype == np.float32  # not exact in float16: kept as it is


def test_an_empty_query_returns_no_document_without_tokens(tmp_path):
    """An empty query scores 0 against every document with a token (-inf against one without, which the exhaustive
    scan ranks last and the structure never returns): the first ones in index order, across shards."""
    rng = np.random.default_rng(11)
    docs = clustered_docs(rng, 60)
    for row in (0, 2, 50, 51):
        docs[row] = docs[row][:0]
    folder = write_index(tmp_path / "index", docs, shard_rows=25, batch_rows=5)
    compress_index(folder, nbits=2, centroids=16)
    index, structure = open_searchable(folder)
    empty = np.zeros((0, DIM), np.float32)
    exact = search_vectors(index, [empty], top_k=len(docs), exact=True)[0]
    with_tokens = [hit.id for hit in exact if hit.score == 0.0]
    assert with_tokens[:3] == ["d1", "d3", "d4"]
    for top_k in (3, 30, len(docs)):
        (got,) = plaid_search(index, structure, [empty], top_k)
        assert [doc for doc, _ in got] == with_tokens[:top_k] and {score for _, score in got} == {0.0}


class _Progress:
    def __init__(self) -> None:
        self.started, self.advanced = [], []

    def start(self, total_rows, doing="encoding"):
        self.started.append((total_rows, doing))

    def advance(self, rows, tokens):
        self.advanced.append((rows, tokens))


def test_compress_reports_its_progress_shard_by_shard(tmp_path):
    """compress coded every shard (hours at 1M documents) with no sign of life after the k-means line."""
    docs = clustered_docs(np.random.default_rng(13), 70)
    folder = write_index(tmp_path / "index", docs, shard_rows=25, batch_rows=5)
    progress = _Progress()
    compress_index(folder, nbits=2, centroids=16, progress=progress)
    shards = manifest(folder)["shards"]
    assert progress.started == [(70, "coding")] and len(shards) == 3
    assert progress.advanced == [(shard["rows"], shard["tokens"]) for shard in shards]


def test_progress_lines_say_what_is_being_done(capsys):
    from cli.progress import LineProgress

    lines = LineProgress(every=0)
    lines.start(70, "coding")
    lines.advance(25, 400)
    assert "progress: coding 25/70 rows" in capsys.readouterr().err
