"""The single-device runner: chunks of texts in, ``ChunkResult`` out, in order, in this process.

Used for ``--devices cpu`` and for one CUDA device. Same plan and same batch executor as the worker
pool (``pool.py``), so the same corpus gives the same rows either way.

On a CPU with two or more cores a chunk's batches run on two *lanes*: this thread and a helper thread each
take the next batch, with torch's ops on half the cores each. Short-sequence models spend much of a forward in
ops that use several cores poorly (attention over many small matrices, elementwise ops, Python between ops);
two batches at once keep the cores busy through them. Measured on 2 cores, MiniLM, 1,200 docstrings: 8% more
tokens/s in float32, 10% in bfloat16. A batch's rows do not depend on its lane or on the thread count
(``MKL_CBWR``, see ``tokembed/cpu.py``), so the bytes are those of one lane (tested).

On a GPU, ``TOKEMBED_GPU_LANES=2`` runs two lanes on a CUDA stream each, so one lane's forward runs while the
other collates, copies or finishes its batch, and the next chunk is read and tokenized in a helper thread
meanwhile (``planned_ahead``). The host's work is much of a small model's time there (on an H200, MiniLM,
2,533 docstrings in chunks of 2,048, one lane kept the GPU busy 56-66% of the pass), but two lanes measured
only +5-7%, inside the noise, so one lane stays the default. Same bytes either way
(``CUBLAS_WORKSPACE_CONFIG``, see ``tokembed/__init__.py``; tested on the GPU).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from tokembed.engine.device import release_freed_memory
from tokembed.engine.runner import BatchExecutor, ChunkResult, DeviceStats, assemble, plan_chunk

T = TypeVar("T")
R = TypeVar("R")
CPU_LANES = 2  # measured on 2 cores only; more lanes would also hold more batches' activations at once
# On a GPU, lanes are opt-in (TOKEMBED_GPU_LANES=2): on an H200 with MiniLM they gave +5-7% (median of 9
# interleaved passes), inside the host's pass-to-pass noise (104k-165k tokens/s in one case).
GPU_LANES = 1


class LocalRunner:
    """Runs every chunk on one device in the calling process (on ``lanes`` threads: see the module's docstring)."""

    def __init__(self, embedder, batch_tokens: int, progress=None, lanes: int | None = None) -> None:
        self.embedder = embedder
        self.batch_tokens = batch_tokens
        self.label = embedder.device
        self.lanes = default_lanes(embedder.device) if lanes is None else lanes
        self.executor = BatchExecutor(embedder.encoder, embedder.device, log=getattr(progress, "log", lambda message: None),
                                      lane_streams=self.lanes > 1)
        self.device_tokens = getattr(progress, "device_tokens", None)  # optional Progress method
        self.device_stats = {self.label: DeviceStats()}  # busy seconds: summed over the lanes
        self._record_lock = threading.Lock()

    def map_chunks(self, chunks: Iterable[list[str]]) -> Iterator[ChunkResult]:
        encoder = self.embedder.encoder
        on_cpu = self.label == "cpu"

        def plan_of(texts: list[str]):
            return plan_chunk(encoder, texts, self.batch_tokens)

        # A GPU waits while a chunk is read and tokenized: with lanes, plan the next one meanwhile. A CPU has no
        # core to spare for it, and keeps one chunk alive at a time (see encode._encode_stream).
        ahead = not on_cpu and self.lanes > 1
        for plan in planned_ahead(chunks, plan_of) if ahead else map(plan_of, chunks):
            with ops_threads_per_lane(self.lanes if on_cpu else 1):
                outputs = run_on_lanes([plan.batch_items(batch) for batch in plan.batches], self._run, self.lanes)
            yield assemble(encoder, plan, outputs)
            del plan, outputs
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


def planned_ahead(items: Iterable[T], make: Callable[[T], R]) -> Iterator[R]:
    """``map(make, items)``, the next item taken and made in a helper thread while the caller uses this one
    (tokenizers and pyarrow release the GIL). Errors come out in order, where the failing item would have."""
    iterator = iter(items)
    end = object()

    def make_next():
        for item in iterator:
            return make(item)
        return end

    with ThreadPoolExecutor(1, thread_name_prefix="tokembed-plan") as helper:
        pending = helper.submit(make_next)
        while (made := pending.result()) is not end:
            pending = helper.submit(make_next)
            yield made
            del made


def default_lanes(device: str) -> int:
    """Lanes for ``device``: ``CPU_LANES`` on a CPU with at least that many threads, ``GPU_LANES`` on a GPU
    (``TOKEMBED_CPU_LANES`` / ``TOKEMBED_GPU_LANES`` override: 1 turns the lanes off, e.g. to hold one batch's
    activations at a time)."""
    import os

    import torch

    on_cpu = device == "cpu"
    name = "TOKEMBED_CPU_LANES" if on_cpu else "TOKEMBED_GPU_LANES"
    setting = os.environ.get(name, str(CPU_LANES if on_cpu else GPU_LANES))
    if not (setting.isascii() and setting.isdigit()) or int(setting) < 1:  # int() refuses "²"
        from tokembed.errors import UsageError

        raise UsageError(f"{name} must be a whole number >= 1; got {setting!r}")
    return max(1, min(int(setting), torch.get_num_threads())) if on_cpu else int(setting)


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
