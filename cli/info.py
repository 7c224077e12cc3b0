"""``tokembed info``: what an index holds, read from its manifest (shards checked, not scanned)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def info(
    index: Path = typer.Argument(..., help="Index folder (holds manifest.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as one JSON object."),
    verify: bool = typer.Option(False, "--verify", help="Also check every shard's sha256 against the manifest."),
) -> None:
    """Show rows, tokens, dim, dtypes, model, settings and size of an index."""
    from tokembed.index import open_index

    opened = open_index(index)
    opened.verify(checksums=verify)
    manifest = opened.manifest
    on_disk = opened.bytes_on_disk()
    facts = {
        "index": str(index),
        "rows": opened.rows,
        "tokens": opened.tokens,
        "dim": opened.dim,
        "embedding_dtype": manifest["embedding_dtype"],
        "compute_dtype": manifest["settings"]["dtype"],
        "model": manifest["model"]["name"],
        "model_family": manifest["model"]["family"],
        "architecture": manifest["model"]["architecture"],
        "model_fingerprint": manifest["model"]["fingerprint"][:16],
        "mode": manifest["settings"]["mode"],
        "kind": manifest["settings"]["kind"],
        "settings": manifest["settings"],
        "shards": len(opened.shards),
        "skipped": len(manifest.get("skipped", [])),
        "bytes_on_disk": on_disk,
        "bytes_per_token": round(on_disk / opened.tokens, 2) if opened.tokens else None,
        "created_at": manifest["created_at"],
        "tokembed_version": manifest["tokembed_version"],
    }
    if as_json:
        print(json.dumps(facts))
        return
    table = Table(show_header=False, box=None)
    for key, value in facts.items():
        if key == "settings":
            value = ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, "", [], False))
        table.add_row(key, str(value))
    Console().print(table)
