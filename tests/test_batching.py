"""Sorted-length token-budget batching."""

from __future__ import annotations

import numpy as np
import pytest

from tokembed.engine.batching import plan_batches


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [64, 512, 4096])
def test_plan_covers_every_row_once_within_budget(seed, budget):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 64, size=int(rng.integers(1, 400)))
    plan = plan_batches(lengths, budget)
    rows = np.concatenate([batch.rows for batch in plan])
    assert sorted(rows.tolist()) == list(range(len(lengths)))  # every row exactly once
    for batch in plan:
        assert batch.width == lengths[batch.rows].max()
        assert batch.computed_tokens <= budget  # every item fits the budget here
    # batches go from longest to shortest: sorting is what keeps padding low
    widths = [batch.width for batch in plan]
    assert widths == sorted(widths, reverse=True)


def test_item_longer_than_budget_runs_alone():
    plan = plan_batches(np.array([10, 500, 12]), budget=100)
    alone = [batch for batch in plan if 1 in batch.rows]
    assert len(alone) == 1 and alone[0].rows.tolist() == [1]


def test_useful_fraction_is_high_on_varied_lengths():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(4, 0.8, size=2048).astype(int), 3, 256)
    plan = plan_batches(lengths, 8192)
    computed = sum(batch.computed_tokens for batch in plan)
    assert lengths.sum() / computed >= 0.97


def test_plan_is_deterministic_and_ignores_nothing_but_lengths():
    lengths = np.array([5, 5, 5, 9, 1, 9, 3])
    first = [b.rows.tolist() for b in plan_batches(lengths, 18)]
    assert first == [b.rows.tolist() for b in plan_batches(lengths.copy(), 18)]
    assert first[0][:2] == [3, 5]  # equal lengths keep input order (stable sort)


def test_empty_chunk():
    assert plan_batches(np.array([], dtype=np.int64), 100) == []
