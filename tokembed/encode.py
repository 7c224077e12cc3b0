"""``encode_corpus``: the library call behind ``tokembed encode``.

sources (chunks of items) -> models (tokenize + forward + project) -> engine (token-budget batches)
-> index (Arrow shards, then the manifest). Memory is bounded by one chunk, never the corpus.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tokembed.errors import BadInputError, UsageError
from tokembed.settings import DEFAULT_BATCH_TOKENS, EncodeFlags
from tokembed.sources import Item, SourceOptions, open_sources



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
    inputs: list[Path]
    output: Path
    model: str | None = None
    flags: EncodeFlags = field(default_factory=EncodeFlags)
    sources: SourceOptions = field(default_factory=SourceOptions)
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    on_error: str = "fail"
    devices: str = "auto"
    trust_remote_code: bool = False
    shard_rows: int = 50_000
    wait_seconds: float = 0.0


@dataclass
class EncodeSummary:
    output: str
    rows: int = 0
    tokens: int = 0
    skipped: list[dict] = field(default_factory=list)
    tokens_in: int = 0  # tokens that went through the model (before skiplist removal)
    computed_tokens: int = 0  # positions computed, padding included
    seconds: float = 0.0
    shards: int = 0

    @property
    def useful_token_fraction(self) -> float:
        return self.tokens_in / self.computed_tokens if self.computed_tokens else 1.0

    def to_json(self) -> dict:
        return {
            "output": self.output,
            "rows": self.rows,
            "tokens": self.tokens,
            "skipped": len(self.skipped),
            "seconds": round(self.seconds, 3),
            "useful_token_fraction": round(self.useful_token_fraction, 4),
            "tokens_per_second": round(self.tokens_in / self.seconds, 1) if self.seconds else None,
            "shards": self.shards,
        }


def content_hash(settings_fingerprint: str, text: str) -> bytes:
    """sha256 of the item's content, keyed by the model and settings that encoded it."""
    return hashlib.sha256(settings_fingerprint.encode() + b"\0" + text.encode("utf-8", "surrogatepass")).digest()


def encode_corpus(job: EncodeJob, progress: Progress | None = None) -> EncodeSummary:
    from tokembed.embedder import Embedder
    from tokembed.engine.device import resolve_device
    from tokembed.index.lock import IndexLock
    from tokembed.index.writer import IndexWriter
    from tokembed.models.resolve import DEMO_NOTICE

    progress = progress or NullProgress()
    _check_job(job)
    started = time.perf_counter()
    device = resolve_device(job.devices)
    if job.model is None:
        progress.log(DEMO_NOTICE)
    embedder = Embedder.load(job.model, job.flags, device, job.trust_remote_code)
    settings, model = embedder.settings, embedder.model
    settings_fp = settings.fingerprint(embedder.fingerprint)
    progress.log(
        f"model {embedder.resolved.name} ({model.family}, {model.architecture}) on {device}: mode {settings.mode}, "
        f"kind {settings.kind}, dim {embedder.output_dim}, compute {settings.dtype}, store {settings.store_dtype}"
    )

    summary = EncodeSummary(output=str(job.output))
    with IndexLock(job.output, job.wait_seconds):
        writer = IndexWriter(job.output, embedder.output_dim, settings.store_dtype, shard_rows=job.shard_rows)
        try:
            progress.start(estimate_rows(job.inputs))
            _encode_stream(job, embedder.encoder, settings_fp, writer, device, summary, progress)
            summary.seconds = time.perf_counter() - started
            writer.close_shard()
            summary.shards = len(writer.shards)
            manifest = build_manifest(job, embedder, writer, summary)
            writer.commit(manifest)
        except BaseException:
            writer.abort()
            raise
    return summary


def _with_dtype(options, flags: EncodeFlags, device: str):
    from tokembed.settings import resolve_dtype

    options.dtype = resolve_dtype(flags.dtype, device.split(":")[0])
    return options


def _check_job(job: EncodeJob) -> None:
    if job.on_error not in ("fail", "skip"):
        raise UsageError(f"--on-error must be fail or skip; got {job.on_error!r}")
    if job.batch_tokens < 1:
        raise UsageError(f"--batch-tokens must be positive; got {job.batch_tokens}")
    if job.shard_rows < 1:
        raise UsageError(f"--shard-rows must be positive; got {job.shard_rows}")


def _encode_stream(job, encoder, settings_fp, writer, device, summary: EncodeSummary, progress) -> None:
    from tokembed.engine.runner import run_chunk

    seen: dict[str, str] = {}
    for chunk in open_sources(job.inputs, job.sources):
        good = _usable_items(chunk, seen, job.on_error, summary)
        if good:
            result = run_chunk(encoder, [item.text for item in good], job.batch_tokens, device)
            hashes = [content_hash(settings_fp, item.text) for item in good]
            writer.write([item.id for item in good], result.vectors, result.token_ids, hashes)
            tokens = sum(len(v) for v in result.vectors)
            summary.rows += len(good)
            summary.tokens += tokens
            summary.tokens_in += result.real_tokens
            summary.computed_tokens += result.computed_tokens
            progress.advance(len(chunk), result.real_tokens)
        else:
            progress.advance(len(chunk), 0)


def _usable_items(chunk: list[Item], seen: dict[str, str], on_error: str, summary: EncodeSummary) -> list[Item]:
    good = []
    for item in chunk:
        if item.id in seen:
            raise BadInputError(f"duplicate id {item.id!r}: {seen[item.id]} and {item.location}")
        seen[item.id] = item.location
        if item.error is None:
            good.append(item)
        elif on_error == "skip":
            summary.skipped.append({"id": item.id, "source": item.source, "row": item.row, "reason": item.error})
        else:
            raise BadInputError(f"{item.location} (id {item.id!r}): {item.error}", hint="--on-error skip records and skips such rows")
    return good


def estimate_rows(inputs: list[Path]) -> int | None:
    """Row count for the progress bar where it is cheap to know (Parquet metadata, text folders)."""
    import pyarrow.parquet as pq

    from tokembed.sources.base import TEXT_SUFFIXES

    total = 0
    for path in inputs:
        try:
            if path.is_file() and path.suffix == ".parquet":
                total += pq.ParquetFile(path).metadata.num_rows
            elif path.is_dir():
                parquet = sorted(path.rglob("*.parquet"))
                if parquet:
                    total += sum(pq.ParquetFile(p).metadata.num_rows for p in parquet)
                else:
                    total += sum(1 for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES)
            else:
                return None
        except Exception:  # a bad file is reported by the reader with its reason; the bar just has no total
            return None
    return total


def build_manifest(job: EncodeJob, embedder, writer, summary: EncodeSummary) -> dict:
    from datetime import datetime, timezone

    from tokembed import __version__
    from tokembed.index.format import FORMAT, FORMAT_VERSION

    resolved, model, settings = embedder.resolved, embedder.model, embedder.settings
    shards = [shard.to_json() for shard in writer.shards]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokembed_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": resolved.name,
            "path": str(resolved.path),
            "revision": resolved.revision,
            "fingerprint": embedder.fingerprint,
            "family": model.family,
            "architecture": model.architecture,
            "is_demo": resolved.is_demo,
        },
        "settings": settings.to_json(),
        "settings_fingerprint": settings.fingerprint(embedder.fingerprint),
        "flags": job.flags.to_json(),
        "colbert": model.colbert.to_json() if model.colbert else None,
        "dim": embedder.output_dim,
        "embedding_dtype": settings.store_dtype,
        "shards": shards,
        "totals": {
            "rows": sum(s["rows"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
        },
        "skipped": summary.skipped,
        "stats": {
            "seconds": round(summary.seconds, 3),
            "useful_token_fraction": round(summary.useful_token_fraction, 4),
            "batch_tokens": job.batch_tokens,
        },
    }
