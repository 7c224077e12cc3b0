"""Dynamic batching for ``tokembed serve``: concurrent requests share token-budget batches.

One worker thread owns the model. Requests hand it already-tokenized items (``Tokenized``) under a
*profile* key (``raw``, ``query``, ``document``: items of one profile share collate and finish steps) and
await a future. The worker:

1. waits for a first pending request, then at most ``window`` seconds more (less when the pending items
   already fill ``budget`` tokens), so no request waits longer than the window before its batch starts
   (unless the worker is still busy with the previous round: the model runs one batch at a time);
2. takes every pending request, drops those whose client went away (``cancelled``), and per profile plans
   token-budget batches over *all* their items with the engine's planner (``plan_batches``: sorted
   lengths, padded size within the budget, the same plan ``tokembed encode`` makes for a chunk);
3. runs each batch through the engine's ``BatchExecutor`` (collate, forward, finish; out-of-memory splits),
   re-checking cancellation before every batch, and resolves each request's future as soon as its last
   item is done.

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
        self._closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="tokembed-batcher", daemon=True)
        self._thread.start()

    async def submit(self, key: str, items: list[Tokenized]) -> list[Row]:
        """Rows for ``items`` (input order). Cancelling the awaiting task drops the items not yet run."""
        if key not in self.executors:
            raise KeyError(f"no executor for profile {key!r}")
        loop = asyncio.get_running_loop()
        job = _Job(key, items, loop, loop.create_future(), time.monotonic())
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
        """Stop taking requests; pending ones fail with ``BatcherClosed``; the running batch finishes. True when
        the worker has stopped within ``timeout`` seconds, False when it is still inside a forward pass."""
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
                return
            try:
                self._run_round(jobs)
            except Exception as exc:  # a bug here must not leave requests waiting forever
                for job in jobs:
                    self._fail(job, exc)

    def _next_round(self) -> list[_Job] | None:
        """Block until a round is due: the first pending request's window is over, or the budget is full."""
        with self._wake:
            while not self._pending and not self._closed:
                self._wake.wait()
            if self._closed:
                for job in self._pending:
                    self._fail(job, BatcherClosed("the server is shutting down"), count=False)
                self._pending = []
                return None
            deadline = self._pending[0].arrived + self.window
            while not self._closed and self._pending_tokens < self.budget:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            jobs, self._pending, self._pending_tokens = self._pending, [], 0
            self.stats.rounds += 1
            return jobs

    def _fail_pending(self, error: BaseException) -> None:
        with self._wake:
            jobs, self._pending, self._pending_tokens = self._pending, [], 0
        for job in jobs:
            self._fail(job, error)

    def _run_round(self, jobs: list[_Job]) -> None:
        for job in jobs:
            if job.cancelled:
                self._drop(job, len(job.items))
        live = [job for job in jobs if not job.cancelled]
        for key in dict.fromkeys(job.key for job in live):  # profiles in order of first arrival
            group = [job for job in live if job.key == key]
            try:
                self._run_group(key, group)
            except Exception as exc:  # the engine failed: answer this group's requests, keep serving
                for job in group:
                    self._fail(job, exc)

    def _run_group(self, key: str, jobs: list[_Job]) -> None:
        executor = self.executors[key]
        entries: list[tuple[_Job, int]] = []  # (job, item index) of every item with tokens
        for job in jobs:
            job.rows = [None] * len(job.items)
            for index, item in enumerate(job.items):
                if len(item.ids):
                    entries.append((job, index))
                    job.remaining += 1
                else:  # nothing to compute (possible for token-less text on tokenizers without specials)
                    job.rows[index] = _empty_row(executor)
            if job.remaining == 0:
                self._succeed(job)
        lengths = np.array([len(job.items[index].ids) for job, index in entries], dtype=np.int64)
        for batch in plan_batches(lengths, self.budget):
            rows = []
            for job, index in (entries[row] for row in batch.rows):
                if job.cancelled:  # the client left: skip what has not run yet
                    self._drop(job, 1)
                else:
                    rows.append((job, index))
            if not rows:
                continue
            output = executor.run([job.items[index] for job, index in rows])
            self._count(rows, output)
            for (job, index), row in zip(rows, output.rows, strict=True):
                job.started = True
                job.rows[index] = row
                job.remaining -= 1
                if job.remaining == 0:
                    self._succeed(job)

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
            self.stats.failed_requests += count
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
