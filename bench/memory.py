"""Peak RSS of ``tokembed encode`` on generated Parquet corpora of growing size.

    python bench/memory.py [--rows 20000 100000 200000] [--dtype bfloat16]   # the README's figures: bfloat16

Each corpus is encoded by a fresh ``tokembed encode`` process (demo model), then encoded again the way
a nightly cron job does (nothing changed: every row is carried over from the memory-mapped index);
each peak RSS is read from ``getrusage(RUSAGE_CHILDREN)`` of a wrapper process. Flat peaks across row
counts mean memory is bounded by one chunk, not the corpus. Target: <= 1.5 GB at 200k rows. The compute dtype
is bfloat16 where the CPU has bfloat16 instructions (AVX512-BF16 or AMX), else float32 (bfloat16 runs emulated
there, several times slower), as ``bench/encode.py`` decides; ``--dtype`` sets it. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _corpus import generated_texts  # noqa: E402

WRAPPER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def write_corpus(path: Path, rows: int, max_words: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        texts = generated_texts(rows, max_words=max_words)
        for start in range(0, rows, 10_000):
            part = [next(texts) for _ in range(min(10_000, rows - start))]
            ids = [f"r{start + i}" for i in range(len(part))]
            writer.write_table(pa.table({"id": ids, "text": part}, schema=schema))


def peak_rss_mb(cmd: list[str], env: dict) -> tuple[float, float]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], check=True, capture_output=True, text=True, env=env)
    return int(out.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def native_dtype() -> str:
    """bfloat16 where the CPU has bfloat16 instructions (the shorter run there), else float32: emulated bfloat16's
    first encode of 300 rows of up to 16 words took 35 s where float32's took 9 (a 2-core AVX2 AMD EPYC)."""
    import torch

    return "bfloat16" if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported() else "float32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 100_000, 200_000],
                        help="corpus sizes, one encode and re-run each (default 20000 100000 200000)")
    parser.add_argument("--max-words", type=int, default=24, help="generated passages have 5..N words")
    parser.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on a CPU with AVX512-BF16 or "
                        "AMX, else float32: bfloat16 runs emulated there, several times slower)")
    args = parser.parse_args()
    dtype = args.dtype or native_dtype()
    with tempfile.TemporaryDirectory(prefix="tokembed-mem-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        print(f"tokembed encode --dtype {dtype}, demo model")
        print(f"{'rows':>8} {'peak RSS MB':>12} {'seconds':>8} {'re-run peak RSS MB':>19} {'seconds':>8}")
        for rows in args.rows:
            corpus = work / f"c{rows}.parquet"
            write_corpus(corpus, rows, args.max_words)
            cmd = [sys.executable, "-m", "cli.main", "encode", str(corpus), "-o", str(work / f"i{rows}"), "-q", "--dtype", dtype]
            full_mb, full_s = peak_rss_mb(cmd, env)
            rerun_mb, rerun_s = peak_rss_mb(cmd, env)
            print(f"{rows:>8} {full_mb:>12,.0f} {full_s:>8.0f} {rerun_mb:>19,.0f} {rerun_s:>8.0f}")


if __name__ == "__main__":
    main()
