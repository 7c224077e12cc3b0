"""The candidate stages in torch (``plaid.on_device``, what ``score --device cuda`` runs) against the numpy ones.

They run on the CPU here (torch's CPU device stands in for a GPU: the same code), and on CUDA in the test
marked ``gpu``. Given the same centroid scores, both stages must keep the same rows; whole searches must
return the same hits with the same scores (the exact re-rank is shared).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plaid_support import recall
from test_plaid_candidates import DIM, K, random_structure
from tokembed.search import api
from tokembed.search.plaid import on_device
from tokembed.search.plaid.candidates import best_by_centroids, best_columns, candidate_rows
from tokembed.search.plaid.codes import ShardCodes, inverted_lists
from tokembed.search.plaid.search import Structure, open_searchable, plaid_search


@pytest.mark.parametrize("probe", [1, 4, 16, K])
@pytest.mark.parametrize("tokens", [1, 6])
def test_stage1_keeps_the_rows_numpy_keeps(probe, tokens):
    rng = np.random.default_rng(probe + 100 * tokens)
    structure, _ = random_structure(rng, [37, 50, 13])
    q = rng.standard_normal((tokens, DIM)).astype(np.float32)
    sims = q @ structure.codec.centroids.T
    norms = np.linalg.norm(q, axis=1)
    arrays = on_device.device_arrays(structure, "cpu")
    for keep in (5, 20, 1000):
        expected = candidate_rows(structure, sims, probe, keep, norms)
        got = on_device._stage_one(arrays, torch.from_numpy(sims), probe, keep, torch.from_numpy(norms)).numpy()
        assert np.array_equal(got, expected), keep


def test_stage2_keeps_the_rows_numpy_keeps():
    rng = np.random.default_rng(11)
    structure, docs = random_structure(rng, [40, 40, 7])
    arrays = on_device.device_arrays(structure, "cpu")
    q = rng.standard_normal((6, DIM)).astype(np.float32)
    sims = q @ structure.codec.centroids.T
    rows = np.array([r for r, ids in enumerate(docs) if len(ids)], np.int64)
    for keep in (1, 10, 50, len(rows) + 1):
        expected = best_by_centroids(structure, sims, rows, keep)
        got = on_device._stage_two(arrays, torch.from_numpy(sims), torch.from_numpy(rows), keep).numpy()
        assert np.array_equal(got, expected), keep


def test_the_arrays_are_copied_once_per_structure_and_device():
    structure, docs = random_structure(np.random.default_rng(2), [10, 20])
    first = on_device.device_arrays(structure, "cpu")
    assert on_device.device_arrays(structure, "cpu") is first
    assert first.centroid_ids.dtype == torch.int32 and len(first.centroid_ids) == sum(len(d) for d in docs)
    assert first.doc_offsets.tolist() == np.cumsum([0] + [len(d) for d in docs]).tolist()  # global token offsets


def test_whole_searches_return_the_cpu_paths_hits(compressed):
    folder, _, queries = compressed
    index, structure = open_searchable(folder)
    for probe, candidates in ((4, 16), (16, 64)):
        expected = plaid_search(index, structure, queries, 10, probe, candidates)
        assert plaid_search(index, structure, queries, 10, probe, candidates, device="cpu") == expected
    coded = plaid_search(index, structure, queries, 10, 8, 32, rerank="codes")
    assert plaid_search(index, structure, queries, 10, 8, 32, rerank="codes", device="cpu") == coded


def test_probing_everything_on_the_device_is_the_exhaustive_scan(compressed):
    folder, _, queries = compressed
    index, structure = open_searchable(folder)
    exact = api.search_vectors(folder, queries, top_k=10, exact=True)
    got = plaid_search(index, structure, queries, 10, probe=256, candidates=index.rows, device="cpu")
    assert recall(exact, got, 10) == 1.0
    for hits, found in zip(exact, got):
        assert [h.score for h in hits] == pytest.approx([score for _, score in found], abs=1e-6)


def test_a_gpu_device_runs_the_candidate_stages_there(compressed, monkeypatch):
    """``search_vectors(device=...)`` on a structure hands the device to the candidate stages; CPU stays numpy."""
    folder, _, queries = compressed
    seen = []
    real = on_device.device_candidates

    def recorded(structure, q, probe, pool, candidates, device):
        seen.append(device)
        return real(structure, q, probe, pool, candidates, "cpu")  # the CPU stands in for the GPU asked for

    monkeypatch.setattr(on_device, "device_candidates", recorded)
    monkeypatch.setattr(api, "_resolve_device", lambda spec: spec)
    on_cpu = api.search_vectors(folder, queries[:3], top_k=5, device="cpu")
    assert seen == []
    on_gpu = api.search_vectors(folder, queries[:3], top_k=5, device="cuda:1")
    assert seen == ["cuda:1"] * 3 and on_gpu == on_cpu


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_candidate_stages_keep_the_rows_numpy_keeps():
    """On the GPU itself (no faiss needed: a structure of random codes), given the same centroid scores."""
    rng = np.random.default_rng(13)
    structure, docs = random_structure(rng, [300, 200, 100])
    arrays = on_device.device_arrays(structure, "cuda")
    for tokens in (1, 8, 32):
        q = rng.standard_normal((tokens, DIM)).astype(np.float32)
        sims, norms = q @ structure.codec.centroids.T, np.linalg.norm(q, axis=1)
        on_gpu = torch.from_numpy(sims).cuda()
        for probe, keep in ((1, 10), (4, 40), (16, 100)):
            expected = candidate_rows(structure, sims, probe, keep, norms)
            got = on_device._stage_one(arrays, on_gpu, probe, keep, torch.from_numpy(norms).cuda())
            assert np.array_equal(got.cpu().numpy(), expected)
            kept = on_device._stage_two(arrays, on_gpu, got, keep // 4).cpu().numpy()
            assert np.array_equal(kept, best_by_centroids(structure, sims, expected, keep // 4))


def test_probes_that_reach_no_document_give_no_candidates():
    """A centroid no token was coded to (its lists empty in every shard): nothing reached, as in numpy."""
    structure, _ = random_structure(np.random.default_rng(5), [20, 20])
    shards = []
    for codes in structure.shards:  # recode centroid 0's tokens to centroid 1: centroid 0's lists are empty
        ids = np.where(codes.centroid_ids == 0, 1, codes.centroid_ids).astype(np.uint16)
        list_offsets, list_rows = inverted_lists(ids, np.diff(codes.doc_offsets), K)
        shards.append(ShardCodes(codes.doc_offsets, ids, codes.residuals, list_offsets, list_rows))
    structure = Structure(structure.codec, shards, structure.starts)
    q = structure.codec.centroids[[0]] * 10  # probe 1 reaches only centroid 0
    sims = q @ structure.codec.centroids.T
    norms = np.linalg.norm(q, axis=1)
    assert len(candidate_rows(structure, sims, 1, 5, norms)) == 0
    arrays = on_device.device_arrays(structure, "cpu")
    assert len(on_device._stage_one(arrays, torch.from_numpy(sims), 1, 5, torch.from_numpy(norms))) == 0
    assert len(on_device._stage_one(arrays, torch.from_numpy(sims), 2, 5, torch.from_numpy(norms))) > 0  # centroid 1's


def duplicated_structure(rng, copies: int) -> Structure:
    """One shard of ``copies`` copies of 3 documents (rows 0, 1, 2, 0, 1, 2, ...): every score ties exactly."""
    lengths = np.tile([5, 9, 3], copies)
    ids = np.tile(rng.integers(0, K, size=17), copies).astype(np.uint16)
    list_offsets, list_rows = inverted_lists(ids, lengths, K)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    structure, _ = random_structure(rng, [1])
    codes = ShardCodes(offsets, ids, np.zeros((len(ids), 4), np.uint8), list_offsets, list_rows)
    return Structure(structure.codec, [codes], np.array([0, len(lengths)], np.int64))


@pytest.mark.parametrize("tokens", [8, 32])
def test_exact_ties_go_to_the_lower_row_as_in_numpy(tokens):
    """torch's sum over query tokens gave equal columns other last bits by their position: of duplicated documents
    the device kept other rows than numpy (and other hits), though both promise ties to the lower row."""
    rng = np.random.default_rng(tokens)
    structure = duplicated_structure(rng, 200)
    arrays = on_device.device_arrays(structure, "cpu")
    q = rng.standard_normal((tokens, DIM)).astype(np.float32)
    sims, norms = q @ structure.codec.centroids.T, np.linalg.norm(q, axis=1)
    for probe, keep in ((2, 50), (8, 100), (K, 7)):
        expected = candidate_rows(structure, sims, probe, keep, norms)
        got = on_device._stage_one(arrays, torch.from_numpy(sims), probe, keep, torch.from_numpy(norms))
        assert np.array_equal(got.numpy(), expected), (probe, keep)
        kept = on_device._stage_two(arrays, torch.from_numpy(sims), got, keep // 5).numpy()
        assert np.array_equal(kept, best_by_centroids(structure, sims, expected, keep // 5)), (probe, keep)


def test_whole_searches_of_duplicated_documents_return_the_cpu_paths_hits(tmp_path):
    from plaid_support import clustered_docs, queries_from
    from test_score import write_index
    from tokembed.search.plaid import compress_index

    rng = np.random.default_rng(7)
    docs = clustered_docs(rng, 30)
    folder = write_index(tmp_path / "index", docs * 8, shard_rows=80, batch_rows=40)  # each document 8 times
    compress_index(folder, nbits=2, centroids=32)
    index, structure = open_searchable(folder)
    queries = queries_from(rng, docs, 20, tokens=32)
    for probe, candidates in ((1, 4), (2, 16)):
        expected = plaid_search(index, structure, queries, 10, probe, candidates)
        assert plaid_search(index, structure, queries, 10, probe, candidates, device="cpu") == expected


@pytest.mark.parametrize("k", [120, 4_096, 65_536])
def test_equal_scores_are_probed_lowest_centroid_first_as_in_numpy(k):
    """``torch.topk`` orders equal scores as the device likes: of an earlier release's identical centroids it could
    probe others than the lowest, the one ``Codec.assign`` coded their tokens to (and numpy's probe takes)."""
    rng = np.random.default_rng(k)
    sims = rng.standard_normal((6, k)).astype(np.float32)
    sims[0, :] = 0.5  # every score equal
    sims[1, -min(k, 100) :] = sims[1].max() + 1  # a tie of the highest centroids
    sims[2] = np.round(sims[2])  # many ties, the cut inside one
    sims[3, rng.choice(k, 60, replace=False)] = -0.0  # -0.0 and 0.0 are equal scores
    sims[3, rng.choice(k, 60, replace=False)] = 0.0
    sims[3, sims[3] > 0] = -1.0
    sims[4] = -sims[4] ** 2  # negative scores only
    for p in (1, 24, min(k, 100)):
        values, probed = on_device._best_centroids(torch.from_numpy(sims), p)
        expected = best_columns(sims, p)
        assert [sorted(row) for row in probed.tolist()] == [sorted(row) for row in expected.tolist()], p
        assert np.array_equal(values.numpy(), np.take_along_axis(sims, probed.numpy(), 1))
        assert (np.diff(values.numpy(), axis=1) <= 0).all()  # best first
