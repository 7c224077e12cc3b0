"""Fault injection for tests only: ``TOKEMBED_TEST_KILL_AT=event:N`` SIGKILLs the process, and
``TOKEMBED_TEST_PAUSE_AT=event:N`` sleeps, when ``event`` happens for the N-th time (``event`` alone
matches every time). Events: ``write`` (rows appended to an open shard), ``shard`` (a shard finished
and journaled), ``commit`` (just before the manifest is replaced), ``committed`` (just after, before the
journal and replaced files are removed; SIGINT/SIGTERM are held there), ``codes`` (a shard's code file
written), ``drop`` (a shard rewritten without its vectors, ``--drop-vectors``), ``render`` (a ``--pdf-workers``
process takes page N of a PDF: the worker dies, not the run), ``export`` (an export has written its N-th
shard, into its staging folder), ``load`` (worker process or Ray actor N-1 is about to load its model: it
pauses or dies, not the run), ``returned`` (the CLI command returned, its summary printed) and ``exiting``
(``tokembed`` is about to exit with its code). Unset in normal use: costs one environment lookup per event.

Engine faults: ``TOKEMBED_TEST_WORKER_DIE_AT=W:N`` makes worker process W (0-based) SIGKILL itself when it
takes its N-th batch (1-based); ``TOKEMBED_TEST_OOM_ABOVE=T`` makes any batch of more than T padded tokens
raise ``torch.OutOfMemoryError`` before its forward pass, in worker processes and in-process alike;
``TOKEMBED_TEST_OOM_FORM=cpu`` raises the CPU allocator's ``RuntimeError`` instead, ``=memory`` a ``MemoryError``.
"""

from __future__ import annotations

import os
import signal
import time

KILL_ENV = "TOKEMBED_TEST_KILL_AT"
PAUSE_ENV = "TOKEMBED_TEST_PAUSE_AT"
WORKER_DIE_ENV = "TOKEMBED_TEST_WORKER_DIE_AT"
OOM_ENV = "TOKEMBED_TEST_OOM_ABOVE"
OOM_FORM_ENV = "TOKEMBED_TEST_OOM_FORM"


def fault_point(event: str, count: int) -> None:
    if _matches(os.environ.get(KILL_ENV), event, count):
        os.kill(os.getpid(), signal.SIGKILL)
    if _matches(os.environ.get(PAUSE_ENV), event, count):
        time.sleep(float(os.environ.get("TOKEMBED_TEST_PAUSE_SECONDS", "60")))


def _matches(wanted: str | None, event: str, count: int) -> bool:
    return bool(wanted) and wanted in (f"{event}:{count}", event)


def worker_fault_point(worker: int, batch: int) -> None:
    """Worker ``worker`` takes its ``batch``-th batch: die here if the test asked for it."""
    if os.environ.get(WORKER_DIE_ENV) == f"{worker}:{batch}":
        os.kill(os.getpid(), signal.SIGKILL)


def simulated_oom(padded_tokens: int) -> None:
    """Raise the out-of-memory error torch raises when a batch is larger than the test's limit."""
    limit = os.environ.get(OOM_ENV)
    if not limit or padded_tokens <= int(limit):
        return
    form = os.environ.get(OOM_FORM_ENV, "torch")
    if form == "cpu":  # what torch's CPU allocator raises (no subclass of its own)
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           f"you tried to allocate {padded_tokens * 6144} bytes. Error code 12 (Cannot allocate memory)")
    if form == "memory":
        raise MemoryError()
    import torch

    raise torch.OutOfMemoryError(f"simulated: {padded_tokens} padded tokens > {limit}")
