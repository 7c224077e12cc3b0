"""PDF pages: render throughput beside a vision model's encode throughput, and peak RSS of a whole run.

    python bench/pdf.py [--pages 100] [--dpi 144] [--workers 1 2] [--repeats 3] [--model PATH]

A generated PDF of US Letter pages (half text pages with a text layer, half scanned-style image pages at
150 dpi; built by tests/pdfs.py, nothing downloaded) is
  1. rendered through tokembed's reader (``open_sources``, modality image, pypdfium2) at ``--dpi``:
     pages/s, warm (the document is opened per run, the library already imported);
     the same with --pdf-workers 1, 2, ... (``--workers``): median of ``--repeats`` alternating runs, each
     starting its own worker processes as an ``encode`` run does;
  2. read for its text layer (what text models get): pages/s, warm;
  3. prepared by the model's processor (``encoder.tokenize``, the planning stage): pages/s with one thread and
     with the default threads, alternating, medians of ``--repeats``;
  4. encoded by the vision model (``Embedder.embed`` on the rendered pages, batches of 8): pages/s, warm,
     after one warm-up batch. Without ``--model`` this is the tests' tiny random ColPali (SigLIP-style
     tower at 448 px = 1024 visual tokens a page, 2 tiny layers): a floor for encode time, far below a
     real ColPali (3B parameters), so a real model only widens the gap;
  5. encoded end to end by a fresh ``tokembed encode`` process (cold: start-up, model load, render,
     encode, write): pages/s and peak RSS (``getrusage`` of a wrapper process: the largest process), with
     ``--pdf-workers 0`` and with the largest ``--workers`` count, alternating, fastest of ``--repeats``.
Rendering runs in the reading stage, ahead of the model: it is a bottleneck only when render pages/s is
below encode pages/s. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

WRAPPER = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)
LETTER = (612.0, 792.0)


def build_pdf(path: Path, pages: int) -> Path:
    """Alternating text pages (40 lines, text layer) and image pages (1275x1650 px at 150 dpi)."""
    import pypdfium2 as pdfium

    from pdfs import image_pdf, text_pdf

    words = "late interaction retrieval scores every query token against every page token with maxsim".split()
    lines = [" ".join(words[(i + j) % len(words)] for j in range(9)) for i in range(40)]
    text = text_pdf(path.with_suffix(".text.pdf"), ["\n".join(lines[i % 7 :]) for i in range((pages + 1) // 2)], size=LETTER)
    colors = [(250 - i % 40, 245, 235 + i % 20) for i in range(pages // 2)]
    scans = image_pdf(path.with_suffix(".scan.pdf"), colors, size=(1275, 1650), resolution=150.0)
    document = pdfium.PdfDocument.new()
    text_doc, scan_doc = pdfium.PdfDocument(str(text)), pdfium.PdfDocument(str(scans))
    for number in range(pages):
        source = text_doc if number % 2 == 0 else scan_doc
        document.import_pages(source, [number // 2])
    document.save(str(path))
    return path


def render_rate(pdf: Path, dpi: float, modality: str, workers: int = 0) -> tuple[float, list]:
    from tokembed.sources import SourceOptions, open_sources

    start = time.perf_counter()
    kept, pages = [], 0
    for chunk in open_sources([pdf], SourceOptions(modality=modality, pdf_dpi=dpi, pdf_workers=workers)):
        pages += len(chunk)
        if modality == "image" and len(kept) < 24:
            kept += [item.image for item in chunk[: 24 - len(kept)]]
    return pages / (time.perf_counter() - start), kept


def render_with_workers(pdf: Path, dpi: float, counts: list[int], repeats: int) -> dict[int, float]:
    """Median pages/s of each --pdf-workers count over ``repeats`` alternating runs; each run starts its own
    workers, as an ``encode`` run does."""
    rates: dict[int, list[float]] = {count: [] for count in sorted({0, *counts})}
    for _ in range(repeats):
        for count in rates:
            rates[count].append(render_rate(pdf, dpi, "image", count)[0])
    return {count: statistics.median(values) for count, values in rates.items()}


def encode_rate(model: str, images: list) -> float:
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    embedder = Embedder.load(model, EncodeFlags())
    embedder.embed(images[:8])  # warm-up
    start = time.perf_counter()
    for at in range(0, len(images), 8):
        embedder.embed(images[at : at + 8])
    return len(images) / (time.perf_counter() - start)


def processor_rates(model: str, images: list, repeats: int) -> tuple[float, float, int]:
    """The model's processor over the rendered pages (``encoder.tokenize``, what the planning stage runs), pages/s
    with one thread and with the default threads (``vision.PREPARE_THREADS``, torch's thread count at most),
    alternating, medians; and that thread count."""
    import torch

    import tokembed.models.vision as vision
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    encoder = Embedder.load(model, EncodeFlags()).encoder
    default = vision.PREPARE_THREADS
    rates: dict[int, list[float]] = {1: [], default: []}
    encoder.tokenize(images)  # warm-up (and the threads' processor copies)
    for _ in range(repeats):
        for threads in rates:
            vision.PREPARE_THREADS = threads
            start = time.perf_counter()
            encoder.tokenize(images)
            rates[threads].append(len(images) / (time.perf_counter() - start))
    vision.PREPARE_THREADS = default
    return statistics.median(rates[1]), statistics.median(rates[default]), min(default, torch.get_num_threads())


def whole_run(pdf: Path, model: str, out: Path, dpi: float, workers: int = 0) -> tuple[float, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "cli.main", "encode", str(pdf), "--model", model, "-o", str(out), "-q", "--pdf-dpi", str(dpi),
           "--pdf-workers", str(workers), "--full"]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], check=True, capture_output=True, text=True, env=env, cwd=REPO)
    return time.perf_counter() - start, int(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=100, help="pages of the generated PDF (default 100)")
    parser.add_argument("--dpi", type=float, default=144.0, help="render resolution, as encode's --pdf-dpi (default 144)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="--pdf-workers counts to time beside 0")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per timed stage, median (whole runs: fastest) printed (default 3)")
    parser.add_argument("--model", help="a vision checkpoint folder; default: the tests' tiny random ColPali")
    args = parser.parse_args()
    if min(args.workers) < 1:
        parser.error("--workers: counts of 1 or more (--pdf-workers 0, rendering in the reader, is always timed)")
    with tempfile.TemporaryDirectory(prefix="tokembed-pdf-") as tmp:
        pdf_rows(args, Path(tmp))


def pdf_rows(args: argparse.Namespace, work: Path) -> None:
    """Every stage's rate, the checkpoint, PDF and indexes written in ``work``."""
    model = args.model
    if model is None:
        from vision_checkpoints import build_colpali

        model = str(build_colpali(work / "tiny-colpali"))
    pdf = build_pdf(work / "bench.pdf", args.pages)
    import torch

    print(f"{args.pages}-page Letter PDF ({pdf.stat().st_size / 2**20:.1f} MB), {args.dpi:g} dpi, "
          f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, model {'tiny ColPali' if args.model is None else model}")
    render, images = render_rate(pdf, args.dpi, "image")
    parallel = render_with_workers(pdf, args.dpi, args.workers, args.repeats)
    text, _ = render_rate(pdf, args.dpi, "text")
    one_thread, threaded, threads = processor_rates(model, images, args.repeats)
    encode = encode_rate(model, images)
    runs: dict[int, list] = {0: [], max(args.workers): []}
    for _ in range(args.repeats):
        for workers, results in runs.items():
            results.append(whole_run(pdf, model, work / "index", args.dpi, workers))
    (seconds, peak), (seconds_w, peak_w) = (min(results) for results in runs.values())
    print(f"{'stage (warm unless said)':<44} {'pages/s':>9}")
    print(f"{'render (pypdfium2, RGB, in the reader)':<44} {render:>9.1f}")
    for workers, rate in parallel.items():
        label = f"render, {workers} worker process(es)" if workers else "render in the reading thread (same runs)"
        print(f"{label:<44} {rate:>9.1f}   {rate / parallel[0]:.2f}x the reading thread")
    print(f"{'text layer (text models)':<44} {text:>9.1f}")
    print(f"{'processor (resize, normalize), one thread':<44} {one_thread:>9.1f}")
    label = f"processor, {threads} threads (the default)"
    print(f"{label:<44} {threaded:>9.1f}   {threaded / one_thread:.2f}x one thread")
    print(f"{'encode (vision model, batches of 8)':<44} {encode:>9.1f}")
    print(f"{'whole tokembed encode process (cold)':<44} {args.pages / seconds:>9.1f}   peak RSS {peak:,.0f} MB")
    label = f"the same, --pdf-workers {max(args.workers)}"
    print(f"{label:<44} {args.pages / seconds_w:>9.1f}   peak RSS {peak_w:,.0f} MB (its largest process)   {seconds / seconds_w:.2f}x")
    print(f"render / encode = {render / encode:.1f}x: rendering {'keeps ahead of' if render > encode else 'is slower than'} the model")


if __name__ == "__main__":
    main()
