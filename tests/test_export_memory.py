"""``export --format lance`` streams: the peak RSS of exporting an index 4 times larger is about the same (whole
subprocess measured). LanceDB's writer reads a batch from its own threads a few batches behind the one it takes;
a zero-copy view of the memory map faulted the dropped pages back in for good, so the peak grew with the index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

DIM, TOKENS, SHARD_ROWS = 128, 32, 250  # 16 KB of float32 a row, 4 MB a shard

PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from tokembed.index.export import export_index

    work = sys.argv[1]
    def peak_mb():  # VmHWM, not ru_maxrss: that one carries pytest's own peak over the fork and exec
        return int([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")][0]) / 1024

    peaks = {}
    # LanceDB's first runs grow a little, whatever their size: the small index twice
    for index, run in (("small", "warm-up"), ("small", "small"), ("large", "large")):
        export_index(f"{work}/{index}", f"{work}/{run}-lance", "lance")
        peaks[run] = peak_mb()
    print("PEAKS " + json.dumps(peaks))
    """
)


def _float32_index(folder, rows: int, seed: int):
    """A model-less float32 index of ``rows`` random rows of TOKENS vectors, a record batch a shard."""
    from tokembed.index.format import FORMAT, FORMAT_VERSION
    from tokembed.index.writer import IndexWriter

    rng = np.random.default_rng(seed)
    writer = IndexWriter(folder, DIM, "float32", shard_rows=SHARD_ROWS)
    token_ids, hashes = [np.arange(TOKENS, dtype=np.int32)] * SHARD_ROWS, [bytes(32)] * SHARD_ROWS
    for start in range(0, rows, SHARD_ROWS):
        docs = list(rng.standard_normal((SHARD_ROWS, TOKENS, DIM), dtype=np.float32))
        writer.write([f"d{start + i}" for i in range(SHARD_ROWS)], docs, token_ids, hashes)
    writer.close_shard()
    shards = [shard.to_json() for shard in writer.shards]
    writer.commit({"format": FORMAT, "format_version": FORMAT_VERSION, "dim": DIM, "embedding_dtype": "float32",
                   "shards": shards, "totals": {"rows": rows, "tokens": rows * TOKENS,
                                                "bytes": sum(shard["bytes"] for shard in shards)}})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_lance_export_peak_rss_does_not_grow_with_the_index(tmp_path):
    pytest.importorskip("lancedb", reason="the [lance] extra is not installed")
    _float32_index(tmp_path / "small", 2000, seed=1)  # 32 MB of vectors
    _float32_index(tmp_path / "large", 8000, seed=2)  # 128 MB
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = [l for l in result.stdout.splitlines() if l.startswith("PEAKS ")]
    peaks = json.loads(line.removeprefix("PEAKS "))
    print(f"peak RSS: export of 32 MB {peaks['small']:.0f} MB, of 128 MB {peaks['large']:.0f} MB")
    assert peaks["large"] - peaks["small"] < 50, peaks  # was ~100: the 96 MB more of vectors, resident
