"""``tokembed compress``: add or refresh an index's search structure; the work is ``compress_index``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from cli._paths import path_given
from cli._signals import work_done
from cli.progress import make_progress, warnings_logged


def compress(
    index: Path = typer.Argument(..., parser=path_given("INDEX", "the index folder", arrow=True),
                                 help="Index folder (holds manifest.json)."),
    nbits: Optional[int] = typer.Option(
        None, "--nbits", help="Residual bits per dimension: 1, 2 or 4. Default: the index's current value, else 2."
    ),
    centroids: Optional[int] = typer.Option(
        None, "--centroids", help="Number of k-means centroids (<= 65536; identical ones are kept once). Default: 2**floor(log2(16*sqrt(tokens))), as colbert-ai."
    ),
    retrain: bool = typer.Option(
        False, "--retrain", help="Train new centroids even if the current ones may be kept (refused once the vectors were dropped)."
    ),
    drop_vectors: bool = typer.Option(
        False, "--drop-vectors", help="Keep only the codes: rewrite the shards without their vectors and free that space. "
        "score then re-ranks from the decoded codes; score --exact, export, load_document, --retrain and another "
        "--nbits/--centroids refuse (exit 2). encode re-runs keep the index compressed-only. Cannot be undone.",
    ),
    wait: float = typer.Option(0.0, help="Seconds to wait for another run's lock on the index before giving up."),
    log_format: str = typer.Option("text", help="text, or json: the summary is one JSON object on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but the summary."),
) -> None:
    """Build the PLAID-style search structure (centroids, per-token codes, inverted lists) of an index;
    --drop-vectors makes the index compressed-only."""
    from tokembed.errors import UsageError
    from tokembed.search.plaid import compress_index

    if log_format not in ("text", "json"):
        raise UsageError(f"--log-format {log_format!r}: must be text or json")
    progress = make_progress(quiet, bar=log_format == "text")  # a bar over the shards being coded
    try:
        with warnings_logged(progress.log):
            summary = compress_index(index, nbits=nbits, centroids=centroids, retrain=retrain, wait_seconds=wait,
                                     log=progress.log, drop_vectors=drop_vectors, progress=progress)
        work_done()  # committed: a signal from here on must not make it exit 130
    finally:
        progress.stop()
    data = summary.to_json()
    if log_format == "json":
        print(json.dumps(data), flush=True)
        return
    print(
        f"tokembed: {data['index']}: {data['rows']} rows, {data['tokens']} tokens, {data['centroids']} centroids, "
        f"nbits {data['nbits']}: coded {data['coded_tokens']}, carried {data['carried_tokens']} tokens; "
        f"structure {data['structure_bytes']} bytes ({data['bytes_per_token']} B/token)"
        + (f"; vectors dropped, shards {data['shard_bytes']} bytes" if data["vectors"] == "dropped" else "")
        + f" in {data['seconds']}s",
        file=sys.stderr if not quiet else sys.stdout,
    )
