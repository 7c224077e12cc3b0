"""The structure's candidate stages against their definitions, written out per document with plain loops.

Stage 1 (``candidate_rows``): per query token, a document's best probed centroid score, else the imputed
score (the worst probed centroid's less ``IMPUTE_MARGIN``); summed over query tokens; only documents some
probe reaches.
Stage 2 (``best_by_centroids``): MaxSim with every document token replaced by its centroid.
"""

from __future__ import annotations

import numpy as np
import pytest

from tokembed.search.plaid import candidates
from tokembed.search.plaid.candidates import approximate_scores, best_by_centroids, candidate_rows, probed_centroids
from tokembed.search.plaid.codec import Codec
from tokembed.search.plaid.codes import ShardCodes, inverted_lists
from tokembed.search.plaid.lists import global_lists, probed_lists
from tokembed.search.plaid.search import Structure

K, DIM = 64, 16


def random_structure(rng, shard_rows: list[int]) -> tuple[Structure, list[np.ndarray]]:
    """Shards of random centroid ids (one document in each shard has no tokens); per document its ids."""
    centroids = rng.standard_normal((K, DIM)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    shards, docs = [], []
    for rows in shard_rows:
        lengths = rng.integers(1, 12, size=rows)
        lengths[rows // 2] = 0
        ids = rng.integers(0, K, size=int(lengths.sum())).astype(np.uint16)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        list_offsets, list_rows = inverted_lists(ids, lengths, K)
        shards.append(ShardCodes(offsets, ids, np.zeros((len(ids), 4), np.uint8), list_offsets, list_rows))
        docs += [ids[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    codec = Codec(centroids, np.zeros(3, np.float32), np.zeros(4, np.float32), 2)
    return Structure(codec, shards, np.cumsum([0] + shard_rows).astype(np.int64)), docs


def stage1_by_definition(sims: np.ndarray, docs: list[np.ndarray], probe: int, norms: np.ndarray) -> dict[int, float]:
    out = {}
    for row, ids in enumerate(docs):
        total, reached = 0.0, False
        for i in range(len(sims)):
            probed = np.argsort(-sims[i], kind="stable")[:probe]
            mine = [c for c in probed if c in set(ids.tolist())]
            reached |= bool(mine)
            total += max(sims[i][c] for c in mine) if mine else sims[i][probed].min() - candidates.IMPUTE_MARGIN * norms[i]
        if reached:
            out[row] = total
    return out


@pytest.mark.parametrize("probe", [1, 3, 8, K])
@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("block", [candidates.TOP_BLOCK, 4])  # 4: the block path of best_columns (K = 64)
@pytest.mark.parametrize("margin", [0.1, 0.0, 0.5])
def test_stage1_scores_are_the_definition(probe, tokens, block, margin, monkeypatch):
    monkeypatch.setattr(candidates, "TOP_BLOCK", block)
    monkeypatch.setattr(candidates, "IMPUTE_MARGIN", margin)
    rng = np.random.default_rng(probe * 10 + tokens)
    structure, docs = random_structure(rng, [37, 50, 13])
    q = rng.standard_normal((tokens, DIM)).astype(np.float32)
    sims = q @ structure.codec.centroids.T
    norms = np.linalg.norm(q, axis=1)  # the margin scales with each query token's norm
    expected = stage1_by_definition(sims, docs, probe, norms)
    probed, _ = probed_centroids(sims, probe)
    base = float(sims[np.arange(tokens), probed[:, 0]].sum() - candidates.IMPUTE_MARGIN * norms.sum())  # the imputed total
    for _ in range(2):  # the second query finds the scratch buffers as clear as the first did
        rows, scores = approximate_scores(structure, sims, probe, norms)
        got = {int(r): float(s) + base for r, s in zip(rows, scores)}
        assert sorted(got) == sorted(expected)  # the reached documents, no more (never the empty ones)
        assert [got[r] for r in sorted(got)] == pytest.approx([expected[r] for r in sorted(got)], abs=1e-5)
    keep = 20
    order = sorted(expected, key=lambda r: (-expected[r], r))
    chosen = candidate_rows(structure, sims, probe, keep, norms)
    assert len(chosen) == min(keep, len(expected)) and list(chosen) == sorted(chosen)
    if len(order) > keep:  # the chosen ones are the best (up to float ties at the edge)
        assert min(expected[int(r)] for r in chosen) >= expected[order[keep - 1]] - 1e-5


@pytest.mark.parametrize("k, p", [(65_536, 16), (65_536, 1), (4_096, 4), (8_192, 16), (4_096, 32), (1_000, 16),
                                  (65_530, 24), (4_097, 8)])  # K % TOP_BLOCK != 0: the last columns beside the blocks
def test_best_columns_are_each_rows_top_p_ties_included(k, p):
    rng = np.random.default_rng(k + p)
    sims = rng.standard_normal((11, k)).astype(np.float32)
    sims[1] = np.round(sims[1])  # a row of many equal values: the cut falls inside a tie
    sims[2, : p + 3] = sims[2].max() + 1  # the best values all in one block
    sims[3] = 0.5  # every value equal
    sims[4, -5 * p :] = sims[4].max() + 1  # a tie of the highest columns (identical centroids of high ids)
    sims[5, k // 3 : k // 3 + 5 * p] = sims[5].max() + 1  # ... of consecutive ids in the middle
    sims[6, rng.choice(k, 3 * p, replace=False)] = sims[6].max() + 1  # ... spread over blocks
    sims[7, rng.choice(k, p // 2, replace=False)] = sims[7].max() + 2  # a tie at the cut below some better values
    sims[7, rng.choice(np.flatnonzero(sims[7] < sims[7].max()), 2 * p, replace=False)] = sims[7].max() + 1
    got = candidates.best_columns(sims, p)
    assert got.shape == (11, p)
    for row, columns in zip(sims, got):
        assert len(set(columns.tolist())) == p
        # the definition: highest first, of equal values the lowest column first (as ``Codec.assign`` decides)
        assert sorted(columns.tolist()) == sorted(np.argsort(-row, kind="stable")[:p].tolist())


def test_the_probe_takes_the_lowest_of_equally_good_centroids():
    """Of 120 equal centroids (an earlier release's identical ones, whose tokens ``Codec.assign`` put in the lowest),
    the probe takes the lowest 24, whether it partitions whole rows or blocks; and so does ``probed_centroids``."""
    for k in (120, 65_536):
        sims = np.zeros((2, k), np.float32)
        sims[:, :120] = 1
        assert [sorted(row) for row in candidates.best_columns(sims, 24).tolist()] == [list(range(24))] * 2
        assert sorted(probed_centroids(sims, 24)[0][0].tolist()) == list(range(24))


def test_equal_scores_at_the_cut_go_to_the_lower_rows():
    scores = np.array([0.5, 0.2, 0.5, 0.9, 0.5, 0.1], np.float32)
    assert sorted(candidates._best(scores, 3).tolist()) == [0, 2, 3]
    assert sorted(candidates._best(scores, 6).tolist()) == list(range(6))


def test_stage2_keeps_the_best_by_centroid_maxsim():
    rng = np.random.default_rng(7)
    structure, docs = random_structure(rng, [40, 40])
    q = rng.standard_normal((6, DIM)).astype(np.float32)
    sims = q @ structure.codec.centroids.T
    rows = np.array([r for r, ids in enumerate(docs) if len(ids)])
    score = {int(r): float(sims[:, docs[r]].max(axis=1).sum()) for r in rows}
    kept = best_by_centroids(structure, sims, rows, 10)
    assert list(kept) == sorted(kept) and len(kept) == 10
    best = sorted(score, key=lambda r: (-score[r], r))[:10]
    assert sorted(score[int(r)] for r in kept) == pytest.approx(sorted(score[r] for r in best), abs=1e-6)
    assert np.array_equal(best_by_centroids(structure, sims, rows[:5], 10), rows[:5])  # fewer than asked: all of them


def test_query_scratch_arrays_reuse_one_buffer_per_name_and_thread():
    import threading

    first = candidates.scratches.array("test", (3, 5), np.float32)
    again = candidates.scratches.array("test", (2, 4), np.int32)  # smaller: the same memory
    assert again.shape == (2, 4) and again.dtype == np.int32
    assert again.__array_interface__["data"][0] == first.__array_interface__["data"][0]
    other = candidates.scratches.array("other", (3, 5), np.float32)
    assert not np.shares_memory(other, first)
    grown = candidates.scratches.array("test", (100, 5), np.float64)
    assert grown.shape == (100, 5) and grown.flags.c_contiguous and grown.ctypes.data % 8 == 0
    outsized = candidates.scratches.array("test", (candidates.SCRATCH_KEEP_BYTES + 1,), np.uint8)
    assert not np.shares_memory(outsized, candidates.scratches.array("test", (1,), np.uint8))  # not kept

    elsewhere = []
    thread = threading.Thread(target=lambda: elsewhere.append(candidates.scratches.array("test", (100, 5), np.float64)))
    thread.start(), thread.join()
    assert not np.shares_memory(elsewhere[0], grown)  # each thread has its own


def test_an_out_of_range_centroid_id_is_reported_not_clipped():
    from tokembed.errors import IndexCorruptError

    rng = np.random.default_rng(7)
    structure, docs = random_structure(rng, [30, 20])
    structure.shards[1].centroid_ids[3] = K  # one past the last centroid
    sims = rng.standard_normal((2, K)).astype(np.float32)
    with pytest.raises(IndexCorruptError, match="centroid id"):
        best_by_centroids(structure, sims, np.arange(50), 5)


def test_lists_whose_counts_disagree_with_their_rows_are_reported():
    from tokembed.errors import IndexCorruptError

    rng = np.random.default_rng(8)
    structure, docs = random_structure(rng, [30, 20])
    structure.shards[0].list_rows = structure.shards[0].list_rows[:-1]
    with pytest.raises(IndexCorruptError, match="list entries"):
        probed_lists(structure)
    with pytest.raises(IndexCorruptError, match="list entries"):
        global_lists(structure)


def test_lists_joined_centroid_by_centroid_hold_every_shards_list_in_row_order():
    rng = np.random.default_rng(9)
    structure, docs = random_structure(rng, [30, 1, 20, 25])
    everything = global_lists(structure)
    probed = probed_lists(structure)

    def expected_of(c: int) -> list[int]:
        return [row for row, ids in enumerate(docs) if c in set(ids.tolist())]

    wanted = [7, 2, 7, 9, 2, K - 1]  # several at once, repeated: joined together on first use
    assert [rows.tolist() for rows in probed.rows_of(wanted)] == [expected_of(c) for c in wanted]
    for c in [5, 0, 5, K - 1, *range(K)]:  # then kept
        expected = expected_of(c)
        assert probed.rows_of([c])[0].tolist() == expected and probed.sizes[c] == len(expected)
        assert everything.rows[everything.offsets[c] : everything.offsets[c + 1]].tolist() == expected
    assert probed.rows_of([3])[0] is probed.rows_of([3])[0]
