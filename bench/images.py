"""Reading page images (a folder; a JSONL file of base64 images): pages/s decoded by one thread against the
decoding threads.

    python bench/images.py [--pages 120] [--repeats 3]

Generates US Letter page screenshots at 144 dpi (1224x1584: text lines and a coloured block; half PNG, half
JPEG; nothing downloaded), also as one JSONL file of ``{"id", "image": {"bytes": <base64>}}`` records, and
reads each through tokembed's reader (``open_sources``, modality image:
read, sha256, decode, EXIF, RGB) with ``images.DECODE_THREADS`` = 1 and with the default, alternating,
medians of ``--repeats``, warm (one read before). The reader is one of the three stages an image corpus
passes (reader, processor, forward; see ``bench/pdf.py`` for the other two): it must keep up with a GPU.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def write_pages(folder: Path, count: int) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for number in range(count):
        page = Image.new("RGB", (1224, 1584), "white")
        draw = ImageDraw.Draw(page)
        for y in range(40, 1540, 22):
            draw.text((60, y), f"page {number} late interaction retrieval scores every query token " * 2, fill=(0, 0, 0))
        draw.rectangle([100, 900, 700, 1300], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        page.save(folder / (f"{number:04d}.png" if number % 2 else f"{number:04d}.jpg"))


def write_jsonl(folder: Path, path: Path) -> Path:
    import base64
    import json

    with open(path, "w") as lines:
        for file in sorted(folder.iterdir()):
            lines.write(json.dumps({"id": file.name, "image": {"bytes": base64.b64encode(file.read_bytes()).decode()}}) + "\n")
    return path


def read_rate(folder: Path) -> float:
    from tokembed.sources import SourceOptions, open_sources

    start = time.perf_counter()
    pages = sum(len(chunk) for chunk in open_sources([folder], SourceOptions(modality="image")))
    return pages / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=120, help="generated page images, half PNG, half JPEG (default 120)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating reads per thread count, median printed (default 3)")
    args = parser.parse_args()
    import tokembed.sources.images as images

    with tempfile.TemporaryDirectory(prefix="tokembed-images-") as tmp:
        folder = Path(tmp) / "pages"
        folder.mkdir()
        write_pages(folder, args.pages)
        corpora = {"folder": folder, "JSONL (base64)": write_jsonl(folder, Path(tmp) / "pages.jsonl")}
        default = images.DECODE_THREADS
        threads = min(default, os.cpu_count() or 1)
        print(f"{args.pages} Letter page images (1224x1584, half PNG, half JPEG), cpu count {os.cpu_count()}, median of {args.repeats}")
        for name, corpus in corpora.items():
            read_rate(corpus)  # warm: the files in the page cache, Pillow's plugins imported
            rates: dict[int, list[float]] = {1: [], default: []}
            for _ in range(args.repeats):
                for count in rates:
                    images.DECODE_THREADS = count
                    rates[count].append(read_rate(corpus))
            one, many = (statistics.median(values) for values in rates.values())
            print(f"  {name:<15} one decoding thread  {one:7.1f} pages/s; {threads} decoding threads {many:7.1f} pages/s   {many / one:.2f}x")


if __name__ == "__main__":
    main()
