"""Benchmark ``--engine ray`` against the local engine, and image models on ``cpu:2`` against ``cpu``.

    python bench/ray.py                          # starts a one-node loopback cluster, stops it afterwards
    python bench/ray.py --ray-address HOST:PORT  # an existing cluster (its CPUs/GPUs)
    python bench/ray.py --docs 300 --passes 2    # quicker

Text: the demo model (all-MiniLM-L6-v2, raw mode) on ~1200 real docstrings. Local engine: ``cpu:N``
worker processes; Ray: N actors of the same core share (``--devices cpu:N``, or ``auto`` = one actor per
GPU when the cluster has GPUs, then compared with the local ``auto``). Start-up (connect, actors or
workers spawned, model loaded, one warm-up chunk) is timed separately; then the cases take turns, one pass
over the corpus each (chunks of ``--chunk-rows``, as ``tokembed encode`` feeds them), ``--passes`` rounds,
median pass per case (warm steady state). Ray's staged chunk files are removed between passes, or a pass
would reuse them. Rows are compared bitwise with the local engine's.

Images: the tiny random ColQwen2 of ``tests/vision_checkpoints.py`` on ``sample_data/images`` repeated
``--image-repeat`` times, ``cpu`` (in process) vs ``cpu:2`` (two workers, which also run the processor), and
``cpu:2`` with the processor in the main process (how the pool ran images before): how image work spreads
over the pool. Its figures are processor-heavy (a real ColQwen2 spends far more time per image in the forward).
``--part text`` or ``--part images`` runs only one half.
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
# This file is bench/ray.py: with bench/ on the path, `import ray` would import it instead of Ray.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


class _Quiet:
    def log(self, message: str) -> None:
        pass


class Case:
    """One engine/devices pair, its runner opened once (start-up timed) and timed per pass."""

    def __init__(self, name: str, model, flags, engine: str, devices: str, batch_tokens: int, output: Path, address: str | None,
                 main_process_processor: bool = False) -> None:
        from tokembed.embedder import Embedder
        from tokembed.encode import EncodeJob
        from tokembed.engine import open_runner

        self.name, self.engine, self.output = name, engine, output
        job = EncodeJob(inputs=[], output=output, model=model, flags=flags, devices=devices, batch_tokens=batch_tokens,
                        engine=engine, ray_address=address)
        embedder = Embedder.load(model, flags, "cpu")
        self.encoder = embedder.encoder
        started = time.perf_counter()
        self.runner = open_runner(embedder, job, _Quiet())
        if main_process_processor:
            self.runner._workers_prepare = False  # the pool's former image path: the main process runs the processor
        self.startup = time.perf_counter() - started  # connect / spawn + model load
        started = time.perf_counter()
        self._run([warm_up_inputs(embedder)])
        self.first_chunk = time.perf_counter() - started
        self.seconds: list[float] = []
        self.main_cpu: list[float] = []  # CPU seconds of this (the main) process per pass: its serial share of the work
        self.tokens = 0
        self.rows: list = []

    def _run(self, chunks: list[list]) -> list:
        results = list(self.runner.map_chunks(chunks))
        staging = self.output / "staging"
        for path in staging.glob("chunk-*.arrow") if staging.is_dir() else []:
            path.unlink()  # a later pass must encode again, not reuse the staged chunk
        return results

    def time_pass(self, chunks: list[list]) -> None:
        started, cpu = time.perf_counter(), time.process_time()
        results = self._run(chunks)
        self.seconds.append(time.perf_counter() - started)
        self.main_cpu.append(time.process_time() - cpu)
        self.tokens = sum(r.real_tokens for r in results)
        self.rows = [row for r in results for row in zip(r.vectors, r.token_ids)]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / statistics.median(self.seconds)

    def close(self) -> None:
        self.runner.close()


def warm_up_inputs(embedder) -> list:
    if embedder.is_vision:
        from tokembed.sources.images import decode_image

        first = sorted((REPO / "sample_data" / "images").iterdir())[0]
        return [decode_image(first.read_bytes(), 40_000_000).image]
    return ["warm-up: actors or workers loaded and a first forward done"] * 16


def start_cluster(cpus: int) -> tuple[str, subprocess.Popen]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    for _ in range(180):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(2)
            return f"127.0.0.1:{port}", head
        except OSError:
            time.sleep(0.5)
    stop_cluster(head)
    raise SystemExit("the Ray head did not start")


def stop_cluster(head: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(head.pid, sig)
            head.wait(timeout=15)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def compare(cases: list[Case], chunks: list[list], passes: int) -> None:
    for _ in range(passes):
        for case in cases:
            case.time_pass(chunks)
    base = cases[0]
    for case in cases:
        same = len(case.rows) == len(base.rows) and all(
            np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(case.rows, base.rows)
        )
        # Ready = runner opened + a first chunk back: workers spawn in the background, so opening alone says little.
        ready, base_ready = case.startup + case.first_chunk, base.startup + base.first_chunk
        print(
            f"  {case.name:<16} ready after {ready:5.1f} s ({ready - base_ready:+5.1f} s vs {base.name})   "
            f"{case.tokens_per_s:9,.0f} tokens/s warm (x{case.tokens_per_s / base.tokens_per_s:4.2f} of {base.name}; "
            f"main process CPU {statistics.median(case.main_cpu):.1f} s of {statistics.median(case.seconds):.1f} s)   "
            f"rows {'bitwise equal' if same else 'DIFFER'}"
        )


def image_inputs(repeat: int) -> list:
    from tokembed.sources.images import decode_image

    files = sorted((REPO / "sample_data" / "images").iterdir())
    return [decode_image(path.read_bytes(), 40_000_000).image for path in files] * repeat


def build_image_model(path: Path) -> Path:
    from vision_checkpoints import build_colqwen2

    return build_colqwen2(path)


def chunked(items: list, rows: int) -> list[list]:
    return [items[start : start + rows] for start in range(0, len(items), rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1200, help="real docstrings of the text part (default 1200)")
    parser.add_argument("--chunk-rows", type=int, default=256, help="rows per chunk of the text part, as encode reads them (default 256)")
    parser.add_argument("--batch-tokens", type=int, default=8192, help="--batch-tokens of the text part (default 8192)")
    parser.add_argument("--passes", type=int, default=3, help="interleaved passes per case, median printed (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="CPU workers / actors of each engine")
    parser.add_argument("--image-repeat", type=int, default=6, help="times the images part repeats sample_data/images' pages (default 6)")
    parser.add_argument("--ray-address", default=None, help="an existing cluster; default: start a loopback one")
    parser.add_argument("--part", choices=("all", "text", "images"), default="all")
    args = parser.parse_args()

    import torch

    import importlib.util

    spec = importlib.util.spec_from_file_location("_corpus", REPO / "bench" / "_corpus.py")
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    docstrings = corpus.docstrings

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    head = None
    address = args.ray_address
    if address is None and args.part != "images":
        address, head = start_cluster(len(os.sched_getaffinity(0)))
        print(f"ray: started a one-node cluster on {address}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.part != "images":
                run_text(args, docstrings, address, Path(tmp))
            if args.part != "text":
                run_images(args, Path(tmp))
    finally:
        if head is not None:
            stop_cluster(head)


def run_text(args, docstrings, address: str, tmp: Path) -> None:
    import torch

    from tokembed.settings import EncodeFlags

    texts = docstrings(args.docs)
    devices = "auto" if torch.cuda.is_available() else f"cpu:{args.workers}"
    flags = EncodeFlags(store_dtype="float32")
    print(f"\ntext: demo model, {len(texts)} docstrings, chunks of {args.chunk_rows}, --devices {devices}, median of {args.passes} passes")
    cases = [
        Case(f"local {devices}", None, flags, "local", devices, args.batch_tokens, tmp / "local", None),
        Case(f"ray {devices}", None, flags, "ray", devices, args.batch_tokens, tmp / "ray", address),
    ]
    try:
        compare(cases, chunked(texts, args.chunk_rows), args.passes)
    finally:
        for case in cases:
            case.close()


def run_images(args, tmp: Path) -> None:
    from tokembed.settings import EncodeFlags

    flags = EncodeFlags(store_dtype="float32")
    images = image_inputs(args.image_repeat)
    model = build_image_model(tmp / "colqwen2")
    print(f"\nimages: tiny ColQwen2, {len(images)} images, chunks of 16, median of {args.passes} passes")
    cases = [
        Case("local cpu", str(model), flags, "local", "cpu", 512, tmp / "img-cpu", None),
        Case("cpu:2 main proc.", str(model), flags, "local", "cpu:2", 512, tmp / "img-cpu2-main", None, main_process_processor=True),
        Case("local cpu:2", str(model), flags, "local", "cpu:2", 512, tmp / "img-cpu2", None),
    ]
    try:
        compare(cases, chunked(images, 16), args.passes)
    finally:
        for case in cases:
            case.close()


if __name__ == "__main__":
    main()
