"""``--engine ray``: the local engine's chunks, encoded by Ray actors on a Ray cluster.

    driver (tokembed encode, holds the lock)               actor (one per GPU, or per share of a node's cores)
      reads, plans, journals, closes shards, commits         loads the model once (``EmbedderSpec``)
      map_chunks: chunk k -> the actor with the fewest       encode: processor/tokenizer, sorted-length batches
        in flight (at most IN_FLIGHT each: back-pressure)      (``plan_chunk``), forward (``BatchExecutor``),
      yields chunk k, in order, once its staged file is        rows in input order (``assemble``) -> a staged
        back; the driver's ``IndexWriter`` writes the rows     Arrow file on the index's shared storage

Same bytes as ``--engine local``: an actor runs exactly what ``LocalRunner`` runs on one chunk (same plan,
same executor), and the driver writes shards with the same writer, in the same order. With several actors a
text chunk is shared out at the boundaries of its own batch plan (the driver plans it, each actor re-plans it
and runs one contiguous range of its batches): a corpus of few chunks keeps every actor busy, and every batch
is still the batch ``LocalRunner`` runs (smaller chunks would change the batches, hence the last bits).

Staged files live in ``INDEX_DIR/staging/chunk-<key>.arrow``, ``key`` = sha256 of the model, the settings,
the token budget and each of the chunk's inputs' own sha256 (and, for a part of a chunk, its range of batches).
They are written under a temp name, fsynced and renamed, so a retried chunk (its actor died) overwrites nothing
half-done, and an actor that finds its chunk's file already there, recording that key, reuses it: after a SIGKILL
of the driver, the next run re-reads the chunks already staged, their tokens counted as the interrupted run's
(``as_resumed``). The folder is removed when a run finishes.

Faults: an actor that dies is restarted (``max_restarts``) and the chunks it held are retried
(``max_task_retries``); with retries exhausted the run fails with ``DeviceError`` (exit 9) and the driver
removes its unfinished shards as for any failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from tokembed.engine.runner import ChunkPlan, ChunkResult, DeviceStats, plan_chunk
from tokembed.engine.ray_cluster import ActorPlan, connect, plan_actors
from tokembed.engine.ray_staging import chunk_key, read_staged, staged_key, write_staged
from tokembed.errors import DeviceError, TokembedError
from tokembed.index.format import STAGING_DIR as STAGING
from tokembed.locale_names import names_read_as_utf8
from tokembed.models.steps import TextEncoder
from tokembed.sources.video import Video

IN_FLIGHT = 2  # chunks queued per actor: one computing, one waiting (no idle round trip)
ACTOR_RETRIES = 3  # restarts of a dead actor, and retries of the chunks it held
# A chunk's counts that are its parts' sum (some parts may be reused staged files, others computed this run)
_PART_COUNTS = ("real_tokens", "computed_tokens", "resumed_real_tokens", "resumed_computed_tokens")
# Environment an actor inherits from the driver: offline hub settings, caches, test fault hooks.
_PASSED_ENV = ("TOKEMBED_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
# Those of them that name a folder or file: passed absolute, as the driver resolves them.
_PATH_ENV = ("TOKEMBED_CACHE", "HF_HOME", "HF_HUB_CACHE", "HF_ASSETS_CACHE", "HF_TOKEN_PATH", "TRANSFORMERS_CACHE")


# -- planning a chunk's parts ----------------------------------------------------------------------
def batch_ranges(plan: ChunkPlan, parts: int) -> list[tuple[int, int]]:
    """``plan.batches`` cut into at most ``parts`` contiguous, non-empty ranges of about equal padded tokens."""
    parts = min(parts, len(plan.batches))
    done = np.cumsum([batch.computed_tokens for batch in plan.batches])
    bounds = [0]
    for k in range(1, parts):
        cut = int(np.searchsorted(done, done[-1] * k / parts)) + 1  # just after the batch that reaches k/parts
        bounds.append(min(max(cut, bounds[-1] + 1), len(plan.batches) - (parts - k)))
    bounds.append(len(plan.batches))
    return list(zip(bounds[:-1], bounds[1:]))


# -- the actor -----------------------------------------------------------------------------------
class ChunkWorker:
    """A Ray actor: loads the model once, then encodes whole chunks into staged files."""

    def __init__(self, spec, index: int, device: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.index, self.device, self.taken = index, device, 0
        self.node = socket.gethostname()
        self.restarted = _restarted()
        self.error: BaseException | None = None
        try:
            from tokembed._testhooks import fault_point

            fault_point("load", index + 1)
            refuse_names_this_actor_misreads(self.node, [spec.model, spec.flags.base_model])
            self.embedder = spec.load(device)
        except BaseException as exc:  # reported by the first chunk, as the error it is (a model error: exit 4)
            self.error = exc

    def loaded(self) -> bool:
        """Answered once the actor's ``__init__`` (its model load) is done: the driver's ``RayRunner.ready_at``."""
        return self.error is None

    def encode(self, key: str, inputs: list, budget: int, staging: str, batches: tuple[int, int] | None = None) -> dict:
        """Encode the chunk ``inputs`` (or only ``batches``, a range of its plan's batches: their rows in plan order)."""
        from tokembed.engine.runner import BatchExecutor, assemble

        self.taken += 1
        self._fault_point()
        if self.error is not None:
            raise self.error
        refuse_names_this_actor_misreads(self.node, [staging, *(value.path for value in inputs if isinstance(value, Video))])
        folder = Path(staging)
        if not folder.is_dir():
            raise DeviceError(f"node {self.node}: the index's staging folder {folder} is not there: the index must be on storage every node shares")
        path = folder / f"chunk-{key}.arrow"
        label = f"{self.node}/{self.device}#{self.index}"
        encoder = self.embedder.encoder
        if staged_key(path) != key:  # none yet, or not written for this key (cut short, an earlier release's): encode it
            logs: list[str] = []
            executor = BatchExecutor(encoder, self.device, log=logs.append, label=label)
            plan = plan_chunk(encoder, inputs, budget)
            chosen = plan.batches if batches is None else plan.batches[batches[0] : batches[1]]
            outputs = [executor.run(plan.batch_items(batch)) for batch in chosen]
            if batches is None:
                result = assemble(encoder, plan, outputs)
            else:
                real = sum(len(item.ids) for batch in chosen for item in plan.batch_items(batch))
                rows = [row for output in outputs for row in output.rows]
                result = ChunkResult([v for v, _ in rows], [i for _, i in rows], real, sum(o.computed_tokens for o in outputs),
                                     max(o.largest_batch for o in outputs))
            write_staged(path, result, encoder.output_dim, self.embedder.settings.store_dtype, key)
            busy = sum(output.busy_seconds for output in outputs)
            return {"path": str(path), "label": label, "logs": logs, "busy_seconds": busy, "batches": len(outputs), "reused": False}
        return {"path": str(path), "label": label, "logs": [], "busy_seconds": 0.0, "batches": 0, "reused": True}

    def _fault_point(self) -> None:
        """Tests only: ``TOKEMBED_TEST_WORKER_DIE_AT=W:N`` SIGKILLs actor W on its N-th chunk, in its first life
        only (Ray resends retried chunks in no fixed order, so a per-life count would not say which chunk
        dies); ``W:N:every`` in every life (exhausts the restarts)."""
        from tokembed._testhooks import WORKER_DIE_ENV

        wanted = os.environ.get(WORKER_DIE_ENV, "")
        every = wanted.endswith(":every")
        if wanted.removesuffix(":every") == f"{self.index}:{self.taken}" and (every or not self.restarted):
            os.kill(os.getpid(), signal.SIGKILL)


def _restarted() -> bool:
    """Whether this actor is a restarted one (False outside Ray)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():  # get_runtime_context() would connect to a cluster itself
        return False
    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # a driver, not an actor
        return False


# -- the driver's runner -----------------------------------------------------------------------------
class RayRunner:
    """Same interface as ``LocalRunner``: chunks of inputs in, ``ChunkResult`` out, in order."""

    def __init__(self, spec, job, encoder, progress=None) -> None:
        self.encoder = encoder
        self._share_chunks = isinstance(encoder, TextEncoder)  # text: cheap to plan here and again on each actor
        self.batch_tokens = job.batch_tokens
        self._log = getattr(progress, "log", None) or (lambda message: None)
        self._device_tokens = getattr(progress, "device_tokens", None)
        self.staging = Path(job.output).absolute() / STAGING  # an actor runs in the folder `ray start` ran in
        self.device_stats: dict[str, DeviceStats] = {}
        self._prefix = f"{spec.fingerprint}\0{spec.weights_sha256}\0{spec.settings!r}\0{job.batch_tokens}\0".encode()
        self._actors: list = []
        self._held: list[int] = []
        self._finished = False
        self.ready_at: float | None = None  # when every actor first had its model loaded (perf_counter)
        self._ready_watch: threading.Thread | None = None
        self._address, self._owns_connection = connect(getattr(job, "ray_address", None))
        try:
            plan = plan_actors(job.devices)
            self.staging.mkdir(parents=True, exist_ok=True)
            self._start_actors(spec, plan)
        except BaseException:
            self.close()
            raise

    def _start_actors(self, spec, plan: ActorPlan) -> None:
        import ray

        options = {
            "num_cpus": plan.num_cpus,
            "num_gpus": plan.num_gpus,
            "max_restarts": ACTOR_RETRIES,
            "max_task_retries": ACTOR_RETRIES,
            "runtime_env": {"env_vars": actor_env(os.environ)},
        }
        if plan.spread:
            options["scheduling_strategy"] = "SPREAD"
        actor_class = ray.remote(ChunkWorker).options(**options)
        self._actors = [actor_class.remote(spec, index, plan.device, plan.threads) for index in range(plan.count)]
        self._held = [0] * plan.count
        self._watch_ready([actor.loaded.remote() for actor in self._actors])
        what = f"{plan.num_gpus} GPU" if plan.num_gpus else f"{plan.num_cpus:g} CPU(s), {plan.threads} torch thread(s)"
        self._log(f"ray: {self._address}: {plan.count} actor(s), {what} each; staged chunks in {self.staging}")

    def _watch_ready(self, refs: list) -> None:
        """Set ``ready_at`` once every actor has answered ``loaded``, from a thread: the chunks sent meanwhile wait
        for the actors, not for the driver."""
        import ray

        def watch() -> None:
            with contextlib.suppress(Exception):  # an actor gone: its chunk says so; close() stops the watch
                while self._actors and len(ray.wait(refs, num_returns=len(refs), timeout=0.5)[0]) < len(refs):
                    pass
                if self._actors:
                    self.ready_at = time.perf_counter()

        self._ready_watch = threading.Thread(target=watch, name="tokembed-ray-ready", daemon=True)
        self._ready_watch.start()

    def map_chunks(self, chunks: Iterable[list]) -> Iterator[ChunkResult]:
        source = iter(chunks)
        in_flight: deque = deque()
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < IN_FLIGHT * len(self._actors):
                inputs = next(source, None)
                if inputs is None:
                    exhausted = True
                else:
                    in_flight.append(self._submit(inputs))
            if not in_flight:
                self._finished = True
                return
            yield self._collect(*in_flight.popleft())

    def _submit(self, inputs: list) -> tuple:
        """-> (the chunk's plan, or None when it goes whole to one actor; its parts: (actor, ref, rows, key, batch range))."""
        if not inputs:  # every item carried over from the previous index: nothing to encode
            return None, []
        plan = plan_chunk(self.encoder, inputs, self.batch_tokens) if self._share_chunks and len(self._actors) > 1 else None
        spans = batch_ranges(plan, len(self._actors)) if plan is not None and len(plan.batches) > 1 else [None]
        parts = []
        for span in spans:
            actor = min(range(len(self._actors)), key=lambda i: self._held[i])
            self._held[actor] += 1
            if span is None:
                key, rows = chunk_key(self._prefix, inputs), len(inputs)
            else:
                key = chunk_key(self._prefix + f"batches {span[0]}:{span[1]}\0".encode(), inputs)
                rows = sum(len(batch.rows) for batch in plan.batches[span[0] : span[1]])
            ref = self._actors[actor].encode.remote(key, inputs, self.batch_tokens, str(self.staging), span)
            parts.append((actor, ref, rows, key, span))
        return (plan if spans[0] is not None else None), parts

    def _collect(self, plan: ChunkPlan | None, parts: list) -> ChunkResult:
        if not parts:
            return ChunkResult([], [], 0, 0, 0)
        results = [self._collect_part(actor, ref, rows, key) for actor, ref, rows, key, _ in parts]
        if plan is None:
            return results[0]
        encoder = self.encoder
        vectors: list = [np.zeros((0, encoder.output_dim), dtype=encoder.store_dtype)] * len(plan.items)
        token_ids: list = [np.zeros(0, dtype=np.int32)] * len(plan.items)
        for (*_, (first, end)), result in zip(parts, results):
            rows = [row for batch in plan.batches[first:end] for row in batch.rows]
            for row, vecs, ids in zip(rows, result.vectors, result.token_ids, strict=True):
                vectors[row], token_ids[row] = vecs, ids
        counts = {name: sum(getattr(result, name) for result in results) for name in _PART_COUNTS}
        return ChunkResult(vectors, token_ids, largest_batch=max(result.largest_batch for result in results), **counts)

    def _collect_part(self, actor: int, ref, rows: int, key: str) -> ChunkResult:
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        try:
            done = ray.get(ref)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, TokembedError):
                raise cause from None
            raise DeviceError(f"ray actor {actor} failed on a chunk: {cause or exc}") from exc
        except ActorUnavailableError as exc:  # no answer from its node: not a death Ray counted against the retries
            raise DeviceError(
                f"ray actor {actor} became unreachable: {_first_line(exc)}",
                hint="its node or the cluster's head may be gone (`ray status`); run the same command again "
                "once the cluster is back: it resumes where this run stopped",
            ) from exc
        except RayActorError as exc:
            raise DeviceError(
                f"ray actor {actor} died and its chunk's retries are exhausted ({ACTOR_RETRIES} restarts): {_first_line(exc)}",
                hint="a SIGKILLed actor was often stopped by the out-of-memory killer: lower --batch-tokens",
            ) from exc
        finally:
            self._held[actor] -= 1
        for line in done["logs"]:
            self._log(line)
        result = read_staged(Path(done["path"]), rows, self.encoder.output_dim, key)
        if done["reused"]:
            result = as_resumed(result)
        stats = self.device_stats.setdefault(done["label"], DeviceStats())
        stats.batches += done["batches"]
        stats.real_tokens += result.real_tokens
        stats.computed_tokens += result.computed_tokens
        stats.busy_seconds += done["busy_seconds"]
        if self._device_tokens is not None:
            self._device_tokens(done["label"], result.real_tokens)
        return result

    def close(self) -> None:
        """Stop the actors; remove the staged chunks once the run read them all (kept otherwise, to resume)."""
        try:
            import ray

            actors, self._actors = self._actors, []  # the ready watch stops
            for actor in actors:
                ray.kill(actor, no_restart=True)
            if self._ready_watch is not None:
                self._ready_watch.join(timeout=2)
            if self._owns_connection and ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
        if self._finished:
            shutil.rmtree(self.staging, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                self.staging.rmdir()  # only when nothing was staged


def as_resumed(result: ChunkResult) -> ChunkResult:
    """A staged chunk an actor reused, as the interrupted run that staged it computed it: its tokens are the
    resumed run's (``EncodeSummary.resumed_tokens_in``), not this run's encoded tokens, tokens/s or device stats."""
    return dataclasses.replace(result, real_tokens=0, computed_tokens=0, resumed_real_tokens=result.real_tokens,
                               resumed_computed_tokens=result.computed_tokens)


def actor_env(environ) -> dict[str, str]:
    """The driver's variables an actor inherits, a relative path among them made absolute against the driver's
    folder (an actor runs in the folder `ray start` ran in), and ``PYTHONUTF8=1``: an actor's interpreter starts
    with the environment of the cluster's ``ray start``, whose locale (``LC_ALL=C``, ``LANG=en_US.ISO-8859-1``)
    would encode a name as other bytes than the driver's (README "Paths": a name is its bytes taken as UTF-8)."""
    env = {key: value for key, value in environ.items() if key.startswith(_PASSED_ENV)}
    for key in _PATH_ENV:
        if env.get(key):
            env[key] = os.path.abspath(os.path.expanduser(env[key]))
    env["PYTHONUTF8"] = "1"
    return env


def refuse_names_this_actor_misreads(node: str, paths: Iterable[str | None]) -> None:
    """``DeviceError`` where this actor reads file names otherwise than as UTF-8 (``PYTHONUTF8=1`` did not take:
    a worker started with ``-E`` or ``-X utf8=0``) and one of ``paths`` is not ASCII: it would open another file,
    or none (a staging folder "not there", a video that cannot be decoded)."""
    if names_read_as_utf8():
        return
    for path in paths:
        if path is not None and not path.isascii():
            raise DeviceError(
                f"node {node}: {path}: this Ray actor reads file names as {sys.getfilesystemencoding()}, not as UTF-8: "
                "it would open another file, or none",
                hint="start the cluster (ray start) in a UTF-8 locale, or with PYTHONUTF8=1",
            )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
