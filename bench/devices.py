"""Benchmark the encoding engine across ``--devices`` and compute dtypes.

    python bench/devices.py                 # ~1200 real docstrings, the demo model (all-MiniLM-L6-v2, raw mode)
    python bench/devices.py --docs 300      # quicker

On a CPU box it compares, side by side: the in-process runner (``cpu``: two lanes of batches, see
``tokembed/engine/local.py``) and 1 and 2 worker processes
(``cpu:1``, ``cpu:2``), each in float32 and bfloat16. On a CUDA box it runs one GPU (``cuda:0``) with its
default one lane and with two (``TOKEMBED_GPU_LANES=2``, a CUDA stream each) and every GPU (``auto``), and
prints per GPU its tokens/s, the useful-token fraction (real / padded tokens) and the fraction of its busy
time spent in the model forward (CUDA events around the forward; the rest is
collate, host-to-device copy, finish and the copy back).

Every case loads its model first (workers: once each) and warms up on a small chunk; then the cases take
turns, one pass over the corpus each (chunks of ``--chunk-rows``, as ``tokembed encode`` feeds them),
``--passes`` rounds, and each reports its median pass. Interleaving matters on a shared box: two torch
threads on two cores slow down several-fold whenever another process takes a core. Worker startup (spawn +
import + model load) is timed separately: it is paid once per run. Rows of every case are compared
bitwise to the in-process case of the same dtype. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


class _Quiet:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)


class Case:
    """One ``--devices`` / ``--dtype`` combination: its runner stays open (workers loaded) across passes."""

    def __init__(self, devices: str, dtype: str, batch_tokens: int, lanes: int | None = None) -> None:
        from tokembed.embedder import Embedder
        from tokembed.encode import EncodeJob
        from tokembed.engine import open_runner
        from tokembed.engine.device import resolve_device
        from tokembed.settings import EncodeFlags

        self.name = f"{devices} {dtype}" + (f" {lanes} lanes" if lanes else "")
        self.devices, self.dtype = devices, dtype
        flags = EncodeFlags(dtype=dtype, store_dtype="float32")
        job = EncodeJob(inputs=[], output=Path("."), flags=flags, devices=devices, batch_tokens=batch_tokens)
        self.progress = _Quiet()
        embedder = Embedder.load(None, flags, resolve_device(devices))
        started = time.perf_counter()
        if lanes:  # the in-process runner with that many lanes (as TOKEMBED_GPU_LANES / TOKEMBED_CPU_LANES set)
            from tokembed.engine.local import LocalRunner

            self.runner = LocalRunner(embedder, batch_tokens, self.progress, lanes=lanes)
        else:
            self.runner = open_runner(embedder, job, self.progress)
        list(self.runner.map_chunks([["warm-up: workers loaded and a first forward done"] * 16]))
        self.startup = time.perf_counter() - started
        self.passes: list[dict] = []

    def time_pass(self, chunks: list[list[str]]) -> None:
        stats = self.runner.device_stats
        before = {label: (s.real_tokens, s.busy_seconds, s.forward_seconds) for label, s in stats.items()}
        _sync(self.devices)
        started = time.perf_counter()
        results = list(self.runner.map_chunks(chunks))
        _sync(self.devices)
        seconds = time.perf_counter() - started
        per_device = {}
        for label, now in stats.items():
            tokens, busy, forward = (a - b for a, b in zip((now.real_tokens, now.busy_seconds, now.forward_seconds), before[label]))
            per_device[label] = {"tokens_per_s": tokens / seconds, "busy": busy / seconds, "forward_of_busy": forward / busy if busy else 0.0}
        real = sum(r.real_tokens for r in results)
        computed = sum(r.computed_tokens for r in results)
        self.rows = [row for r in results for row in zip(r.vectors, r.token_ids)]
        self.tokens = real
        self.passes.append({"seconds": seconds, "tokens_per_s": real / seconds, "useful": real / computed, "devices": per_device})

    def median(self) -> dict:
        """Each figure's median over the passes (an even count: the mean of the middle two), per device too."""
        devices = {label: {key: statistics.median(p["devices"][label][key] for p in self.passes) for key in figures}
                   for label, figures in self.passes[0]["devices"].items()}
        return {key: statistics.median(p[key] for p in self.passes) for key in ("seconds", "tokens_per_s", "useful")} | {"devices": devices}

    def close(self) -> None:
        self.runner.close()


def _sync(devices: str) -> None:
    import torch

    if torch.cuda.is_available() and not devices.startswith("cpu"):
        torch.cuda.synchronize()


def identical(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))


def min_cosine(a: list, b: list) -> float:
    worst = 1.0
    for (x, _), (y, _) in zip(a, b):
        if len(x):
            cosine = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1) + 1e-12)
            worst = min(worst, float(cosine.min()))
    return worst


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor())
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1200, help="real docstrings encoded per pass (default 1200)")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="each case's --batch-tokens (default 16384)")
    parser.add_argument("--chunk-rows", type=int, default=256, help="rows per chunk fed to the runner, as encode reads them (default 256)")
    parser.add_argument("--passes", type=int, default=3, help="interleaved passes per case, median printed (default 3)")
    parser.add_argument("--gpu-only", action="store_true", help="on a CUDA box, leave out the CPU case (its "
                        "spinning OpenMP threads can slow the host side of the GPU cases that follow it)")
    args = parser.parse_args()

    import torch

    from _corpus import docstrings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = docstrings(args.docs)
    if torch.cuda.is_available():  # the tokenizer keeps its threads, as in `tokembed encode`: the GPU waits on it
        cases = [("cpu", "float32", None), ("cuda:0", "auto", None), ("cuda:0", "auto", 2), ("auto", "auto", None)][args.gpu_only:]
    else:  # one tokenizer thread, as in the CPU figures of earlier releases (comparable)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        cases = [(d, t, None) for t in ("float32", "bfloat16") for d in ("cpu", "cpu:1", "cpu:2")]
    print(f"device: {device_name()}; torch {torch.__version__}; model all-MiniLM-L6-v2 (raw); "
          f"{len(texts)} docstrings, chunks of {args.chunk_rows}, --batch-tokens {args.batch_tokens}")
    parser_note = f"median of {args.passes} passes per case, cases interleaved"
    opened = []
    try:
        for devices, dtype, lanes in cases:
            opened.append(Case(devices, dtype, args.batch_tokens, lanes))
            print(f"  {opened[-1].name}: ready in {opened[-1].startup:.1f}s", flush=True)
        chunks = [texts[i : i + args.chunk_rows] for i in range(0, len(texts), args.chunk_rows)]
        for round_ in range(args.passes):  # interleaved: a burst of load elsewhere hits every case alike
            for case in opened:
                case.time_pass(chunks)
            print(f"  pass {round_ + 1}: " + ", ".join(f"{c.name} {c.passes[-1]['tokens_per_s']:,.0f}" for c in opened), flush=True)
    finally:
        for case in opened:
            case.close()
    report(opened, parser_note)


def report(cases: list, note: str) -> None:
    base = {}  # per dtype, the first case: the in-process CPU, or on a GPU box one GPU lane
    for case in cases:
        base.setdefault(case.dtype, case)
    fp32 = cases[0]
    fp32_rate = fp32.median()["tokens_per_s"]
    print()
    header = (f"{'case':<18} {'tokens/s':>10} {'vs ' + fp32.name:>18} {'startup s':>9} {'useful':>7}  "
              f"{'rows vs in-process':<27} per device: tokens/s, busy, forward/busy")
    print(header)
    print("-" * len(header))
    for case in cases:
        best = case.median()
        reference = base.get(case.dtype, fp32)
        if case is fp32:
            same = "(reference)"
        elif case is reference:
            same = f"vs {fp32.dtype}: cos >= {min_cosine(case.rows, fp32.rows):.5f}"
        elif identical(case.rows, reference.rows):
            same = "bitwise identical"
        else:
            same = f"cos >= {min_cosine(case.rows, reference.rows):.5f}"
        per = "; ".join(f"{label} {d['tokens_per_s']:,.0f}, {d['busy']:.0%}, {d['forward_of_busy']:.0%}" for label, d in best["devices"].items())
        print(
            f"{case.name:<18} {best['tokens_per_s']:>10,.0f} {best['tokens_per_s'] / fp32_rate:>17.2f}x "
            f"{case.startup:>9.1f} {best['useful']:>7.3f}  {same:<27} {per}"
        )
        for line in case.progress.lines:
            if "out of memory" in line or "died" in line:
                print(f"    {line}")
    print(f"\n{fp32.tokens:,} real tokens per pass; {note}. startup: what the runner adds before its first batch is"
          " back (workers: spawn, import, model load; the main process loads its model before, in every case). busy: share of the pass the device spent on batches (in-process: summed over its two lanes, so up to 200%); forward/busy: share of"
          " that in the model forward. 'rows vs in-process': against the first case of the same dtype (on a GPU box, cuda:0).")


if __name__ == "__main__":
    main()
