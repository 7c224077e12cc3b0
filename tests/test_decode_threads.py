"""Images of a folder or a Parquet image column decode on threads: the same items, in the same order, as one
thread gives (ids, digests, pixels, errors), with no Pillow warning filter left behind."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import tokembed.sources.images as images
from helpers import same_rows
from test_image_sources import BAD_IMAGES, encoded, write_parquet_column
from tokembed.sources import SourceOptions, open_sources


def pictures(count: int) -> list[bytes]:
    rng = np.random.default_rng(3)
    return [encoded(Image.fromarray(rng.integers(0, 255, (40 + i, 60 + 2 * i, 3), dtype=np.uint8)), "PNG" if i % 2 else "JPEG") for i in range(count)]


def read(path: Path) -> list[tuple]:
    items = [item for chunk in open_sources([path], SourceOptions(modality="image", image_chunk_rows=5)) for item in chunk]
    return [(i.id, i.error, i.image_sha256, None if i.image is None else np.asarray(i.image)) for i in items]


@pytest.fixture
def corpora(tmp_path) -> list[Path]:
    data = pictures(23)
    data[4], data[11], data[17] = (BAD_IMAGES[case][0]() for case in ("not-an-image", "over-our-limit", "zero-bytes"))
    folder = tmp_path / "folder"
    folder.mkdir()
    for number, blob in enumerate(data):
        (folder / f"{number:02d}.png").write_bytes(blob)
    table = write_parquet_column(tmp_path / "images.parquet", [f"r{i}" for i in range(len(data))], data, pa.binary())
    return [folder, table]


def test_threads_decode_what_one_thread_decodes(corpora, monkeypatch):
    real, threads = images._file_item, set()

    def spy(*args):
        threads.add(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(images, "_file_item", spy)
    filters = list(warnings.filters)
    decoded = [read(path) for path in corpora]
    assert warnings.filters == filters  # the bomb-warning filter is never left behind
    assert threads and all(name.startswith("tokembed-decode") for name in threads)
    assert [e for _, e, _, _ in decoded[1] if e] == [e for _, e, _, _ in decoded[0] if e] and len([1 for _, e, _, _ in decoded[0] if e]) == 3
    monkeypatch.setattr(images, "DECODE_THREADS", 1)
    threads.clear()
    alone = [read(path) for path in corpora]
    assert threads == {threading.current_thread().name}
    assert all(same_rows(one, other) for one, other in zip(decoded, alone))
    assert [row[0] for row in decoded[0]] == [f"{n:02d}.png" for n in range(23)]


def test_jsonl_image_fields_decode_on_threads_in_order(tmp_path, monkeypatch):
    """base64 images of a JSONL file decode on the threads (they decoded in the reading thread before); a PDF
    in an image field still becomes its pages, in place; bad fields keep their errors."""
    import base64
    import json

    from pdfs import image_pdf

    data = pictures(15)
    data[3] = BAD_IMAGES["not-an-image"][0]()
    pdf = image_pdf(tmp_path / "two.pdf", [(250, 0, 0), (0, 0, 250)]).read_bytes()
    fields = [{"bytes": base64.b64encode(blob).decode(), "path": None} for blob in data]
    fields[7] = {"bytes": base64.b64encode(pdf).decode(), "path": "two.pdf"}
    fields[9] = {"bytes": "not base64 at all!", "path": None}
    path = tmp_path / "images.jsonl"
    path.write_text("".join(json.dumps({"id": f"j{i}", "image": field}) + "\n" for i, field in enumerate(fields)))
    real, threads = images.attach_image, set()

    def spy(*args):
        threads.add(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(images, "attach_image", spy)
    decoded = read(path)
    assert threads and all(name.startswith("tokembed-decode") for name in threads)
    ids = [f"j{i}" for i in range(7)] + ["j7#page=1", "j7#page=2"] + [f"j{i}" for i in range(8, 15)]
    assert [row[0] for row in decoded] == ids
    assert [row[0] for row in decoded if row[1]] == ["j3", "j9"]
    monkeypatch.setattr(images, "DECODE_THREADS", 1)
    threads.clear()
    assert same_rows(decoded, read(path))
    assert threads == {threading.current_thread().name}
