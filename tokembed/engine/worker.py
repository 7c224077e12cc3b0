"""What runs inside a worker process of the pool (``pool.py``): load the model once, then run each batch the
main process sends through the same ``BatchExecutor`` as ``LocalRunner``.

    receiver thread: task pipe -> inbox      main loop: inbox -> BatchExecutor.run -> outbox
    sender thread: outbox -> result pipe     (results go out while the next batch computes)

Messages back: ``("ready", attention)``, ``("log", text)``, ``("done", key, output)``,
``("error", key or None, exception, traceback)``.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import traceback

from tokembed.engine.runner import BatchExecutor
from tokembed.parent_death import die_with_parent


def worker_main(index: int, label: str, device: str, threads: int, spec, tasks, results) -> None:
    """Load the model once, then run every batch received until told to stop (``None``) or orphaned (EOF)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the main process decides
    die_with_parent(multiprocessing.parent_process().pid)  # a model loading must not outlive a SIGKILLed run
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    sender = threading.Thread(target=_send_all, args=(outbox, results), daemon=True)
    sender.start()  # results go out while the next batch computes
    try:
        _run_batches(index, label, device, threads, spec, tasks, outbox)
    except BaseException as exc:
        outbox.put(("error", None, *_portable(exc)))
    outbox.put(None)
    sender.join()  # everything is on the pipe now
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip tearing down torch and transformers: up to a second per worker, nothing left to save


def _run_batches(index: int, label: str, device: str, threads: int, spec, tasks, outbox) -> None:
    import torch

    from tokembed._testhooks import fault_point, worker_fault_point

    torch.set_num_threads(threads)
    fault_point("load", index + 1)
    embedder = spec.load(device)
    executor = BatchExecutor(embedder.encoder, device, log=lambda message: outbox.put(("log", message)), label=label)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_receive_all, args=(tasks, inbox), daemon=True).start()
    backbone = getattr(embedder.model, "backbone", None) or getattr(embedder.model, "model", None)  # text / image model
    attention = getattr(getattr(backbone, "config", None), "_attn_implementation", None)
    outbox.put(("ready", attention))
    taken = 0
    while (task := inbox.get()) is not None:
        if not task.prepare:
            taken += 1
            worker_fault_point(index, taken)
        try:
            if task.prepare:  # by value: tensors would otherwise travel as shared-memory file descriptors
                output = pickle.dumps(embedder.encoder.tokenize(task.items), protocol=pickle.HIGHEST_PROTOCOL)
            else:
                output = executor.run(task.items)
        except BaseException as exc:
            outbox.put(("error", task.key, *_portable(exc)))
            return
        outbox.put(("done", task.key, output))


def _receive_all(tasks, inbox: queue.SimpleQueue) -> None:
    """Move tasks off the pipe as they come, so the main process never blocks sending one."""
    try:
        while True:
            task = tasks.recv()
            inbox.put(task)
            if task is None:
                return
    except (EOFError, OSError):  # the main process is gone: stop after the current batch
        inbox.put(None)


def _send_all(outbox: queue.SimpleQueue, results) -> None:
    while (message := outbox.get()) is not None:
        try:
            results.send(message)
        except OSError:  # the main process is gone
            return


def _portable(exc: BaseException) -> tuple[BaseException, str]:
    """The exception (or a picklable stand-in) and its traceback, to send to the main process."""
    trace = "".join(traceback.format_exception(exc)[-6:]).rstrip()
    try:
        pickle.dumps(exc)
        return exc, trace
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}"), trace
