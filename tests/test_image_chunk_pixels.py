"""A chunk of images is bounded by its decoded pixels too, not only by its row count: 64 images just under
``--max-image-pixels`` (40 MP) held 7.7 GB of RGB at once. It closes before the image that would take it past
``SourceOptions.image_chunk_pixels`` (a larger image alone), in every reader of decoded images; the images decoded
ahead of the chunk shrink with their size; every row is still read once, in order, and encoded as before."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tokembed.plan as plan
from helpers import manifest, read_index, write_jsonl
from pdfs import image_pdf
from test_image_sources import encoded, write_parquet_column
from tokembed.sources import Item, SourceOptions, open_sources
from tokembed.sources.images import DECODE_THREADS, in_order

SIZES = [(40, 30), (40, 30), (40, 30), (100, 50), (20, 10), (40, 30), (40, 30)]  # 1200 pixels, one of 5000, 200
BUDGET = 3000  # two 1200-pixel images, not three
CHUNKS = [2, 1, 1, 3]  # ids 0-1 | 2 (the large one next) | 3 (alone: larger than the budget) | 4-6 (200 + 2 x 1200)


def pictures() -> list[bytes]:
    return [encoded(Image.new("RGB", size, (10 * i, 200, 30))) for i, size in enumerate(SIZES)]


def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "folder"
    folder.mkdir()
    for number, blob in enumerate(pictures()):
        (folder / f"{number}.png").write_bytes(blob)
    return folder


def parquet_column(tmp_path: Path) -> Path:
    import pyarrow as pa

    return write_parquet_column(tmp_path / "images.parquet", [str(i) for i in range(len(SIZES))], pictures(), pa.binary())


def jsonl_paths(tmp_path: Path) -> Path:
    folder = image_folder(tmp_path)
    return write_jsonl(tmp_path / "images.jsonl", [{"id": str(i), "image": str(folder / f"{i}.png")} for i in range(len(SIZES))])


def pdf_pages(tmp_path: Path) -> Path:
    colors = [(10 * i, 200, 30) for i in range(len(SIZES))]
    return image_pdf(tmp_path / "pages.pdf", colors, size=(40, 30))  # 1200-pixel pages at 72 dpi


@pytest.mark.parametrize("corpus", [image_folder, parquet_column, jsonl_paths])
def test_image_chunks_close_at_the_pixel_budget(tmp_path, corpus):
    options = SourceOptions(modality="image", image_chunk_pixels=BUDGET)
    chunks = list(open_sources([corpus(tmp_path)], options))
    assert [len(chunk) for chunk in chunks] == CHUNKS
    items = [item for chunk in chunks for item in chunk]
    assert [item.id.removesuffix(".png") for item in items] == [str(i) for i in range(len(SIZES))]  # each once, in order
    assert [item.image.size for item in items] == SIZES


def test_pdf_page_chunks_close_at_the_pixel_budget(tmp_path):
    options = SourceOptions(modality="image", image_chunk_pixels=BUDGET, pdf_dpi=72)
    chunks = list(open_sources([pdf_pages(tmp_path)], options))
    assert [len(chunk) for chunk in chunks] == [2, 2, 2, 1]
    assert [item.page for chunk in chunks for item in chunk] == list(range(1, len(SIZES) + 1))


def test_rows_bound_chunks_below_the_pixel_budget(tmp_path):
    """The default budget (768 MiB of RGB) leaves chunks of small pages as they were: ``image_chunk_rows`` each."""
    from tokembed.sources.base import IMAGE_CHUNK_PIXELS

    chunks = list(open_sources([image_folder(tmp_path)], SourceOptions(modality="image", image_chunk_rows=3)))
    assert IMAGE_CHUNK_PIXELS == 2**28 and [len(chunk) for chunk in chunks] == [3, 3, 1]


def test_images_decoded_ahead_shrink_with_their_size():
    """``in_order`` takes no more items ahead than half the budget holds, judged by the last image taken."""
    pulled = 0

    def items():
        nonlocal pulled
        for _ in range(40):
            pulled += 1
            yield Item("x", None, "x.png", 0, image=Image.new("RGB", (100, 10)))  # 1000 pixels

    ahead = [pulled - taken for taken, _ in enumerate(in_order(items(), pixels=6000), start=1)]
    assert ahead[:6] == [2 * DECODE_THREADS, 7, 6, 5, 4, 3]  # as many as before the first image is known, then fewer
    assert max(ahead[6:]) == 3  # 3000 pixels: three images of 1000


@pytest.fixture(scope="module")
def colpali(tmp_path_factory):
    from vision_checkpoints import build_colpali

    return build_colpali(tmp_path_factory.mktemp("vision") / "colpali")


def test_a_low_pixel_budget_encodes_the_same_vectors(cli, colpali, tmp_path, monkeypatch):
    folder = tmp_path / "pages"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for number in range(6):
        pixels = rng.integers(0, 255, (60 + 10 * number, 80, 3), dtype=np.uint8)
        (folder / f"{number}.png").write_bytes(encoded(Image.fromarray(pixels)))
    common = ["--model", colpali, "--store-dtype", "float32", "--batch-tokens", 4096]
    default = cli("encode", folder, "-o", tmp_path / "default", *common)
    assert default.exit_code == 0, default.output

    chunks, reading, budgeting = [], plan.open_sources, plan._chunked
    monkeypatch.setattr(plan, "_chunked", lambda sources, rows: replace(budgeting(sources, rows), image_chunk_pixels=10_000))
    monkeypatch.setattr(plan, "open_sources", lambda *args: (chunks.append(len(chunk)) or chunk for chunk in reading(*args)))
    low = cli("encode", folder, "-o", tmp_path / "low", *common)
    assert low.exit_code == 0, low.output
    assert chunks == [1, 1, 1, 1, 1, 1]  # every image over half the budget: one a chunk
    totals = [manifest(tmp_path / index)["totals"] for index in ("default", "low")]
    assert [(total["rows"], total["tokens"]) for total in totals] == [(6, 192)] * 2  # shards differ: a batch a chunk
    stored, alone = read_index(tmp_path / "default"), read_index(tmp_path / "low")
    assert sorted(stored) == sorted(alone) == [f"{number}.png" for number in range(6)]
    for name, (vectors, ids) in stored.items():
        assert np.array_equal(alone[name][1], ids) and np.array_equal(alone[name][0], vectors)
