"""``encode_corpus``: the library call behind ``tokembed encode``.

sources (chunks of items) -> models (tokenize + forward + project) -> engine (token-budget batches)
-> index (Arrow shards, then the manifest). Memory is bounded by one chunk, never the corpus.

Re-runs are incremental: an item whose content hash (its text, keyed by the model fingerprint and every
setting) is already in the index is carried over without re-encoding; new and changed items are
encoded; items gone from the corpus are dropped. The new generation is written as new shards, rows in
corpus order, exactly what a full rebuild writes; the manifest switch is the commit. A run that dies
leaves a journal of its finished shards, and the next run with the same inputs resumes after them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from tokembed._testhooks import fault_point
from tokembed.encode_checks import check_inputs, checked_job
from tokembed.errors import DeviceError, UsageError
from tokembed.settings import DEFAULT_BATCH_TOKENS, EncodeFlags
from tokembed.index.format import SEARCH_SETTINGS, STAGING_DIR
from tokembed.index.manifest_build import build_manifest
from tokembed.plan import SKIPS_TOLD, PlannedChunk, log_skipped, model_input, plan_chunks
from tokembed.sources import SourceOptions
from tokembed.sources.base import estimate_rows, ignored_files, printable_id
from tokembed.sources.files import files_linked_twice
from tokembed.sources.id_source import id_column_read

class Progress(Protocol):
    def start(self, total_rows: int | None) -> None: ...
    def advance(self, rows: int, tokens: int) -> None: ...
    def log(self, message: str) -> None: ...


class NullProgress:
    def start(self, total_rows: int | None) -> None:
        pass

    def advance(self, rows: int, tokens: int) -> None:
        pass

    def log(self, message: str) -> None:
        pass


@dataclass
class EncodeJob:
    inputs: list[Path]  # or str paths, one path alone, any iterable of them (encode_checks.checked_job)
    output: Path  # or a str
    model: str | os.PathLike | None = None  # a checkpoint folder or a hub id; None: the demo model
    flags: EncodeFlags = field(default_factory=EncodeFlags)
    sources: SourceOptions = field(default_factory=SourceOptions)
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    on_error: str = "fail"
    devices: str = "auto"
    engine: str = "local"  # local: this machine's devices; ray: actors on a Ray cluster (tokembed/engine/ray.py)
    ray_address: str | None = None  # --engine ray only; None: auto
    trust_remote_code: bool = False
    shard_rows: int = 50_000
    wait_seconds: float = 0.0
    full: bool = False
    nbits: int | None = None  # search structure: None keeps the index's (if any); else build/refresh with N bits
    retrain: bool = False  # search structure: train new centroids
    drop_vectors: bool = False  # commit shards without vectors (as compress --drop-vectors); sticky once dropped


@dataclass
class EncodeSummary:
    output: str
    rows: int = 0  # rows in the new index
    tokens: int = 0  # stored tokens in the new index
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: list[dict] = field(default_factory=list)
    tokens_in: int = 0  # tokens that went through the model this run (before skiplist removal)
    computed_tokens: int = 0  # positions computed this run, padding included
    # What the interrupted run(s) put through the model (the shards this run resumed, the chunks their Ray actors
    # staged that this run reused): the useful-token fraction is the whole generation's, encoded tokens and
    # tokens/s this run's own.
    resumed_tokens_in: int = 0
    resumed_computed_tokens: int = 0
    seconds: float = 0.0  # load_seconds + encode_seconds (+ any wait for the lock)
    load_seconds: float = 0.0  # start-up and model load, a pool's or Ray's workers' too (the CLI adds the process start-up)
    encode_seconds: float = 0.0  # first read (or, later, the workers ready) to commit
    shards: int = 0
    resumed_shards: int = 0
    full_rebuild: bool = True
    ignored: list[str] = field(default_factory=list)  # input-folder files no reader took
    id_column: str | None = None  # the column (field) every Parquet/JSONL input's ids were read from
    empty_pages: list[dict] = field(default_factory=list)  # PDF pages with no text layer (rows with no tokens)
    demo_model: bool = False  # no --model: the demo model encoded the corpus

    @property
    def useful_token_fraction(self) -> float:
        computed = self.resumed_computed_tokens + self.computed_tokens
        return (self.resumed_tokens_in + self.tokens_in) / computed if computed else 1.0

    def counts(self) -> dict:
        return {"added": self.added, "updated": self.updated, "unchanged": self.unchanged}

    def to_json(self) -> dict:
        return {
            "output": self.output,
            "rows": self.rows,
            "tokens": self.tokens,
            "added": self.added,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "failed": len(self.skipped),
            "skipped": len(self.skipped),
            "skipped_rows": self.skipped[:SKIPS_TOLD],  # all of them in manifest.json
            "encoded_tokens": self.tokens_in,
            "seconds": round(self.seconds, 3),
            "load_seconds": round(self.load_seconds, 3),
            "encode_seconds": round(self.encode_seconds, 3),
            "useful_token_fraction": round(self.useful_token_fraction, 4),
            "tokens_per_second": round(self.tokens_in / self.encode_seconds, 1) if self.encode_seconds else None,
            "shards": self.shards,
            "resumed_shards": self.resumed_shards,
            "full_rebuild": self.full_rebuild,
            "ignored": len(self.ignored),
            "ignored_files": self.ignored[:5],
            "empty_pages": len(self.empty_pages),
            "demo_model": self.demo_model,
        }


def encode_corpus(job: EncodeJob, progress: Progress | None = None) -> EncodeSummary:
    started = time.perf_counter()  # before the imports below: importing torch is part of the load
    from tokembed.index.first_run import refuse_foreign_files
    from tokembed.index.lock import IndexLock, refuse_if_locked

    progress = progress or NullProgress()
    job = _with_own_walks(checked_job(job))  # paths as Path first: the walks leave job.output out
    check_inputs(job)
    refuse_foreign_files(job.output)  # a folder that is no index yet: nothing of the user's under the names a commit removes
    if job.wait_seconds == 0:
        refuse_if_locked(job.output)  # before torch is imported (seconds): a second cron run exits at once
    from tokembed.embedder import Embedder
    from tokembed.engine.device import check_form, resolve_device
    from tokembed.models.resolve import DEMO_NOTICE

    if job.engine == "ray":
        check_form(job.devices)  # what it names is counted on the cluster, once connected
        device = "cpu"  # a Ray driver only reads and plans
    else:
        device = resolve_device(job.devices)
    if job.model is None:
        progress.log(DEMO_NOTICE)
    embedder = Embedder.load(job.model, job.flags, device, job.trust_remote_code)
    job = _with_base_folder_absolute(job, embedder)
    settings, model = embedder.settings, embedder.model
    if settings.dimensions is not None and settings.dimensions > model.output_dim:
        raise UsageError(f"--dimensions {settings.dimensions} is larger than the model's output dimension {model.output_dim}")
    progress.log(
        f"model {embedder.resolved.name} ({model.family}, {model.architecture}) on {device}: mode {settings.mode}, "
        f"kind {settings.kind}, dim {embedder.output_dim}, compute {settings.dtype}, store {settings.store_dtype}"
    )
    if embedder.is_vision and settings.kind == "document":  # an image model's documents: pages (videos if it takes them)
        refusal = embedder.encoder.video_refusal()
        job = replace(job, sources=replace(job.sources, modality="image", video_refusal=refusal))
    if job.sources.pdf_workers is None:
        from tokembed.sources.pdf_workers import auto_render_workers

        job = replace(job, sources=replace(job.sources, pdf_workers=auto_render_workers(device)))
    loaded = time.perf_counter()
    with IndexLock(job.output, job.wait_seconds) as lock:
        first_read = time.perf_counter()
        try:
            summary, workers_ready = _run_locked(job, embedder, progress)
        except BaseException:
            lock.remove_if_unused()  # a first run that commits nothing leaves no half-made index folder
            raise
    summary.demo_model = job.model is None
    summary.seconds = time.perf_counter() - started
    # Workers load their model after the lock is taken, while the first chunks are read: until they are ready,
    # the run waits on a model load, which encode_seconds (and so tokens/s) must not count.
    encoding = max(first_read, workers_ready or first_read)
    summary.load_seconds = loaded - started + (encoding - first_read)
    summary.encode_seconds = summary.seconds - (encoding - started)
    return summary


def _with_own_walks(job: EncodeJob) -> EncodeJob:
    """Each input folder walked once in this run, the index left out (``files.FolderWalks``)."""
    from tokembed.sources.files import FolderWalks

    return replace(job, sources=replace(job.sources, walks=FolderWalks(job.output)))


def _with_base_folder_absolute(job: EncodeJob, embedder) -> EncodeJob:
    """``--base-model`` given as a relative folder: the manifest records it absolute, for a ``score`` or ``serve``
    run from another folder."""
    from tokembed.embedder import local_base

    base = local_base(embedder.resolved)
    if job.flags.base_model is None or base is None:
        return job
    return replace(job, flags=replace(job.flags, base_model=base))


def _run_locked(job: EncodeJob, embedder, progress: Progress) -> tuple[EncodeSummary, float | None]:
    """The run's summary, and when its worker processes or Ray actors had their model loaded (``perf_counter``;
    None: the model this process loaded ran the batches, or the run ended before the workers were ready)."""
    from tokembed.engine import open_runner
    from tokembed.index.journal import continue_journal, resume_journal, run_signature
    from tokembed.index.atomic import remove_dead_replacements
    from tokembed.index.commit_window import commit_window
    from tokembed.index.writer import remove_temp_files
    from tokembed.search.plaid.coded import refuse_training_without_kmeans
    from tokembed.sources.pdf_workers import remove_abandoned_copies

    settings_fp = embedder.settings.fingerprint(embedder.fingerprint)
    remove_temp_files(job.output / "data")
    remove_dead_replacements(job.output)
    remove_abandoned_copies()
    previous = _previous_index(job, settings_fp, embedder.weights_sha256, progress)
    replaced = previous or _replaced_index(job)  # what a full rebuild's added / updated / deleted compare with
    refuse_training_without_kmeans(job.output, replaced.index.manifest if replaced is not None else None,
                                   (settings_fp, embedder.weights_sha256), job.nbits, job.retrain, job.drop_vectors)
    summary = EncodeSummary(output=str(job.output), full_rebuild=previous is None)
    ignored = ignored_files(job.inputs, job.sources, job.output) + files_linked_twice(job.inputs, job.output, job.sources.walks)
    summary.ignored = [printable_id(name) for name in ignored]  # a file name that is not UTF-8 cannot go into JSON
    committed_ids = replaced.index.manifest.get("id_column") if replaced and not job.full else None
    summary.id_column = id_column_read(job.inputs, job.sources, committed_ids)  # refuses a renamed id column
    journal = resume_journal(job.output, run_signature(job, embedder.weights_sha256, settings_fp, previous, replaced))
    if journal.shards:
        progress.log(f"resuming: {len(journal.shards)} finished shard(s) of an interrupted run verified "
                     f"({journal.rows_done} rows already done), continuing after them")
    writer = _open_writer(job, embedder, previous)
    continue_journal(journal, writer, summary)
    runner = open_runner(embedder, job, progress)
    try:
        progress.start(journal.rows_left(estimate_rows(job.inputs, job.sources)))
        seen_previous = _encode_stream(job, runner, settings_fp, (previous, replaced), writer, journal, summary, progress,
                                       embedder.encoder)
        log_skipped(summary.skipped, progress.log)
        writer.close_shard()
        summary.shards = len(writer.shards)
        summary.deleted = len(replaced) - seen_previous if replaced is not None else 0
        summary.rows = sum(shard.rows for shard in writer.shards)
        summary.tokens = sum(shard.tokens for shard in writer.shards)
        manifest = _with_search_structure(job, build_manifest(job, embedder, writer, summary), (previous, replaced), writer,
                                          progress)
        fault_point("commit", 1)
        with commit_window():  # an interrupt from here on stops the run after its clean-up
            writer.commit(manifest)
            fault_point("committed", 1)
            _remove_stale_structure(job.output, manifest)
            journal.remove()
            _remove_staged_chunks(job.output)
    except (KeyboardInterrupt, DeviceError):  # interrupted, or its devices failed (the last worker died, OOM)
        writer.abort(keep_finished=True)  # finished shards + journal let the next run resume
        raise
    except BaseException:
        writer.abort()
        journal.remove()
        raise
    finally:
        runner.close()
    return summary, getattr(runner, "ready_at", None)


def _remove_staged_chunks(folder: Path) -> None:
    """Once a run commits, no run resumes from the chunks an earlier ``--engine ray`` run staged (whichever engine
    committed: a killed Ray run may be finished by a local one)."""
    shutil.rmtree(folder / STAGING_DIR, ignore_errors=True)


def _open_writer(job: EncodeJob, embedder, previous):
    """An ``IndexWriter``; on a compressed-only index, one that writes shards without vectors and codes them."""
    from tokembed.search.plaid.coded import open_writer

    return open_writer(job.output, embedder.output_dim, embedder.settings.store_dtype, job.shard_rows, previous)


def _with_search_structure(job: EncodeJob, manifest: dict, indexes, writer, progress: Progress) -> dict:
    """Code the new shards for the index's search structure (``tokembed.search.plaid``), if it has one or
    ``--nbits`` asks for one: unchanged rows keep their codes, new rows are coded with the same centroids.
    A compressed-only index (or ``--drop-vectors``) gets shards without vectors (``plaid.coded``). ``indexes``:
    (the index rows are carried from or None, the committed index this run replaces or None)."""
    previous, replaced = indexes
    # an empty generation keeps only the structure's settings: a full rebuild (a new model, --full) honours them too
    remembered = replaced is not None and SEARCH_SETTINGS in replaced.index.manifest
    if job.nbits is None and not job.drop_vectors and not (job.output / "plaid").is_dir() and not remembered:
        return manifest
    from tokembed.search.plaid.coded import run_structure

    committed = replaced.index.manifest if replaced is not None else None  # replaced: ``previous`` where rows carry
    return run_structure(job.output, manifest, committed, previous, writer, job.nbits, job.retrain, job.drop_vectors,
                         progress.log, replaced)


def _remove_stale_structure(folder: Path, manifest: dict) -> None:
    if (folder / "plaid").is_dir():
        from tokembed.search.plaid.build import remove_unlisted_files

        remove_unlisted_files(folder, manifest)


def _previous_index(job: EncodeJob, settings_fp: str, weights_sha256: str, progress: Progress):
    """The committed index to carry rows over from, or None for a full rebuild."""
    from tokembed.embedder import same_weights
    from tokembed.index.reader import open_index, read_manifest
    from tokembed.search.plaid.coded import previous_index

    if job.full:
        return None
    manifest = read_manifest(job.output) if job.output.is_dir() else None
    if manifest is None:
        return None
    if manifest.get("settings_fingerprint") != settings_fp:
        progress.log("the model or an encoding setting changed since the last run: re-encoding everything")
        return None
    if not same_weights(manifest, weights_sha256):
        progress.log("the model's weights changed since the last run (same files, sizes and headers): re-encoding everything")
        return None
    return previous_index(open_index(job.output, structure=False), job.nbits, job.retrain)  # compressed-only: rows carry codes


def _replaced_index(job: EncodeJob):
    """The committed index a full rebuild replaces, read for its ids only (no row is carried from it), or None:
    none, or one that cannot be opened (``--full`` is also how a damaged index is rebuilt)."""
    from tokembed.errors import TokembedError
    from tokembed.index.previous import PreviousIndex
    from tokembed.index.reader import open_index

    try:
        return PreviousIndex(open_index(job.output, structure=False))  # no index there: IndexNotFoundError
    except (TokembedError, OSError, ValueError):
        return None


def _encode_stream(
    job, runner, settings_fp, indexes, writer, journal, summary: EncodeSummary, progress, encoder=None
) -> int:
    """Stream the corpus through the runner into the writer; returns how many ids of the replaced index are still
    present. ``indexes``: (the index rows are carried over from or None, the index the counts compare with or None).

    One chunk is alive at a time. A loop's names keep their last values while the next chunk is read (``for x in
    source`` rebinds ``x`` only once ``source`` has produced it; ``enumerate`` keeps its last tuple), so the loops
    that pass chunks along ``del`` them: without that, two chunks of decoded images
    (64 rendered pages each, ~0.5 GB for letter pages at 200 dpi) were alive at once."""
    from tokembed.embedder import refuse_non_finite
    from tokembed.index.journal import restart_journal
    from tokembed.models.token_ids import rows_named

    pending: deque[PlannedChunk] = deque()
    state = {"seen_previous": 0}
    runner_images = job.sources.modality == "image"

    def restart() -> None:  # rows other than the journal's: every row is to encode again, the bar counts them all
        restart_journal(journal, writer, summary, progress.log)
        if hasattr(progress, "set_total"):  # optional, as ``device_tokens``
            progress.set_total(estimate_rows(job.inputs, job.sources))

    def texts_to_encode() -> Iterator[list[str]]:
        for chunk in plan_chunks(job, settings_fp, indexes, journal, restart, summary, state, encoder):
            pending.append(chunk)
            yield [model_input(chunk.items[i], runner_images) for i in chunk.to_encode]
            del chunk  # one chunk alive at a time (see _encode_stream)

    for result in rows_named(runner.map_chunks(texts_to_encode()), pending, lambda item: model_input(item, runner_images)):
        chunk = pending.popleft()
        journal.chunk_digests.append(chunk.digest)
        vectors: list = [None] * len(chunk.items)
        token_ids: list = [None] * len(chunk.items)
        for position, (vecs, ids) in chunk.carried.items():
            vectors[position], token_ids[position] = vecs, ids
        for position in chunk.empty:
            vectors[position], token_ids[position] = np.zeros((0, writer.dim), np.float32), np.zeros(0, np.int32)
        for position, vecs, ids in zip(chunk.to_encode, result.vectors, result.token_ids):
            refuse_non_finite(f"row {chunk.items[position].id!r}", vecs)
            vectors[position], token_ids[position] = vecs, ids
        shard = writer.write(
            [item.id for item in chunk.items], vectors, token_ids, chunk.hashes,
            [item.source_file for item in chunk.items], [item.page for item in chunk.items],
        )
        if indexes[1] is not None:
            indexes[1].release_pages()
        fault_point("write", chunk.number + 1)
        summary.tokens_in += result.real_tokens
        summary.computed_tokens += result.computed_tokens
        summary.resumed_tokens_in += result.resumed_real_tokens
        summary.resumed_computed_tokens += result.resumed_computed_tokens
        if shard is not None:
            counts = {**chunk.counts, "empty_pages": summary.empty_pages[: chunk.empty_pages],  # a resume's fraction:
                      "tokens_in": summary.resumed_tokens_in + summary.tokens_in,
                      "computed_tokens": summary.resumed_computed_tokens + summary.computed_tokens}
            journal.record(shard.to_json(), chunk.number + 1, summary.skipped[: chunk.skipped], counts)
            fault_point("shard", len(writer.shards))
        progress.advance(chunk.source_rows, result.real_tokens)
        del chunk, result, vectors, token_ids  # one chunk alive at a time (see _encode_stream)
    return state["seen_previous"]
