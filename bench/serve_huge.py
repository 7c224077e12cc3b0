"""Benchmark: does one huge request stall ``tokembed serve``'s other requests?

    python bench/serve_huge.py                    # demo index (built in a temp folder), a 15 MB single word
    python bench/serve_huge.py --mb 15 --seconds 8

A warm server (``tokembed serve --index``, a subprocess on 127.0.0.1) answers small ``/search`` requests (one
every 0.1 s) first alone, for the baseline, then while a ``/search`` whose query is one word of ``--mb`` MB
(no word break: tokenized whole to be truncated exactly) is in flight (the server's ``--max-body-mb`` raised to
fit it). Prints the worst and median latency of
the small requests in each phase, of ``/health`` beside them, and the huge request's own time. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from serve import REPO, start_server


def small_latencies(url: str, seconds: float) -> dict[str, list[float]]:
    import httpx

    found: dict[str, list[float]] = {"/search": [], "/health": []}
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        for path, body in (("/health", None), ("/search", {"query": "bread", "top_k": 1})):
            started = time.perf_counter()
            response = httpx.post(url + path, json=body, timeout=600) if body else httpx.get(url + path, timeout=600)
            response.raise_for_status()
            found[path].append(time.perf_counter() - started)
        time.sleep(0.1)
    return found


def report(phase: str, found: dict[str, list[float]]) -> None:
    for path, values in found.items():
        print(f"{phase:>22} {path:8} worst {max(values):6.2f} s   median {statistics.median(values):6.3f} s   ({len(values)} requests)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=15.0, help="size of the huge query (one word)")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long each phase sends small requests")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        index = Path(folder) / "index"
        subprocess.run([sys.executable, "-m", "cli.main", "encode", str(REPO / "sample_data" / "corpus.parquet"), "-o",
                        str(index), "--quiet"], cwd=REPO, check=True)
        body_mb = max(16.0, args.mb * 1_000_000 / 2**20 + 1)  # serve's default limit (16 MiB) answers a larger body 413
        process, url = start_server(None, ["--index", str(index), "--max-body-mb", f"{body_mb:g}"])
        try:
            report("alone (baseline)", small_latencies(url, args.seconds))
            huge: dict[str, float] = {}

            def send_huge():
                import httpx

                started = time.perf_counter()
                response = httpx.post(url + "/search", json={"query": "x" * int(args.mb * 1_000_000), "top_k": 1}, timeout=600)
                huge["seconds"], huge["status"] = time.perf_counter() - started, response.status_code

            sender = threading.Thread(target=send_huge)
            sender.start()
            time.sleep(0.5)
            beside = small_latencies(url, args.seconds)
            sender.join()
            if huge.get("status") != 200:  # a refusal (413, 400) comes back at once: nothing was beside it
                raise SystemExit(f"the huge query was not answered (HTTP {huge.get('status', 'no response')}): no figures")
            report("beside the huge query", beside)
            print(f"the huge query ({args.mb:g} MB, one word) itself: {huge['seconds']:.2f} s")
        finally:
            process.terminate()
            process.wait(30)


if __name__ == "__main__":
    main()
