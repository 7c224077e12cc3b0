"""The encoding engine: sorted-length token-budget batches, run on one or more devices, rows back in input order.

``open_runner`` picks the runner for ``--engine`` and ``--devices``: ``LocalRunner`` (one device, in this
process), ``PoolRunner`` (one worker process per device) or, with ``--engine ray``, ``RayRunner`` (Ray actors
on a cluster, ``ray.py``). All take chunks of texts or images and yield ``ChunkResult`` in order, and both report to the caller's progress object: ``log(message)``, and, when the object has it,
the optional ``device_tokens(device, tokens)`` (real tokens each device finished), which older progress
objects simply lack. A runner whose workers load the model themselves has ``ready_at``: the ``perf_counter`` at
which they all had it loaded (None until then), which ``encode_corpus`` counts in ``load_seconds``.
"""

from __future__ import annotations


def open_runner(embedder, job, progress=None):
    """The runner for ``job.devices`` (also reads ``job.batch_tokens``, ``job.flags``, ``job.trust_remote_code``).

    ``embedder`` is the main process's: it tokenizes and plans for the pool (workers rebuild their own from
    ``embedder.spec``), and runs the batches itself for a single device.
    """
    from tokembed.engine.device import parse_devices

    if getattr(job, "engine", "local") == "ray":
        from tokembed.engine.ray import RayRunner

        return RayRunner(embedder.spec(job.flags, job.trust_remote_code), job, embedder.encoder, progress)
    devices = parse_devices(job.devices)
    if not devices.workers or _daemonic(job.devices, devices.first, progress):
        from tokembed.engine.local import LocalRunner

        return LocalRunner(embedder, job.batch_tokens, progress)
    from tokembed.engine.pool import PoolRunner

    if embedder.device.startswith("cuda"):
        _release_main_copy(embedder)
    spec = embedder.spec(job.flags, job.trust_remote_code)
    return PoolRunner(spec, devices.labels, embedder.encoder, job.batch_tokens, progress)


def _daemonic(spec: str, first: str, progress) -> bool:
    """A daemonic process (a ``multiprocessing.Pool`` worker) may not start worker processes: it runs on the first
    device in process instead, saying so (the same bytes: the batch plan never depends on the worker count)."""
    import multiprocessing

    if not multiprocessing.current_process().daemon:
        return False
    log = getattr(progress, "log", None) or (lambda message: None)
    log(f"warning: --devices {spec}: this is a daemonic process (a multiprocessing.Pool worker), "
        f"which may not start worker processes: running in this process on {first} alone")
    return True


def _release_main_copy(embedder) -> None:
    """The workers hold the weights on their GPUs; the main process only tokenizes, so its copy leaves cuda:0."""
    import torch

    embedder.model.to("cpu")
    torch.cuda.empty_cache()
