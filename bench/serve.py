"""Benchmark ``tokembed serve``'s dynamic batching: one forward pass per input vs merged token-budget batches.

    python bench/serve.py                         # demo MiniLM, 512 requests of 1-4 sample sentences
    python bench/serve.py --model PATH --requests 1000 --concurrency 1 16 64

Each configuration runs a real server (``tokembed serve`` in a subprocess, on 127.0.0.1, a free port) and
an asyncio + httpx load generator here, after a warm-up. The baseline is the same server with
``--max-batch-tokens 1`` (the planner then gives every input its own forward pass); the candidate uses the
default budget and ``--batch-window-ms``. Prints requests/s, inputs/s, forward passes per request and the
useful-token fraction (real / padded tokens) per concurrency, and the speedup. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France and its largest city.",
    "ColBERT stores one vector per token and scores with MaxSim.",
    "Late interaction keeps token-level detail at retrieval time.",
    "A short query.",
    "Mars is often called the red planet because of iron oxide on its surface.",
    "The batcher merges concurrent requests into token-budget batches.",
    "hello world",
]


def start_server(model: str | None, extra: list[str]) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "cli.main", "serve", "--port", "0", "--log-level", "warning", *extra]
    if model:
        command += ["--model", model]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    if " at http" not in line:
        process.kill()
        raise SystemExit(f"server did not start: {line}{process.stderr.read()}")
    return process, line.rsplit(" at ", 1)[1].strip()


def metrics(url: str) -> dict[str, float]:
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line}


async def load(url: str, bodies: list[dict], concurrency: int) -> float:
    import httpx

    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def one(body):
            async with gate:
                response = await client.post("/pooling", json=body)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        return time.perf_counter() - started


def run_case(url: str, bodies: list[dict], concurrency: int) -> dict:
    asyncio.run(load(url, bodies[: max(8, concurrency)], concurrency))  # warm-up
    before = metrics(url)
    seconds = asyncio.run(load(url, bodies, concurrency))
    after = metrics(url)
    delta = {key: after[key] - before.get(key, 0) for key in after}
    inputs = sum(len(body["input"]) for body in bodies)
    return {
        "req_s": len(bodies) / seconds,
        "inputs_s": inputs / seconds,
        "batches_per_request": delta["tokembed_batcher_batches"] / len(bodies),
        "useful": delta["tokembed_batcher_real_tokens"] / max(1.0, delta["tokembed_batcher_computed_tokens"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint (default: the demo MiniLM)")
    parser.add_argument("--requests", type=int, default=512, help="requests of 1-4 sample sentences per case (default 512)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64],
                        help="requests in flight at once, one case each (default 1 16 64)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0, help="the dynamic-batching server's --batch-window-ms (default 5)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    rng = random.Random(0)
    bodies = [{"input": rng.sample(SENTENCES, rng.randint(1, 4))} for _ in range(args.requests)]
    configs = {
        "one input per forward": ["--max-batch-tokens", "1", "--batch-window-ms", "0"],
        "dynamic batching": ["--batch-window-ms", str(args.batch_window_ms)],
    }
    results: dict[str, dict[int, dict]] = {}
    for name, extra in configs.items():
        process, url = start_server(args.model, extra)
        try:
            results[name] = {c: run_case(url, bodies, c) for c in args.concurrency}
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)

    import torch

    print(f"device: cpu ({torch.get_num_threads()} threads), {args.requests} requests, model {args.model or 'demo MiniLM'}")
    print(f"{'concurrency':>11} {'config':>22} {'req/s':>8} {'inputs/s':>9} {'fwd/req':>8} {'useful':>7}")
    for c in args.concurrency:
        for name in configs:
            r = results[name][c]
            print(f"{c:>11} {name:>22} {r['req_s']:8.1f} {r['inputs_s']:9.1f} {r['batches_per_request']:8.2f} {r['useful']:7.3f}")
        base, cand = results["one input per forward"][c], results["dynamic batching"][c]
        print(f"{c:>11} {'speedup':>22} {cand['req_s'] / base['req_s']:8.2f}x")


if __name__ == "__main__":
    main()
