"""``tokembed serve``'s batcher with several requests holding work: they take turns, one forward each, so a small
request arriving during a big request's first forward is not kept waiting for all its batches (a fake engine
that records every forward; the first one held until the small request is queued)."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from tokembed.engine.runner import BatchOutput
from tokembed.models.steps import Tokenized
from tokembed.serve.batcher import DynamicBatcher

BIG, SMALL = 1, 2  # the token id every item of a request is made of


class HeldFirstForward:
    """Records each forward's token ids; the first forward waits for ``release`` (the small request queued)."""

    encoder = None

    def __init__(self) -> None:
        self.forwards: list[list[int]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()

    def run(self, items):
        self.forwards.append([int(item.ids[0]) for item in items])
        if len(self.forwards) == 1:
            self.first_started.set()
            assert self.release.wait(10)
        return BatchOutput([(np.tile(item.ids[:, None], (1, 2)).astype(np.float32), item.ids) for item in items], 0, 0)


def _items(token: int, count: int, length: int) -> list[Tokenized]:
    return [Tokenized(np.full(length, token, dtype=np.int64), length) for _ in range(count)]


def _start_big_then(engine: HeldFirstForward, batcher: DynamicBatcher, during_first_forward):
    """Submit a big request (8 items of 10 tokens: 4 forwards of 20), then ``during_first_forward(big task)``."""

    async def scenario():
        big = asyncio.ensure_future(batcher.submit("raw", _items(BIG, 8, 10)))
        assert await asyncio.get_running_loop().run_in_executor(None, engine.first_started.wait, 10)
        other = await during_first_forward(big)
        engine.release.set()
        return await asyncio.gather(big, *other, return_exceptions=True)

    try:
        return asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    finally:
        engine.release.set()


def test_a_small_request_arriving_during_a_big_ones_first_forward_runs_in_the_next():
    engine = HeldFirstForward()
    batcher = DynamicBatcher({"raw": engine}, budget=20, window=0.01)

    async def small_request(big):
        small = asyncio.ensure_future(batcher.submit("raw", _items(SMALL, 1, 3)))
        await asyncio.sleep(0.05)  # queued with the worker (still inside the first forward)
        return [small]

    try:
        big_rows, small_rows = _start_big_then(engine, batcher, small_request)
    finally:
        batcher.close()
    assert engine.forwards == [[BIG, BIG], [SMALL], [BIG, BIG], [BIG, BIG], [BIG, BIG]]  # was: the small one last
    assert len(big_rows) == 8 and all((ids == BIG).all() and (vectors == BIG).all() for vectors, ids in big_rows)
    assert len(small_rows) == 1 and (small_rows[0][1] == SMALL).all() and small_rows[0][0].shape == (3, 2)
    stats = batcher.stats
    assert (stats.requests, stats.items, stats.rounds, stats.batches) == (2, 9, 2, 5)
    assert stats.real_tokens == 83 and stats.dropped_items == 0 and stats.failed_requests == 0


def test_a_request_cancelled_between_its_forwards_is_dropped_and_counted():
    engine = HeldFirstForward()
    batcher = DynamicBatcher({"raw": engine}, budget=20, window=0.01)

    async def cancel_big(big):
        big.cancel()
        await asyncio.sleep(0)
        return []

    try:
        (big,) = _start_big_then(engine, batcher, cancel_big)
        deadline = time.monotonic() + 10  # the worker ends the first forward, then drops the rest
        while not batcher.stats.dropped_items and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        batcher.close()
    assert isinstance(big, asyncio.CancelledError) and engine.forwards == [[BIG, BIG]]
    stats = batcher.stats
    assert (stats.batches, stats.dropped_items, stats.dropped_requests) == (1, 6, 0)  # it had started: not dropped


class ArrivalsDuringForwards:
    """Each of the first ``waves`` forwards sees a one-item request arrive on each of two profiles (token ids 100,
    101, ...: the forward that ran each is known), as a steady light load does; a forward holds 10 such items."""

    encoder = None

    def __init__(self, loop, batcher_box: list, waves: int) -> None:
        self.loop, self.batcher_box, self.waves = loop, batcher_box, waves
        self.forwards: list[list[int]] = []
        self.arrived_at: dict[int, int] = {}  # token id -> forwards done when it arrived
        self.smalls: list = []

    def run(self, items):
        self.forwards.append([int(item.ids[0]) for item in items])
        if len(self.forwards) <= self.waves:
            for key in ("raw", "query"):
                token = 100 + len(self.arrived_at)
                self.arrived_at[token] = len(self.forwards) - 1
                submitted = asyncio.run_coroutine_threadsafe(self.batcher_box[0].submit(key, _items(token, 1, 2)), self.loop)
                self.smalls.append(submitted)
            time.sleep(0.02)  # the arrivals are queued with the worker before the forward ends
        return BatchOutput([(np.tile(item.ids[:, None], (1, 2)).astype(np.float32), item.ids) for item in items], 0, 0)


def test_under_steady_light_load_a_big_request_finishes_and_small_ones_share_forwards():
    """Requests arriving one per forward were each planned into batches of their own (one forward per request,
    the backlog growing), and a big request waited behind that whole backlog for each of its batches: it finished
    only once the load stopped. Waiting items are planned again with the new ones, and every other forward
    serves the oldest request."""

    async def scenario():
        box: list = []
        engine = ArrivalsDuringForwards(asyncio.get_running_loop(), box, waves=30)
        box.append(DynamicBatcher({"raw": engine, "query": engine}, budget=20, window=0.001))
        try:
            big = await asyncio.wait_for(box[0].submit("raw", _items(BIG, 8, 10)), 30)  # 4 forwards of 2 items
            while len(engine.smalls) < 60:
                await asyncio.sleep(0.01)
            smalls = await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(s) for s in engine.smalls)), 30)
        finally:
            box[0].close()
        return engine, big, smalls

    engine, big, smalls = asyncio.run(scenario())
    assert len(big) == 8 and all((ids == BIG).all() for _, ids in big)
    assert [rows[0][1][0] for rows in smalls] == sorted(engine.arrived_at)  # each its own row
    ran_in = {token: at for at, tokens in enumerate(engine.forwards) for token in tokens if token >= 100}
    assert max(at for at, tokens in enumerate(engine.forwards) if BIG in tokens) <= 8  # its 4 forwards of the first 9
    waits = [ran_in[token] - arrived for token, arrived in engine.arrived_at.items()]
    assert max(waits) <= 4, waits  # was: growing with every forward
    assert len(engine.forwards) < 4 + 60 * 3 // 4  # small requests share forwards


def test_a_request_cancelled_during_a_forward_that_fails_is_not_counted_as_failed():
    """Two requests share a forward; one client leaves while it runs, then the engine fails: /metrics counted two
    failed requests, though only the other was answered with the error."""

    class FailingForward(HeldFirstForward):
        def run(self, items):
            super().run(items)
            raise RuntimeError("engine failed")

    engine = FailingForward()
    batcher = DynamicBatcher({"raw": engine}, budget=100, window=0.05)

    async def scenario():
        left = asyncio.ensure_future(batcher.submit("raw", _items(SMALL, 1, 3)))
        stays = asyncio.ensure_future(batcher.submit("raw", _items(SMALL, 1, 3)))
        assert await asyncio.get_running_loop().run_in_executor(None, engine.first_started.wait, 10)
        left.cancel()
        await asyncio.sleep(0.05)
        engine.release.set()
        return await asyncio.gather(left, stays, return_exceptions=True)

    try:
        left, stays = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    finally:
        engine.release.set()
        batcher.close()
    assert isinstance(left, asyncio.CancelledError) and isinstance(stays, RuntimeError)
    assert batcher.stats.failed_requests == 1
