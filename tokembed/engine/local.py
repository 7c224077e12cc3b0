"""The single-device runner: chunks of texts in, ``ChunkResult`` out, in order, in this process.

Used for ``--devices cpu`` and for one CUDA device. Same plan and same batch executor as the worker
pool (``pool.py``), so the same corpus gives the same rows either way.

On a CPU with two or more cores a chunk's batches run on two *lanes*: this thread and a helper thread each
take the next batch, with torch's ops on half the cores each. Short-sequence models spend much of a forward in
ops that use several cores poorly (attention over many small matrices, elementwise ops, Python between ops);
two batches at once keep the cores busy through them. Measured on 2 cores, MiniLM, 1,200 docstrings: 8% more
tokens/s in float32, 10% in bfloat16. A batch's rows do not depend on its lane or on the thread count
(``MKL_CBWR``, see ``tokembed/cpu.py``), so the bytes are those of one lane (tested).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from tokembed.engine.device import release_freed_memory
from tokembed.engine.runner import BatchExecutor, ChunkResult, DeviceStats, assemble, plan_chunk

T = TypeVar("T")
R = TypeVar("R")
CPU_LANES = 2  # measured on 2 cores only; more lanes would also hold more batches' activations at once


class LocalRunner:
    """Runs every chunk on one device in the calling process (on ``lanes`` threads: see the module's docstring)."""

    def __init__(self, embedder, batch_tokens: int, progress=None, lanes: int | None = None) -> None:
        self.embedder = embedder
        self.batch_tokens = batch_tokens
        self.label = embedder.device
        self.executor = BatchExecutor(embedder.encoder, embedder.device, log=getattr(progress, "log", lambda message: None))
        self.device_tokens = getattr(progress, "device_tokens", None)  # optional Progress method
        self.device_stats = {self.label: DeviceStats()}  # busy seconds: summed over the lanes
        self.lanes = default_lanes(embedder.device) if lanes is None else lanes
        self._record_lock = threading.Lock()

    def map_chunks(self, chunks: Iterable[list[str]]) -> Iterator[ChunkResult]:
        encoder = self.embedder.encoder
        for texts in chunks:
            plan = plan_chunk(encoder, texts, self.batch_tokens)
            with ops_threads_per_lane(self.lanes):
                outputs = run_on_lanes([plan.batch_items(batch) for batch in plan.batches], self._run, self.lanes)
            yield assemble(encoder, plan, outputs)
            del texts, plan, outputs  # one chunk alive at a time (see encode._encode_stream)
            release_freed_memory()

    def _run(self, items):
        output = self.executor.run(items)
        real = sum(len(item.ids) for item in items)
        with self._record_lock:
            self.device_stats[self.label].add(output, real)
            if self.device_tokens is not None:
                self.device_tokens(self.label, real)
        return output

    def close(self) -> None:
        pass


def default_lanes(device: str) -> int:
    """Lanes for ``device``: ``CPU_LANES`` on a CPU with at least that many threads (``TOKEMBED_CPU_LANES``
    overrides: 1 turns the lanes off, e.g. to hold one batch's activations at a time), one on a GPU."""
    if device != "cpu":
        return 1  # a GPU runs one stream of batches
    import os

    import torch

    setting = os.environ.get("TOKEMBED_CPU_LANES", str(CPU_LANES))
    if not setting.isdigit() or int(setting) < 1:
        from tokembed.errors import UsageError

        raise UsageError(f"TOKEMBED_CPU_LANES must be a whole number >= 1; got {setting!r}")
    return max(1, min(int(setting), torch.get_num_threads()))


@contextmanager
def ops_threads_per_lane(lanes: int):
    """torch's intra-op threads divided between the lanes while they run, restored after."""
    if lanes <= 1:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // lanes))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_on_lanes(jobs: Sequence[T], run: Callable[[T], R], lanes: int) -> list[R]:
    """``[run(job) for job in jobs]``, the jobs taken in order by ``lanes`` threads (this one among them).

    The first error stops the lanes after their current job and is raised here, once every helper has ended.
    """
    if lanes <= 1 or len(jobs) <= 1:
        return [run(job) for job in jobs]
    results: list = [None] * len(jobs)
    taken = iter(range(len(jobs)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def lane() -> None:
        while not errors:
            with lock:
                index = next(taken, None)
            if index is None:
                return
            try:
                results[index] = run(jobs[index])
            except BaseException as error:  # noqa: BLE001 - re-raised by the caller's thread
                errors.append(error)

    helpers = [threading.Thread(target=lane, name=f"tokembed-lane-{n + 1}", daemon=True) for n in range(lanes - 1)]
    for helper in helpers:
        helper.start()
    try:
        lane()
    except BaseException as error:  # a KeyboardInterrupt in this thread: stop the helpers too
        errors.append(error)
    finally:
        for helper in helpers:
            helper.join()
    if errors:
        raise errors[0]
    return results
