"""Dynamic batching for ``tokembed serve``: concurrent requests share token-budget batches.

One worker thread owns the model. Requests hand it already-tokenized items (``Tokenized``) under a
*profile* key (``raw``, ``query``, ``document``: items of one profile share collate and finish steps) and
await a future. The worker:

1. when it holds no work, waits for a first pending request, then at most ``window`` seconds more (less when
   the pending items already fill ``budget`` tokens), so that requests arriving together share batches;
2. takes every pending request (a *round*), drops those whose client went away (``cancelled``), and per profile
   plans token-budget batches over the round's items with the engine's planner (``plan_batches``: sorted
   lengths, padded size within the budget, the same plan ``tokembed encode`` makes for a chunk);
3. runs one planned batch through the engine's ``BatchExecutor`` (collate, forward, finish; out-of-memory
   splits), resolves each request's future as soon as its last item is done, then takes the requests that
   arrived meanwhile (a new round, planned at once, without the window) before choosing the next batch.

A round's items are planned together with the items of their profile still waiting from earlier rounds. The
requests holding items take turns: the next batch is the first planned one holding an item of the request whose
turn it is (``_whose_turn``): every other forward the request that arrived first, the others the request served
longest ago (or, never served, that arrived first; one that arrived during a forward comes before those that
forward served). A request arriving while the model is busy therefore waits for a few forwards, not for a huge
request's every batch, and a huge request gets every other forward under any load; one forward runs at a time.

Items: ``Tokenized`` in, rows ``(vectors [n_kept, D], token ids [n_kept])`` out, in the request's order.
``stats`` counts requests, batches and tokens (``/metrics`` shows them): ``batches < requests`` under load
is the point of all this.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tokembed.engine.batching import plan_batches
from tokembed.engine.runner import BatchExecutor, Row
from tokembed.models.steps import Tokenized


class BatcherClosed(RuntimeError):
    """The server is shutting down; the request was not run."""


@dataclass
class BatchStats:
    requests: int = 0  # submitted
    items: int = 0  # inputs submitted
    rounds: int = 0  # times the worker took the pending requests
    batches: int = 0  # forward passes (token-budget batches)
    largest_batch_requests: int = 0  # most requests whose items shared one forward pass
    real_tokens: int = 0  # tokens that went through the model
    computed_tokens: int = 0  # positions computed, padding included
    dropped_requests: int = 0  # cancelled (client gone) before any of their items ran
    dropped_items: int = 0  # items skipped because their request was cancelled
    failed_requests: int = 0  # answered with an error by the engine

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(eq=False)
class _Job:
    key: str
    items: list[Tokenized]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    arrived: float
    turn: float = 0.0  # when the worker last ran items of it (its arrival before): the oldest goes next
    rows: list = field(default_factory=list)
    remaining: int = 0
    started: bool = False
    cancelled: bool = False  # set from the event loop; read by the worker (a bool store is atomic)
    dropped: bool = False
    resolved: bool = False  # the worker has answered (the future completes a moment later, on the loop)

    @property
    def tokens(self) -> int:
        return sum(len(item.ids) for item in self.items)


class DynamicBatcher:
    """Merge concurrent requests into token-budget batches run by one worker thread.

    ``executors`` maps a profile key to the ``BatchExecutor`` of that profile (each bound to its
    ``TextEncoder``; all share one model). ``budget``: padded tokens per batch. ``window``: seconds.
    """

    def __init__(self, executors: Mapping[str, BatchExecutor], budget: int, window: float) -> None:
        self.executors = dict(executors)
        self.budget = budget
        self.window = window
        self.stats = BatchStats()
        self._pending: list[_Job] = []
        self._pending_tokens = 0
        self._held: list[_Job] = []  # worker only: requests with items planned but not yet run
        self._planned: list[tuple[str, list[tuple[_Job, int]]]] = []  # worker only: (profile, batch of (job, item))
        self._forwards = 0  # worker only: every other forward serves the oldest request (``_whose_turn``)
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="tokembed-batcher", daemon=True)
        self._thread.start()

    async def submit(self, key: str, items: list[Tokenized]) -> list[Row]:
        """Rows for ``items`` (input order). Cancelling the awaiting task drops the items not yet run."""
        if key not in self.executors:
            raise KeyError(f"no executor for profile {key!r}")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        job = _Job(key, items, loop, loop.create_future(), now, turn=now)
        with self._wake:
            if self._closed or not self._thread.is_alive():
                raise BatcherClosed("the server is shutting down")
            self._pending.append(job)
            self._pending_tokens += job.tokens
            self.stats.requests += 1
            self.stats.items += len(items)
            self._wake.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            raise

    @property
    def alive(self) -> bool:
        """The worker thread runs and takes requests."""
        return self._thread.is_alive() and not self._closed

    def close(self, timeout: float = 10.0) -> bool:
        """Stop taking requests; the running batch finishes, the requests not done then fail with ``BatcherClosed``.
        True when the worker has stopped within ``timeout`` seconds, False when it is still inside a forward pass."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- worker ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                jobs = self._next_round()
            except Exception as exc:  # a bug while waiting must not leave the queued requests unanswered
                self._fail_pending(exc)
                continue
            if jobs is None:
                self._fail_held(BatcherClosed("the server is shutting down"), count=False)
                return
            try:
                self._plan_round(jobs)
                self._drop_cancelled()
                if self._held:
                    self._run_next_batch()
            except Exception as exc:  # a bug here must not leave requests waiting forever
                self._fail_held(exc, jobs)

    def _next_round(self) -> list[_Job] | None:
        """The requests pending now (None once closed). Holding no work, block until a round is due: the first
        pending request's window is over, or the budget is full; holding some, take what is there."""
        with self._wake:
            while not self._pending and not self._closed and not self._held:
                self._wake.wait()
            if self._closed:
                for job in self._pending:
                    self._fail(job, BatcherClosed("the server is shutting down"), count=False)
                self._pending = []
                return None
            if self._pending and not self._held:
                deadline = self._pending[0].arrived + self.window
                while not self._closed and self._pending_tokens < self.budget:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
            jobs, self._pending, self._pending_tokens = self._pending, [], 0
            self.stats.rounds += bool(jobs)
            return jobs

    def _fail_pending(self, error: BaseException) -> None:
        with self._wake:
            jobs, self._pending, self._pending_tokens = self._pending, [], 0
        for job in jobs:
            self._fail(job, error)

    def _plan_round(self, jobs: list[_Job]) -> None:
        """Plan the items of a round's live requests into batches, per profile (in order of first arrival),
        together with the items of that profile still waiting from earlier rounds: planned apart, a round's few
        items made batches of their own, one forward each, and under steady light load the backlog grew."""
        for job in jobs:
            if job.cancelled:
                self._drop(job, len(job.items))
        live = [job for job in jobs if not job.cancelled]
        for key in dict.fromkeys(job.key for job in live):
            entries = [entry for planned, rows in self._planned if planned == key for entry in rows]
            self._planned = [(planned, rows) for planned, rows in self._planned if planned != key]
            entries += [entry for job in live if job.key == key for entry in self._entries(job)]
            lengths = np.array([len(job.items[index].ids) for job, index in entries], dtype=np.int64)
            for batch in plan_batches(lengths, self.budget):
                self._planned.append((key, [entries[row] for row in batch.rows]))
        self._held.extend(job for job in live if job.remaining)

    def _entries(self, job: _Job) -> list[tuple[_Job, int]]:
        """``job``'s items with tokens, as (job, item index); a token-less item's row is set at once (possible
        for token-less text on tokenizers without specials), and a request with no other is answered."""
        job.rows = [None] * len(job.items)
        entries = []
        for index, item in enumerate(job.items):
            if len(item.ids):
                entries.append((job, index))
            else:
                job.rows[index] = _empty_row(self.executors[job.key])
        job.remaining = len(entries)
        if job.remaining == 0:
            self._succeed(job)
        return entries

    def _drop_cancelled(self) -> None:
        """Requests whose client left: their items not yet run are skipped."""
        for job in [job for job in self._held if job.cancelled]:
            self._drop(job, job.remaining)
            self._forget(job)

    def _forget(self, job: _Job) -> None:
        """Take ``job``'s items out of the planned batches, and the job out of the turns."""
        self._held.remove(job)
        planned = [(key, [entry for entry in rows if entry[0] is not job]) for key, rows in self._planned]
        self._planned = [(key, rows) for key, rows in planned if rows]

    def _run_next_batch(self) -> None:
        """One forward: the first planned batch holding an item of the request whose turn it is."""
        turn = self._whose_turn()
        position = next(at for at, (_, rows) in enumerate(self._planned) if any(job is turn for job, _ in rows))
        key, rows = self._planned.pop(position)
        served = list(dict.fromkeys(job for job, _ in rows))
        try:
            output = self.executors[key].run([job.items[index] for job, index in rows])
        except Exception as exc:  # the engine failed: answer this batch's requests, keep serving
            for job in served:
                self._forget(job)
                self._fail(job, exc)
            return
        self._count(rows, output)
        for (job, index), row in zip(rows, output.rows, strict=True):
            job.started = True
            job.rows[index] = row
            job.remaining -= 1
        done = time.monotonic()
        for job in served:
            job.turn = done  # behind every request that arrived during this forward
            if job.remaining == 0:
                self._held.remove(job)
                self._succeed(job)

    def _whose_turn(self) -> _Job:
        """The request served longest ago; every other forward, the one that arrived first. Turns alone are fair
        per request: past the server's capacity (arrivals outpacing forwards) a huge request waited behind the
        whole backlog for each of its batches and did not finish while the load lasted; half the forwards keep
        it going, and the others still reach a request that arrives behind it within a forward or two."""
        self._forwards += 1
        if self._forwards % 2:
            return min(self._held, key=lambda job: job.arrived)
        return min(self._held, key=lambda job: job.turn)

    def _fail_held(self, error: BaseException, jobs: list[_Job] = (), count: bool = True) -> None:
        """Answer every request the worker holds (and ``jobs``, a round being planned) with ``error``."""
        held, self._held, self._planned = self._held, [], []
        for job in [*held, *jobs]:
            self._fail(job, error, count)

    def _count(self, rows: list[tuple[_Job, int]], output) -> None:
        stats = self.stats
        stats.batches += 1
        stats.real_tokens += sum(len(job.items[index].ids) for job, index in rows)
        stats.computed_tokens += output.computed_tokens
        stats.largest_batch_requests = max(stats.largest_batch_requests, len({id(job) for job, _ in rows}))

    def _drop(self, job: _Job, items: int) -> None:
        self.stats.dropped_items += items
        if not job.started and not job.dropped:
            job.dropped = True
            self.stats.dropped_requests += 1

    def _succeed(self, job: _Job) -> None:
        if not job.resolved:
            job.resolved = True
            _resolve(job, result=job.rows)

    def _fail(self, job: _Job, error: BaseException, count: bool = True) -> None:
        if not job.resolved:
            job.resolved = True
            self.stats.failed_requests += count and not job.cancelled  # a client gone got no answer
            _resolve(job, error=error)


def _empty_row(executor: BatchExecutor) -> Row:
    encoder = executor.encoder
    return np.zeros((0, encoder.output_dim), dtype=encoder.store_dtype), np.zeros(0, dtype=np.int32)


def _resolve(job: _Job, result=None, error: BaseException | None = None) -> None:
    """Complete ``job.future`` from the worker thread (the future belongs to the request's event loop)."""

    def complete() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(complete)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
