"""The worker pool: one process per device, one shared queue of token-budget batches, rows back in order.

    main process                                        worker process (spawn; one per device; worker.py)
    map_chunks: read -> tokenize -> plan (this thread)  receiver thread: task pipe -> inbox
      at most MAX_CHUNKS chunks planned ahead           main loop: inbox -> BatchExecutor.run -> outbox
    dispatcher thread: pending batches -> the worker    sender thread: outbox -> result pipe
      with room (PREFETCH each); results, logs and
      deaths (process sentinels) come back here
    map_chunks yields chunk k once all its batches are back: the caller is the single writer.

Determinism: the main process tokenizes and plans (``runner.plan_chunk``), so the batches are the same
whatever the number of workers. Image models' processors (resize, pixel tensors) cost more than many a
forward, so their items go to the workers first, one per task, ahead of queued batches; the main process
plans on what comes back (``runner.plan_items``): the items it would have made itself. A worker runs
exactly the batch it is sent through the same ``BatchExecutor`` as ``LocalRunner``, so every row gets the
same floats from 1, 2 or N workers, or in process. Faster devices simply come back sooner and are sent more batches.

Faults: a batch that runs out of memory is split in the worker (``BatchExecutor``). A worker that dies is
seen through its process sentinel (or a broken pipe); the batches it held go back to the front of the
queue for the others, or, with none left, the run fails with ``DeviceError``. Every pipe is private to
one worker, so a worker killed mid-message corrupts nothing shared; ``close()`` always terminates and
joins every worker.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tokembed.engine.runner import ChunkResult, ChunkPlan, DeviceStats, assemble, plan_chunk, plan_items
from tokembed.engine.worker import worker_main
from tokembed.errors import DeviceError, TokembedError
from tokembed.models.steps import TextEncoder

MAX_CHUNKS = 2  # chunks planned and queued ahead of the writer: overlap with bounded memory
PREFETCH = 2  # batches a worker holds (one computing, one waiting): no idle round trip between batches
STOP_SECONDS = 10.0  # how long a finished run waits for workers to exit before terminating them


def worker_threads(workers: int) -> int:
    """Torch threads per worker: the cores split evenly.

    This does not change any float: on the CPU, MKL/oneDNN GEMMs split the *output* matrix across threads
    (each dot product is reduced by one thread, in one order) and ATen reduces each row of LayerNorm and
    softmax in one thread. Checked bitwise on all-MiniLM-L6-v2, float32 and bfloat16, with 1 to 4 threads,
    and by ``tests/test_devices.py`` (``cpu`` = 2 threads vs ``cpu:2``/``cpu:3`` = 1 thread per worker).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


@dataclass
class _Task:
    key: tuple[int, int]  # (chunk sequence number, batch index in that chunk's plan, or item index to prepare)
    items: list  # [Tokenized], longest first; to prepare: [one raw input]
    prepare: bool = False  # run the processor on the item, not the model

    def describe(self) -> str:
        if self.prepare:
            return f"item {self.key[1] + 1} of chunk {self.key[0] + 1} (to process)"
        width = max(len(item.ids) for item in self.items)
        return f"batch {self.key[1] + 1} of chunk {self.key[0] + 1} ({len(self.items)} rows x {width} tokens)"


class _ChunkJob:
    def __init__(self, seq: int, plan: ChunkPlan | None, parts: int) -> None:
        self.seq = seq
        self.plan = plan  # None: a chunk's items being prepared, one part each
        self.outputs: list = [None] * parts
        self.missing = parts


def _start_ignoring_ctrl_c(process) -> None:
    """Start a worker with SIGINT ignored, which survives its exec: Ctrl-C reaches the whole process group, and a
    worker still importing torch (seconds before ``worker_main`` ignores it) printed a KeyboardInterrupt traceback.
    The main thread blocks SIGINT meanwhile, so that a Ctrl-C of those milliseconds stays pending for its own
    handler (Linux never discards a blocked signal) instead of being ignored."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        # only the main thread may set handlers, and one installed outside Python could not be put back
        process.start()
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class _Worker:
    """The main process's handle on one worker process."""

    def __init__(self, ctx, index: int, label: str, device: str, threads: int, spec) -> None:
        self.index, self.label = index, label
        task_reader, self.tasks = ctx.Pipe(duplex=False)
        self.results, result_writer = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=worker_main,
            args=(index, label, device, threads, spec, task_reader, result_writer),
            name=f"tokembed-worker-{label}",
            daemon=True,
        )
        _start_ignoring_ctrl_c(self.process)
        # Only the worker keeps these ends: its death then reads as EOF here, and a send to it as a broken pipe.
        task_reader.close()
        result_writer.close()
        self.held: dict[tuple[int, int], _Task] = {}  # sent, not yet back, in the order sent
        self.ready = False  # its model is loaded
        self.alive = True
        self.broken = False  # a send failed: dying, its sentinel will tell

    @property
    def name(self) -> str:
        return f"worker {self.index} ({self.label})"


class PoolRunner:
    """Runs chunks on several devices, one worker process each; same interface as ``LocalRunner``."""

    def __init__(self, spec, labels: tuple[str, ...], encoder, batch_tokens: int, progress=None) -> None:
        import multiprocessing

        from tokembed.engine.device import torch_device

        self.encoder = encoder  # the main process's: tokenize and plan only
        # Image (and video) documents: the model's processor runs on the workers. Queries are short texts: processed here.
        self._workers_prepare = not isinstance(encoder, TextEncoder) and encoder.settings.kind == "document"
        self.batch_tokens = batch_tokens
        self._log = getattr(progress, "log", None) or (lambda message: None)
        self._device_tokens = getattr(progress, "device_tokens", None)  # optional Progress method
        self.device_stats = {label: DeviceStats() for label in labels}
        self._lock = threading.RLock()  # pool state: pending batches, jobs, workers' held batches
        self._cond = threading.Condition(self._lock)
        self._pending: deque[_Task] = deque()
        self._jobs: dict[int, _ChunkJob] = {}
        self._next_seq = 0
        self._error: BaseException | None = None
        self._stopping = self._finished = self._closed = False
        self._started = time.perf_counter()
        self.ready_at: float | None = None  # when every live worker first had its model loaded (perf_counter)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        threads = worker_threads(len(labels))
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe with CUDA and with torch's thread pools
        self._workers: list[_Worker] = []
        try:
            for index, label in enumerate(labels):
                self._workers.append(_Worker(ctx, index, label, torch_device(label), threads, spec))
        except BaseException:
            self.close()
            raise
        self._log(f"devices: {', '.join(labels)}: one worker process each, {threads} torch thread(s) per worker")
        self._thread = threading.Thread(target=self._serve, name="tokembed-dispatch", daemon=True)
        self._thread.start()

    # -- main thread ---------------------------------------------------------------------------
    def map_chunks(self, chunks: Iterable[list[str]]) -> Iterator[ChunkResult]:
        source = iter(chunks)
        in_flight: deque[_ChunkJob] = deque()
        exhausted = False
        while True:
            # Read, tokenize and plan ahead while the workers compute; at most MAX_CHUNKS chunks wait.
            while not exhausted and len(in_flight) < MAX_CHUNKS:
                texts = next(source, None)
                if texts is None:
                    exhausted = True
                else:
                    in_flight.append(self._submit(self._plan(texts)))
                    del texts  # a finished chunk's inputs are not kept alive by this name (see encode._encode_stream)
            if not in_flight:
                self._finished = True
                return
            job = in_flight.popleft()
            self._wait(job)
            yield assemble(self.encoder, job.plan, job.outputs)
            del job

    def _plan(self, inputs: list) -> ChunkPlan:
        if not self._workers_prepare or not inputs:
            return plan_chunk(self.encoder, inputs, self.batch_tokens)
        tasks = [_Task((self._next_seq, i), [value], prepare=True) for i, value in enumerate(inputs)]
        # Ahead of the batches queued: the next plan is needed soon. The chunk's batches reuse its number (``advance``):
        # every item is back, and no task of this job is left anywhere, before they are queued.
        job = self._enqueue(None, tasks, front=True, advance=False)
        self._wait(job)
        return plan_items([item for part in job.outputs for item in part], self.batch_tokens)

    def _submit(self, plan: ChunkPlan) -> _ChunkJob:
        return self._enqueue(plan, [_Task((self._next_seq, i), plan.batch_items(batch)) for i, batch in enumerate(plan.batches)])

    def _enqueue(self, plan: ChunkPlan | None, tasks: list[_Task], front: bool = False, advance: bool = True) -> _ChunkJob:
        with self._lock:  # only this (main) thread adds jobs, so ``_next_seq`` did not move since the tasks were keyed
            self._raise_if_failed()
            job = _ChunkJob(self._next_seq, plan, len(tasks))
            self._next_seq += advance
            self._jobs[job.seq] = job
            if front:
                self._pending.extendleft(reversed(tasks))
            else:
                self._pending.extend(tasks)
        self._wake()
        return job

    def _wait(self, job: _ChunkJob) -> None:
        with self._cond:
            while job.missing and self._error is None:
                if not self._thread.is_alive():
                    self._error = DeviceError("the dispatcher thread of the worker pool stopped")
                    break
                self._cond.wait(timeout=1.0)
            self._raise_if_failed()
            del self._jobs[job.seq]

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop every worker: gracefully after a finished run, at once otherwise (error, interrupt)."""
        if self._closed:
            return
        self._closed = True
        graceful = self._finished and self._error is None
        self._stopping = True
        self._wake()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout=5)
        for worker in self._workers:
            if graceful:
                try:
                    worker.tasks.send(None)
                except OSError:
                    pass
            else:
                worker.process.terminate()
        deadline = time.monotonic() + (STOP_SECONDS if graceful else 2.0)
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.tasks.close()
            worker.results.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):  # already awake (pipe full) or closed
            pass

    # -- dispatcher thread ---------------------------------------------------------------------
    def _serve(self) -> None:
        from multiprocessing.connection import wait

        try:
            while not self._stopping and self._error is None:
                with self._lock:
                    self._dispatch()
                owners = {}
                for worker in self._workers:
                    if worker.alive:
                        owners[worker.results] = owners[worker.process.sentinel] = worker
                for ready in wait([*owners, self._wake_r], timeout=1.0):
                    if ready == self._wake_r:  # a file descriptor (int); connections compare by identity
                        _drain_fd(self._wake_r)
                        continue
                    worker = owners[ready]
                    if worker.alive and not self._stopping:
                        self._receive(worker, exited=ready is not worker.results)
        except BaseException as exc:  # a bug here must fail the run, not hang it
            self._fail(DeviceError(f"worker pool dispatcher failed: {type(exc).__name__}: {exc}"))

    def _dispatch(self) -> None:
        alive = [worker for worker in self._workers if worker.alive]
        # Start once every worker has its model loaded, so the first batches spread over all devices.
        if self._error is not None or not all(worker.ready for worker in alive):
            return
        self.ready_at = self.ready_at or time.perf_counter()
        while self._pending:
            room = [w for w in alive if w.alive and not w.broken and len(w.held) < PREFETCH]
            if not room:
                return
            worker = min(room, key=lambda w: len(w.held))
            task = self._pending.popleft()
            try:
                # Pickled by value: an image batch's pixel tensors would otherwise travel as shared-memory
                # file descriptors (torch's reducers), one per tensor, which the worker must map and close.
                worker.tasks.send_bytes(pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:  # the worker is gone; its sentinel fires and its batches are re-queued
                self._pending.appendleft(task)
                worker.broken = True
                continue
            worker.held[task.key] = task

    def _receive(self, worker: _Worker, exited: bool) -> None:
        """Handle what ``worker`` sent; if it exited (or its pipe ended), read what is left, then bury it."""
        while True:
            try:
                if exited and not worker.results.poll():
                    break
                message = worker.results.recv()
            except (EOFError, OSError):  # EOF, or a message cut short by the worker's death
                exited = True
                break
            with self._lock:
                self._handle(worker, message)
            if not exited:
                break
        if exited:
            with self._lock:
                self._lost(worker)

    def _handle(self, worker: _Worker, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            worker.ready = True
            if all(w.ready for w in self._workers if w.alive):
                self._log(f"workers ready after {time.perf_counter() - self._started:.1f}s (attention: {message[1]})")
        elif kind == "log":
            self._log(message[1])
        elif kind == "done":
            _, key, output = message
            task = worker.held.pop(key, None)
            job = self._jobs.get(key[0])
            if task is None or job is None or job.outputs[key[1]] is not None:
                return
            if task.prepare:
                output = pickle.loads(output)  # [Prepared], pixel tensors sent by value
            else:
                real = sum(len(item.ids) for item in task.items)
                self.device_stats[worker.label].add(output, real)
                if self._device_tokens is not None:
                    self._device_tokens(worker.label, real)
            job.outputs[key[1]] = output
            job.missing -= 1
            if not job.missing:
                self._cond.notify_all()
        elif kind == "error":
            _, key, exc, trace = message
            task = worker.held.get(key) if key is not None else None
            where = task.describe() if task is not None else "while loading the model"
            if isinstance(exc, TokembedError):
                self._fail(exc)
            else:
                self._fail(DeviceError(f"{worker.name} failed on {where}: {type(exc).__name__}: {exc}\n{trace}"))

    def _lost(self, worker: _Worker) -> None:
        """``worker`` died: re-queue what it held to the others, or fail the run when none is left."""
        if not worker.alive:
            return
        worker.alive = False
        worker.process.join(timeout=5)
        how = _exit_reason(worker.process.exitcode)
        held = list(worker.held.values())
        worker.held.clear()
        if self._stopping or self._error is not None:
            return
        holding = f"holding {held[0].describe()}" if held else "holding no batch"
        if len(held) > 1:
            holding += f" and {len(held) - 1} more"
        survivors = [w for w in self._workers if w.alive]
        if not survivors:
            hint = "a worker killed by SIGKILL was often stopped by the kernel's out-of-memory killer: lower --batch-tokens or use fewer workers" if "SIGKILL" in how else None
            self._fail(DeviceError(f"{worker.name} died ({how}) {holding}; no worker is left", hint=hint))
            return
        self._pending.extendleft(reversed(held))
        self._log(f"{worker.name} died ({how}) {holding}; re-queued {len(held)} batch(es) to {len(survivors)} remaining worker(s)")

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = error
            self._cond.notify_all()


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, OSError):
        pass


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running, unresponsive"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
