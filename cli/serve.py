"""``tokembed serve``: options for the vLLM-compatible HTTP server; the work is ``tokembed.serve.run_server``."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer

from cli._paths import path_given
from cli.encode import DType

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


def serve(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Checkpoint folder or Hugging Face hub id. Default: the demo all-MiniLM-L6-v2 (raw mode only).",
    ),
    base_model: Optional[str] = typer.Option(
        None, "--base-model", help="Base checkpoint (hub id or folder) of a PEFT adapter given as --model, or of the "
        "--index's adapter (a base folder that moved; checked against the index like --model), as encode's --base-model.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on. Default: loopback only; use --api-key before opening it up."),
    port: int = typer.Option(8000, min=0, max=65535, help="TCP port (0: any free port)."),
    devices: str = typer.Option("auto", help="One device: auto (first CUDA device, else CPU), cpu, cuda or cuda:N."),
    dtype: DType = typer.Option(DType.auto, help="Compute dtype. auto = float32 on CPU (exact), bfloat16 on CUDA."),
    max_batch_tokens: int = typer.Option(16384, help="Token budget of one forward pass, padding included (shared by concurrent requests)."),
    batch_window_ms: float = typer.Option(5.0, help="How long a request may wait for others to join its batch, in milliseconds."),
    max_model_len: Optional[int] = typer.Option(
        None, help="Most tokens per raw input; longer inputs get 400 unless truncate_prompt_tokens is set. Default: the checkpoint's limit."
    ),
    max_inputs: int = typer.Option(1024, help="Most inputs per request (score and rerank: queries + documents)."),
    max_body_mb: float = typer.Option(16.0, min=0.001, help="Largest request body, in MiB (larger ones get 413)."),
    api_key: Optional[str] = typer.Option(
        None, envvar="TOKEMBED_API_KEY", help="Require 'Authorization: Bearer KEY' on every endpoint but /health (env TOKEMBED_API_KEY)."
    ),
    served_model_name: Optional[str] = typer.Option(None, help="Name clients pass as \"model\". Default: --model as given."),
    lora_modules: Optional[list[str]] = typer.Option(
        None, "--lora-modules", help="NAME=PATH: serve a PEFT LoRA adapter (folder or hub id) over --model, unmerged, as model "
        "NAME. Requests naming NAME use it, batched per adapter; text models. vLLM's forms: repeat the flag, list several "
        "after one flag (--lora-modules a=X b=Y), or give JSON ('{\"name\": \"a\", \"path\": \"X\"}').",
    ),
    index: Optional[Path] = typer.Option(
        None, "--index", parser=path_given("--index", "the index folder", arrow=True), help="An index folder to search at POST /search, as 'tokembed score' does (queries encoded with the "
        "index's model and settings; --model defaults to the index's model and must be it). A generation a cron job "
        "commits is picked up by the next request.",
    ),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow checkpoints that ship their own Python code."),
    log_level: str = typer.Option(
        "info", help="uvicorn log level: critical, error, warning, info, debug (also logs every request) or trace."
    ),
) -> None:
    """Serve a checkpoint over HTTP: vLLM's /pooling (token_embed), /score and /rerank with MaxSim, and with --index
    /search over an index (pip install 'tokembed[serve]')."""
    from tokembed.serve import ServeOptions, run_server

    _check_log_level(log_level)
    api_key = _key_from_environment(api_key)
    options = ServeOptions(
        max_batch_tokens=max_batch_tokens,
        batch_window_ms=batch_window_ms,
        max_model_len=max_model_len,
        max_inputs=max_inputs,
        served_model_name=served_model_name,
        dtype=dtype.value,
        lora_modules=_parse_lora_modules(_with_listed_modules(lora_modules or [], ctx.args)),
    )
    try:
        run_server(
            model,
            host=host,
            port=port,
            devices=devices,
            options=options,
            api_key=api_key,
            max_body_bytes=_max_body_bytes(max_body_mb),
            trust_remote_code=trust_remote_code,
            log_level=log_level,
            announce=lambda line: print(line, file=sys.stderr, flush=True),
            index=index,
            abandon=_exit_now,
            base_model=base_model,
        )
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT/SIGTERM it handled once it has shut down
        pass
    print("tokembed: server stopped", file=sys.stderr)


def _key_from_environment(api_key: str | None) -> str | None:
    """click takes an empty TOKEMBED_API_KEY for an unset one, which would serve without a key: refused instead
    (``KEY=$(cat missing-file)`` must not open the server), as an empty --api-key is."""
    from tokembed.errors import UsageError

    if api_key is None and os.environ.get("TOKEMBED_API_KEY") == "":
        raise UsageError("TOKEMBED_API_KEY is set but empty: every client sending 'Authorization: Bearer' would pass",
                         hint="set a key, or unset TOKEMBED_API_KEY to serve without one")
    return api_key


def _check_log_level(log_level: str) -> None:
    """Before the model loads: uvicorn reads the level only once the server is configured (a KeyError then)."""
    from tokembed.errors import UsageError

    if log_level not in LOG_LEVELS:
        raise UsageError(f"--log-level {log_level!r}: must be one of {', '.join(LOG_LEVELS)}")


def _max_body_bytes(max_body_mb: float) -> int:
    from tokembed.errors import UsageError

    if not math.isfinite(max_body_mb):
        raise UsageError(f"--max-body-mb must be a finite number of MiB, got {max_body_mb}")
    return int(max_body_mb * 1024 * 1024)


def _exit_now(running: list[str]) -> NoReturn:
    """A forward pass or a tokenization outlived the shutdown grace (its clients already got 503): end the process
    without finalizing the interpreter, which would abort under torch's running threads (exit 134, not 0) or wait
    for the tokenizer's."""
    verb = "were" if len(running) > 1 else "was"
    print(f"tokembed: server stopped ({' and '.join(running)} still running {verb} abandoned)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _with_listed_modules(values: list[str], extra: list[str]) -> list[str]:
    """vLLM's ``--lora-modules a=X b=Y`` (nargs="+"): the words after the flag arrive as extra arguments."""
    from tokembed.errors import UsageError

    if not extra:
        return values
    if not values or not all("=" in word or word.lstrip().startswith("{") for word in extra):
        raise UsageError(f"unexpected argument(s) {' '.join(extra)!r}: serve takes no arguments, only options "
                         "(--model M; several adapters: --lora-modules a=X b=Y)")
    return values + extra


def _parse_lora_modules(values: list[str]) -> tuple[tuple[str, str], ...]:
    from tokembed.errors import UsageError

    pairs = []
    for value in values:
        if value.lstrip().startswith("{"):
            pairs.append(_lora_module_from_json(value))
            continue
        # one NAME=PATH per value, as vLLM takes it (a path may hold spaces); several, space-separated, in one
        # value where each has its own "="
        for item in (value.split() if value.count("=") > 1 else [value.strip()]):
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise UsageError(f"--lora-modules {item!r}: expected NAME=PATH")
            pairs.append((name, path))
    return tuple(pairs)


def _lora_module_from_json(value: str) -> tuple[str, str]:
    """vLLM's JSON form: {"name": ..., "path": ..., "base_model_name": ...} (the base is --model here)."""
    from tokembed.errors import UsageError

    try:
        module = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--lora-modules {value!r}: not valid JSON ({exc})") from None
    unknown = sorted(set(module) - {"name", "path", "base_model_name"}) if isinstance(module, dict) else []
    if not isinstance(module, dict) or unknown:
        raise UsageError(f"--lora-modules {value!r}: expected a JSON object with name and path"
                         + (f" (unknown key(s) {', '.join(unknown)})" if unknown else ""))
    name, path = module.get("name"), module.get("path")
    if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
        raise UsageError(f"--lora-modules {value!r}: expected a JSON object with name and path, both non-empty strings")
    return name, path
