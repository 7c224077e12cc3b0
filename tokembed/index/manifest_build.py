"""The manifest an ``encode`` run commits: the model (fingerprint and weights digest), every encoding setting, the
shards it wrote, totals, the rows it skipped and its stats (README "Index format"). Its shape is checked on read
by ``manifest_shape``."""

from __future__ import annotations

from tokembed.index.pdfstats import pdf_totals


def _base_json(resolved) -> dict | None:
    """A PEFT adapter's base in the manifest (the model entry itself describes the adapter)."""
    from tokembed.models.resolve import model_fingerprint

    if resolved.base is None:
        return None
    base = resolved.base
    return {"name": base.name, "path": str(base.path), "revision": base.revision, "fingerprint": model_fingerprint(base.path),
            "adapter_fingerprint": model_fingerprint(resolved.path)}


def build_manifest(job, embedder, writer, summary) -> dict:
    """The manifest of the generation a run commits (``encode.EncodeJob``, its embedder, writer and summary)."""
    from datetime import datetime, timezone

    from tokembed import __version__
    from tokembed.index.format import FORMAT, FORMAT_VERSION

    resolved, model, settings = embedder.resolved, embedder.model, embedder.settings
    shards = [shard.to_json() for shard in writer.shards]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokembed_version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "model": {
            "name": resolved.name,
            "path": str(resolved.path),
            "revision": resolved.revision,
            "fingerprint": embedder.fingerprint,
            "weights_sha256": embedder.weights_sha256,
            "family": model.family,
            "architecture": model.architecture,
            "is_demo": resolved.is_demo,
            "base": _base_json(resolved),
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
        "ignored": summary.ignored,
        "id_column": summary.id_column,
        "empty_pages": summary.empty_pages,
        "pdf": pdf_totals(job.output, shards, job.sources),
        "stats": {
            "added": summary.added,
            "updated": summary.updated,
            "deleted": summary.deleted,
            "unchanged": summary.unchanged,
            "useful_token_fraction": round(summary.useful_token_fraction, 4),
            "batch_tokens": job.batch_tokens,
            "full_rebuild": summary.full_rebuild,
        },
    }
