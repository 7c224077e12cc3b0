"""Encode throughput: tokembed vs the PyLate-semantics reference, same checkpoint, corpus and threads.

    python bench/encode.py [--docs 1200] [--repeats 3] [--no-process]

Reference: sentence-transformers' ``MultiVectorEncoder.encode_document`` (it reproduces PyLate) on the
demo all-MiniLM-L6-v2, batch_size 32. tokembed: ``encode_corpus`` (read Parquet, sort, batch, encode,
write Arrow) in float32 and bfloat16. Each side runs in a worker process of its own (model loaded and
warmed up, then one timed pass: the reference's ``encode_document`` call, tokembed's ``encode_seconds``, first
read to commit, without the model load ``encode_corpus`` repeats on each call; neither inherits the other's allocator state; both get the kernel-cache caps
that importing tokembed sets, which speed up the reference too), and the
sides alternate --repeats times so that load from elsewhere on the box hits them alike. Then whole
processes as cron runs them, one per side (tokembed CLI vs a script calling ``MultiVectorEncoder``): whole
process and its encode part (tokembed's ``encode_seconds`` vs the reference's ``encode_document`` call). Every
figure is also printed as a fraction of the GEMM-only ceiling measured in the same run (the model's linear
layers at this box's GEMM rate). ``--openvino`` adds each dtype with ``TOKEMBED_CPU_RUNTIME=openvino`` (the
backbone's forward in OpenVINO) to both. Prints medians and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo: tokembed without an install

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import tokembed  # noqa: E402,F401  (before torch: it caps the native kernel caches, as the CLI does)
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from _corpus import docstrings  # noqa: E402
from _timing import timed_runs  # noqa: E402


def reference_encoder(model_path: Path):
    from sentence_transformers import MultiVectorEncoder

    return MultiVectorEncoder(str(model_path), device="cpu", local_files_only=True)


def tokembed_run(corpus: Path, out: Path, dtype: str, batch_tokens: int):
    from tokembed.encode import EncodeJob, encode_corpus
    from tokembed.settings import EncodeFlags

    job = EncodeJob(inputs=[corpus], output=out, flags=EncodeFlags(dtype=dtype), batch_tokens=batch_tokens, full=True)
    return encode_corpus(job)


def bf16_cosines(texts: list[str]) -> np.ndarray:
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    exact = Embedder.load(None, EncodeFlags(store_dtype="float32")).embed(texts)
    fast = Embedder.load(None, EncodeFlags(store_dtype="float32", dtype="bfloat16")).embed(texts)
    return np.concatenate([(a * b).sum(axis=1) for (a, _), (b, _) in zip(exact, fast)])


def worker(side: str, corpus: Path, batch_tokens: int) -> dict:
    """One side in this (fresh) process: warm-up pass, then one timed pass."""
    if side == "reference":
        from tokembed.models.resolve import resolve_model

        texts = pq.read_table(corpus).column("text").to_pylist()
        reference = reference_encoder(resolve_model(None).path)
        reference.encode_document(texts[:64], batch_size=32)
        return {"seconds": timed_runs(lambda: reference.encode_document(texts, batch_size=32), 1)[0]}
    if side.startswith("openvino"):  # the backbone in OpenVINO (TOKEMBED_CPU_RUNTIME; conversion cached)
        os.environ["TOKEMBED_CPU_RUNTIME"], side = "openvino", OPENVINO_SIDES[side]
    work = Path(tempfile.mkdtemp(prefix="tokembed-bench-"))
    try:
        warm = tokembed_run(corpus, work / "warm", side, batch_tokens)
        timed = tokembed_run(corpus, work / "timed", side, batch_tokens)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # encode_seconds: first read to commit (Parquet read, plan, forward, Arrow write, fsync, manifest), without the
    # model load encode_corpus does on every call; the reference's timed call has its model loaded too.
    return {"seconds": timed.encode_seconds, "tokens": warm.tokens_in, "useful": warm.useful_token_fraction}


def run_worker(side: str, corpus: Path, batch_tokens: int) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--corpus", str(corpus), "--batch-tokens", str(batch_tokens)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def gemm_ceilings(model_path: Path) -> dict[str, float]:
    """The box's GEMM rate in float32 and bfloat16 at the model's own shapes, as a tokens/s ceiling:
    what the model's linear layers alone would allow if nothing else (attention, GELU, norms,
    tokenization, writing) took any time. Returns dtype name -> tokens/s."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_path), local_files_only=True)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    flops_per_token = 2 * sum(m.in_features * m.out_features for m in linear)
    shapes = sorted({(m.in_features, m.out_features) for m in linear})
    ceilings = {}
    for dtype in (torch.float32, torch.bfloat16):
        rates = []
        for k, n in shapes:
            # the model's own call (``F.linear``, weight [out, in]) without its bias: on a CPU without native
            # bfloat16 instructions ``a @ b`` with a [in, out] weight takes a 10x slower path than this one
            a, w = torch.randn(4096, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
            F.linear(a, w)
            rates.append(2 * 4096 * k * n / min(timed_runs(lambda: F.linear(a, w), 5)))
        gflops = statistics.median(rates) / 1e9
        print(f"GEMM {str(dtype).removeprefix('torch.')}: {gflops:.0f} GFLOP/s at the model's shapes "
              f"= {gflops * 1e9 / flops_per_token:,.0f} tokens/s if the linear layers were all the work "
              f"({flops_per_token / 1e6:.1f} MFLOP/token)")
        ceilings[str(dtype).removeprefix("torch.")] = gflops * 1e9 / flops_per_token
    return ceilings


def of_ceiling(rate: float, ceiling: float) -> str:
    """``rate`` as a share of the GEMM-only ceiling; over 100% only when the ceiling's own timing was slowed."""
    share = f"{rate / ceiling:.0%}"
    return share if rate <= ceiling else f"{share} (ceiling measured low: noisy box)"


def native_bfloat16() -> bool:
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


OPENVINO_SIDES = {"openvino": "float32", "openvino-bf16": "bfloat16"}  # side -> its dtype


def cold_process(args: list[str], extra_env: dict | None = None) -> tuple[float, float]:
    """(whole-process wall seconds, its encode seconds) of one cold process that prints a JSON summary with
    ``encode_seconds`` as its last stdout line (tokembed ``--log-format json``; the reference script below)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    start = time.perf_counter()
    done = subprocess.run(args, check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    return wall, json.loads(done.stdout.strip().splitlines()[-1])["encode_seconds"]


# The reference as a cron job would run it: a script that loads MultiVectorEncoder and encodes the corpus.
REFERENCE_SCRIPT = """
import json, sys, time
import pyarrow.parquet as pq
from sentence_transformers import MultiVectorEncoder
model = MultiVectorEncoder(sys.argv[1], device="cpu", local_files_only=True)
texts = pq.read_table(sys.argv[2]).column("text").to_pylist()
start = time.perf_counter()
model.encode_document(texts, batch_size=32)
print(json.dumps({"encode_seconds": time.perf_counter() - start}))
"""


def cold_processes(corpus: Path, model_path: Path, work: Path, repeats: int, tokens: int, ceilings: dict,
                   dtypes: list[str], openvino: list[str] = ()) -> None:
    """Each side as its own cold process, alternating, median of ``repeats``: whole process and encode part."""
    sides = {
        "reference": [sys.executable, "-c", REFERENCE_SCRIPT, str(model_path), str(corpus)],
        "float32": [sys.executable, "-m", "cli.main", "encode", str(corpus), "--full", "-q", "--log-format", "json"],
        "bfloat16": [sys.executable, "-m", "cli.main", "encode", str(corpus), "--full", "-q", "--log-format", "json",
                     "--dtype", "bfloat16"],
    }
    sides = {side: command for side, command in sides.items() if side == "reference" or side in dtypes}
    for side in openvino:
        sides[side] = sides[OPENVINO_SIDES[side]]  # the same CLI command, with TOKEMBED_CPU_RUNTIME=openvino
    runs: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    for number in range(repeats):
        for side, command in sides.items():
            extra = [] if side == "reference" else ["-o", str(work / f"cold-{side}-{number}")]
            runs[side].append(cold_process(command + extra, {"TOKEMBED_CPU_RUNTIME": "openvino"} if side in openvino else None))
    medians = {side: (statistics.median(w for w, _ in r), statistics.median(e for _, e in r)) for side, r in runs.items()}
    ref_wall, ref_encode = medians["reference"]
    print(f"cold processes as cron runs them (median of {repeats}; encode = tokembed encode_seconds, first read "
          "to commit, vs the reference script's encode_document call):")
    print(f"{'side':<34} {'whole s':>8} {'vs ref':>7} {'encode s':>9} {'vs ref':>7} {'tokens/s':>9} {'of GEMM':>8}")
    for side, (wall, encode) in medians.items():
        ceiling = ceilings["float32" if side == "reference" else OPENVINO_SIDES.get(side, side)]
        print(f"{side:<34} {wall:>8.2f} {ref_wall / wall:>6.2f}x {encode:>9.2f} {ref_encode / encode:>6.2f}x "
              f"{tokens / encode:>9,.0f} {of_ceiling(tokens / encode, ceiling):>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1200, help="real docstrings in the corpus (default 1200)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side, median printed (default 3)")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="tokembed's --batch-tokens (default 16384)")
    parser.add_argument("--no-process", action="store_true", help="skip the whole-process timings")
    parser.add_argument("--bf16", action="store_true",
                        help="time bfloat16 even on a CPU without bfloat16 instructions (emulated there: ~6x slower)")
    parser.add_argument("--openvino", action="store_true",
                        help="also time TOKEMBED_CPU_RUNTIME=openvino in each dtype (pip install 'tokembed[openvino]')")
    parser.add_argument("--worker", choices=["reference", "float32", "bfloat16", *OPENVINO_SIDES], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.corpus, args.batch_tokens)))
        return

    from tokembed.models.resolve import resolve_model

    model_path = resolve_model(None).path
    texts = docstrings(args.docs)
    work = Path(tempfile.mkdtemp(prefix="tokembed-bench-"))
    try:
        run(args, model_path, texts, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, model_path: Path, texts: list[str], work: Path) -> None:
    """The corpus written in ``work``, the workers alternated, the tables printed."""
    corpus = work / "corpus.parquet"
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts}), corpus)

    dtypes = ["float32", "bfloat16"] if args.bf16 or native_bfloat16() else ["float32"]
    if "bfloat16" not in dtypes:
        print("bfloat16 skipped: this CPU has no AVX512-BF16 or AMX, so bfloat16 runs emulated (--bf16 to time it)")
    openvino = [side for side, dtype in OPENVINO_SIDES.items() if args.openvino and dtype in dtypes]
    sides = ["reference", *dtypes, *openvino]
    timings: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(args.repeats):
        for side in sides:
            timings[side].append(run_worker(side, corpus, args.batch_tokens))
    tokens = timings["float32"][0]["tokens"]
    ref_s = statistics.median(t["seconds"] for t in timings["reference"])
    rows = [("reference MultiVectorEncoder (fp32, batch 32)", ref_s, None)]
    for dtype in dtypes:
        seconds = statistics.median(t["seconds"] for t in timings[dtype])
        rows.append((f"tokembed encode_corpus ({dtype})", seconds, timings[dtype][0]["useful"]))
    for side in openvino:
        seconds = statistics.median(t["seconds"] for t in timings[side])
        rows.append((f"tokembed encode_corpus ({OPENVINO_SIDES[side]}, OpenVINO)", seconds, timings[side][0]["useful"]))

    print("runs (s): " + "; ".join(f"{side} {[round(t['seconds'], 2) for t in timings[side]]}" for side in sides))
    print(f"device: CPU, torch threads {torch.get_num_threads()}, {len(texts)} docstrings, {tokens} tokens "
          f"(all-MiniLM-L6-v2, max 256 tokens), median of {args.repeats}")
    print(f"{'run':<48} {'tokens/s':>10} {'docs/s':>8} {'useful':>7} {'vs ref':>7}")
    for name, seconds, useful in rows:
        useful_text = f"{useful:.3f}" if useful is not None else "-"
        print(f"{name:<48} {tokens / seconds:>10,.0f} {len(texts) / seconds:>8,.1f} {useful_text:>7} {ref_s / seconds:>6.2f}x")
    if "bfloat16" in dtypes:
        cosines = bf16_cosines(texts[:300])
        print(f"bfloat16 vs float32 per-token cosine: min {cosines.min():.5f}, mean {cosines.mean():.5f}")
    ceilings = gemm_ceilings(model_path)
    print("steady state (warm process, second pass) as a fraction of the GEMM-only ceiling: " + ", ".join(
        f"{name} {of_ceiling(tokens / seconds, ceilings['bfloat16' if 'bfloat16' in name else 'float32'])}"
        for name, seconds, _ in rows
    ))

    if not args.no_process:
        cold_processes(corpus, model_path, work, args.repeats, tokens, ceilings, dtypes, openvino)


if __name__ == "__main__":
    main()
