"""Videos whose container opens but whose frames do not decode are bad rows of the reader (``--on-error``).

A faststart MP4 (``moov`` before the frames) passes a header probe even when its frame data is cut short or
overwritten; such files used to fail in the middle of encoding (exit 3, no manifest, even with
``--on-error skip``). The reader now decodes every frame once while probing, so they are skipped and recorded
like an image or PDF page that does not decode, and the good videos beside them are encoded unchanged.
"""

from __future__ import annotations

from pathlib import Path

import av  # PyAV: the test extra installs it (tokembed[video])
import numpy as np
import pytest

import qwen_checkpoints
from helpers import manifest, read_index, write_jsonl, write_parquet
from tokembed.sources import SourceOptions, open_sources
from tokembed.sources.video import Video

CORRUPT = "cannot decode the video"
TRUNCATED = "the video ends before frame"


def write_video(path: Path, frames: int, seed: int, faststart: bool = False) -> bytes:
    """A tiny mpeg4 MP4 (64x48, 5 fps) of noise frames; returns its bytes."""
    rng = np.random.default_rng(seed)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray((rng.random((48, 64, 3)) * 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def bad_videos(tmp: Path) -> dict[str, bytes]:
    """A truncated and a corrupted faststart MP4: both pass the header probe (20 frames announced)."""
    data = write_video(tmp / "faststart.mp4", frames=20, seed=0, faststart=True)
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 2000] = b"\xff" * 2000
    return {"trunc.mp4": data[: len(data) // 3], "corrupt.mp4": bytes(corrupt)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """good/: one good video; mixed/: the same good video beside a truncated and a corrupt one."""
    root = tmp_path_factory.mktemp("video_errors")
    (root / "good").mkdir()
    (root / "mixed").mkdir()
    good = write_video(root / "good" / "good.mp4", frames=12, seed=1)
    (root / "mixed" / "good.mp4").write_bytes(good)
    for name, data in bad_videos(root).items():
        (root / "mixed" / name).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return qwen_checkpoints.build_colqwen3_5(tmp_path_factory.mktemp("colqwen3_5") / "ckpt")


def test_the_bad_files_pass_the_header_probe(corpus):
    """What makes them late failures: the container announces 20 frames (the moov box is intact)."""
    for name in ("trunc.mp4", "corrupt.mp4"):
        with av.open(str(corpus / "mixed" / name)) as container:
            assert container.streams.video[0].frames == 20, name


def test_folder_items_carry_the_decode_error(corpus):
    items = {item.id: item for chunk in open_sources([corpus / "mixed"], SourceOptions(modality="image")) for item in chunk}
    assert sorted(items) == ["corrupt.mp4", "good.mp4", "trunc.mp4"]
    assert items["good.mp4"].error is None and isinstance(items["good.mp4"].image, Video)
    assert items["good.mp4"].image.total_frames == 12
    assert items["trunc.mp4"].image is None and items["trunc.mp4"].error.startswith(TRUNCATED)
    assert "(the container says 20 frames)" in items["trunc.mp4"].error
    assert items["corrupt.mp4"].image is None and items["corrupt.mp4"].error.startswith(CORRUPT)


def test_parquet_and_jsonl_cells_carry_the_decode_error(corpus, tmp_path):
    import base64

    bad = bad_videos(tmp_path)
    good = (corpus / "good" / "good.mp4").read_bytes()
    write_parquet(tmp_path / "v.parquet", [{"id": "good", "video": good}] + [{"id": n, "video": d} for n, d in bad.items()])
    write_jsonl(tmp_path / "v.jsonl", [{"id": f"j-{n}", "video": {"bytes": base64.b64encode(d).decode()}} for n, d in bad.items()])
    options = SourceOptions(modality="image")
    items = {item.id: item for path in ("v.parquet", "v.jsonl") for chunk in open_sources([tmp_path / path], options) for item in chunk}
    assert items["good"].error is None and items["good"].image.total_frames == 12
    for prefix in ("", "j-"):
        for name, reason in (("trunc.mp4", TRUNCATED), ("corrupt.mp4", CORRUPT)):
            line = f"line {list(bad).index(name) + 1}: " if prefix else ""  # a JSONL bad row names its line
            assert items[prefix + name].error.startswith(line + reason)


def test_on_error_skip_records_them_and_encodes_the_good_video_unchanged(cli, checkpoint, corpus, tmp_path):
    alone, mixed = tmp_path / "alone", tmp_path / "mixed"
    flags = ("--model", checkpoint, "--store-dtype", "float32", "--quiet")
    assert cli("encode", corpus / "good", "-o", alone, *flags).exit_code == 0
    result = cli("encode", corpus / "mixed", "-o", mixed, *flags, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    skipped = {entry["id"]: entry for entry in manifest(mixed)["skipped"]}
    assert sorted(skipped) == ["corrupt.mp4", "trunc.mp4"]
    for name, reason in (("trunc.mp4", TRUNCATED), ("corrupt.mp4", CORRUPT)):
        entry = skipped[name]
        assert entry["source"] == str(corpus / "mixed" / name) and entry["row"] == 0
        assert entry["reason"].startswith(reason)
    rows, want = read_index(mixed), read_index(alone)
    assert list(rows) == ["good.mp4"] == list(want)
    np.testing.assert_array_equal(rows["good.mp4"][1], want["good.mp4"][1])
    np.testing.assert_array_equal(rows["good.mp4"][0], want["good.mp4"][0])


@pytest.mark.parametrize("name, reason", [("corrupt.mp4", CORRUPT), ("trunc.mp4", TRUNCATED)])
def test_on_error_fail_exits_3_naming_the_file_and_leaves_the_index(cli, checkpoint, corpus, tmp_path, name, reason):
    out = tmp_path / "index"
    flags = ("--model", checkpoint, "--store-dtype", "float32", "--quiet")
    assert cli("encode", corpus / "good", "-o", out, *flags).exit_code == 0
    before = (out / "manifest.json").read_bytes()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "good.mp4").write_bytes((corpus / "good" / "good.mp4").read_bytes())
    (inputs / name).write_bytes((corpus / "mixed" / name).read_bytes())
    result = cli("encode", inputs, "-o", out, *flags)  # --on-error fail is the default
    assert result.exit_code == 3, result.output
    assert f"{inputs / name} (id {name!r}): {reason}" in result.output
    assert (out / "manifest.json").read_bytes() == before
    assert list(read_index(out)) == ["good.mp4"]


def test_frames_over_max_image_pixels_are_refused_before_decoding(corpus, tmp_path):
    """A 15 KB clip of two 8192x8192 frames went through (1.66 GB peak RSS) where a PNG of that size is a bad
    row: the limit now holds for video frames too, in folders and in Parquet / JSONL cells."""
    import base64

    limit = 64 * 48 - 1  # the corpus's clips are 64x48
    folder = {item.id: item for chunk in open_sources([corpus / "good"], SourceOptions(modality="image", max_image_pixels=limit))
              for item in chunk}
    assert folder["good.mp4"].image is None
    assert folder["good.mp4"].error == f"the video's frames are 64x48 = 3072 pixels, over the limit of {limit} (--max-image-pixels)"
    good = (corpus / "good" / "good.mp4").read_bytes()
    write_parquet(tmp_path / "v.parquet", [{"id": "p", "video": good}])
    write_jsonl(tmp_path / "v.jsonl", [{"id": "j", "video": {"bytes": base64.b64encode(good).decode()}}])
    for path in ("v.parquet", "v.jsonl"):
        (item,) = [item for chunk in open_sources([tmp_path / path], SourceOptions(modality="image", max_image_pixels=limit))
                   for item in chunk]
        assert item.image is None and "over the limit of 3071 (--max-image-pixels)" in item.error
    allowed = [item for chunk in open_sources([corpus / "good"], SourceOptions(modality="image", max_image_pixels=64 * 48))
               for item in chunk]
    assert allowed[0].error is None
