"""A long PDF is streamed: peak RSS of encoding 500 pages is that of 70 pages (whole processes measured).

Pages are US Letter rendered at the default 144 dpi (1224x1584 RGB, 5.8 MB each): holding the 500
rendered pages would add ~2.4 GB over the 70-page run; streaming keeps at most a chunk (64) of them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pdfs import image_pdf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# VmHWM, not ru_maxrss: that one carries the pytest process's own peak over the fork and exec
PEAK_RSS = (
    "import sys\n"
    "from cli.main import run\n"
    "code = run(sys.argv[1:])\n"
    "hwm = [line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
    "print('PEAK_KB', hwm, code)\n"
)


@pytest.fixture(scope="module")
def colpali(tmp_path_factory):
    from vision_checkpoints import build_colpali

    return build_colpali(tmp_path_factory.mktemp("vision") / "colpali")


def peak_rss_mb(*args) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PEAK_RSS, *map(str, args)], capture_output=True, text=True, env=env, cwd=REPO)
    last = done.stdout.strip().splitlines()[-1].split()
    assert last[0] == "PEAK_KB" and last[2] == "0", done.stderr[-2000:]
    return int(last[1]) / 1024


@pytest.mark.slow
def test_500_page_pdf_keeps_peak_rss_flat(colpali, tmp_path):
    letter = (612, 792)  # points; Pillow writes the images at 72 dpi, so pixels = points
    colors = [(255 - i % 50, 250, 240 + i % 10) for i in range(500)]
    short = image_pdf(tmp_path / "short.pdf", colors[:70], size=letter)
    long = image_pdf(tmp_path / "long.pdf", colors, size=letter)
    common = ["--model", colpali, "--log-format", "json", "--batch-tokens", 8192]
    short_mb = peak_rss_mb("encode", short, "-o", tmp_path / "short-index", *common)
    long_mb = peak_rss_mb("encode", long, "-o", tmp_path / "long-index", *common)
    page_mb = 1224 * 1584 * 3 / 2**20
    print(f"peak RSS: 70 pages {short_mb:.0f} MB, 500 pages {long_mb:.0f} MB (one rendered page {page_mb:.1f} MB)")
    assert long_mb - short_mb < 40 * page_mb  # holding the extra 430 pages would add ~430 pages' worth
