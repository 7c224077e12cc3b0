"""Videos for an image model whose family has no video path (ColPali, Tomoro's ColQwen3): not a whole-run abort.

A folder's ``.mp4`` / ``.webm`` files are no documents of such a run: listed as ignored, as a text model's images
are, and the pages beside them are encoded. A video cell (a Parquet/JSONL video column, or a video in the image
column) is a bad row under ``--on-error``. Both used to reach the encoder, whose ``tokenize`` refused the video
mid-run: exit 3 even with ``--on-error skip``, nothing indexed. ColQwen3.5 still encodes videos
(``test_colqwen3_5.py``).
"""

from __future__ import annotations

from pathlib import Path

import av  # PyAV: the test extra installs it (tokembed[video])
import numpy as np
import pytest

from helpers import manifest, read_index, write_jsonl, write_parquet
from tokembed.settings import EncodeFlags, resolve

SAMPLE_IMAGES = __import__("conftest").SAMPLE_DATA / "images"


def write_video(path: Path, frames: int = 6, fps: int = 5) -> Path:
    """A tiny mpeg4 MP4 (32x32) of noise frames: one every family with a video path encodes."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray((rng.random((32, 32, 3)) * 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module", params=["colpali", "tomoro"])
def image_model(request, tmp_path_factory) -> Path:
    """A family without a video path: tiny ColPali, and tiny Tomoro ColQwen3 (a Qwen-VL processor)."""
    from qwen3_vl_checkpoints import build_tomoro
    from vision_checkpoints import build_colpali

    build = {"colpali": build_colpali, "tomoro": build_tomoro}[request.param]
    return build(tmp_path_factory.mktemp("no_video") / request.param)


@pytest.fixture
def pages(tmp_path) -> list[Path]:
    """Two sample page images in ``tmp_path/pages``."""
    folder = tmp_path / "pages"
    folder.mkdir()
    chosen = sorted(SAMPLE_IMAGES.iterdir())[:2]
    for image in chosen:
        (folder / image.name).write_bytes(image.read_bytes())
    return [folder / image.name for image in chosen]


def test_a_folders_videos_are_ignored_and_its_pages_encoded(cli, image_model, pages, tmp_path):
    """Under the default ``--on-error fail`` too: a video is no document of this run, so no bad row."""
    folder = pages[0].parent
    write_video(folder / "zz-clip.mp4")
    out = tmp_path / "index"
    result = cli("encode", folder, "--model", image_model, "-o", out, "--log-format", "json")
    assert result.exit_code == 0, result.output
    assert sorted(read_index(out)) == sorted(page.name for page in pages)
    data = manifest(out)
    assert data["ignored"] == [str(folder / "zz-clip.mp4")] and data.get("skipped", []) == []


def test_a_folder_of_videos_alone_is_refused_naming_the_model(cli, image_model, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    write_video(folder / "clip.mp4")
    result = cli("encode", folder, "--model", image_model, "-o", tmp_path / "index", "--on-error", "skip")
    assert result.exit_code == 3
    assert f"{folder}: a folder of videos, but " in result.stderr and "does not encode videos" in result.stderr
    assert "this run encodes text" not in result.stderr


def test_video_cells_are_bad_rows(cli, image_model, pages, tmp_path):
    """A video column, and a video in the image column: skipped and recorded, or exit 3 naming the file and row."""
    clip = write_video(tmp_path / "clip.mp4").read_bytes()
    table = write_parquet(tmp_path / "rows.parquet", [{"id": "page", "image": pages[0].read_bytes()},
                                                       {"id": "clip-in-image", "image": clip}])
    records = write_jsonl(tmp_path / "clips.jsonl", [{"id": "clip", "video": "clip.mp4"}])
    out = tmp_path / "index"
    failed = cli("encode", table, "--model", image_model, "-o", out)
    assert failed.exit_code == 3
    assert f"{table} row 1 (id 'clip-in-image'): a video: " in failed.stderr and "does not encode videos" in failed.stderr
    skipped = cli("encode", table, records, "--model", image_model, "-o", out, "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.output
    assert list(read_index(out)) == ["page"]
    reasons = {entry["id"]: entry["reason"] for entry in manifest(out)["skipped"]}
    assert sorted(reasons) == ["clip", "clip-in-image"]
    assert reasons["clip"].startswith("line 1: a video: ")  # a JSONL bad row's reason names its line
    assert all("a video: " in reason and reason.endswith(" does not encode videos") for reason in reasons.values())


def test_the_encoder_says_why_a_video_is_refused_where_rows_are_planned(tmp_path):
    """``input_problem`` (asked where rows are planned) refuses a video that reaches the encoder, so that it is a bad
    row, not an error raised by ``tokenize`` in the middle of the run."""
    from tokembed.models.vision import VisionEncoder
    from tokembed.sources.video import probe_video

    path = write_video(tmp_path / "clip.mp4")

    class Model:  # the minimum a VisionEncoder reads of a family without videos
        architecture, projection, processor = "ColPaliForRetrieval", "proj", None
        tokenizer = type("T", (), {"pad_token_id": 0})()

    encoder = VisionEncoder(Model(), resolve(EncodeFlags(kind="document"), None, 512))
    video = probe_video(str(path), path=str(path))
    assert encoder.input_problem(video) == "ColPaliForRetrieval does not encode videos"
