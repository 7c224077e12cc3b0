"""Videos whose container opens but whose frames do not decode are bad rows of the reader (``--on-error``).

A faststart MP4 (``moov`` before the frames) passes a header probe even when its frame data is cut short or
overwritten; such files used to fail in the middle of encoding (exit 3, no manifest, even with
``--on-error skip``). The reader now decodes every frame once while probing, so they are skipped and recorded
like an image or PDF page that does not decode, and the good videos beside them are encoded unchanged.

Two kinds escaped that check: an MP4 whose codec description is damaged (PyAV opens it with no decoder, and the
probe crashed, exit 1 even with ``--on-error skip``), and a WebM cut short (it counts no frames, so the frames its
own packets hold were taken for all of them: a partial download was indexed as a shorter video). The WebM's
declared duration now tells: one ending more than a frame before it is cut short.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av  # PyAV: the test extra installs it (tokembed[video])
import numpy as np
import pytest

import qwen_checkpoints
from helpers import manifest, read_index, write_jsonl, write_parquet
from tokembed.sources import SourceOptions, open_sources
from tokembed.sources.video import Video, VideoDecodeError, probe_video

CORRUPT = "cannot decode the video"
TRUNCATED = "the video ends before frame"
NO_DECODER = "the video stream has no decoder"
REASONS = {"trunc.mp4": TRUNCATED, "corrupt.mp4": CORRUPT, "nodecoder.mp4": NO_DECODER, "cut.webm": TRUNCATED}


def write_video(path: Path, frames: int, seed: int, faststart: bool = False, codec: str = "mpeg4",
                times_ms: list[int] | None = None, audio_seconds: float = 0) -> bytes:
    """A tiny video (64x48, 5 fps) of noise frames, an MP4 or a WebM as ``path`` is named; returns its bytes.
    ``times_ms``: each frame's time (a variable frame rate); ``audio_seconds``: a silent Opus track that long."""
    rng = np.random.default_rng(seed)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        if times_ms:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        audio = container.add_stream("libopus", rate=48000) if audio_seconds else None
        for number in range(frames):
            frame = av.VideoFrame.from_ndarray((rng.random((48, 64, 3)) * 255).astype(np.uint8), format="rgb24")
            if times_ms:
                frame.pts, frame.time_base = times_ms[number], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio:
            write_silence(container, audio, audio_seconds)
    return path.read_bytes()


def write_silence(container, stream, seconds: float) -> None:
    size = stream.codec_context.frame_size or 960
    for start in range(0, int(seconds * 48000), size):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, size), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def without_decoder(data: bytes) -> bytes:
    """An MP4 whose sample description box is renamed ('stsd' -> 'xtsd'): PyAV opens it but finds no decoder."""
    at = data.index(b"stsd")
    return data[:at] + b"xtsd" + data[at + 4 :]


def bad_videos(tmp: Path) -> dict[str, bytes]:
    """A truncated and a corrupted faststart MP4 (both pass the header probe: 20 frames announced), an MP4 without
    a decoder, and a 2-second WebM cut to its first three quarters (a partial download)."""
    data = write_video(tmp / "faststart.mp4", frames=20, seed=0, faststart=True)
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 2000] = b"\xff" * 2000
    plain = write_video(tmp / "plain.mp4", frames=12, seed=2)
    webm = write_video(tmp / "whole.webm", frames=10, seed=3, codec="libvpx")
    return {"trunc.mp4": data[: len(data) // 3], "corrupt.mp4": bytes(corrupt), "nodecoder.mp4": without_decoder(plain),
            "cut.webm": webm[: len(webm) * 3 // 4]}


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


def test_what_the_new_bad_files_hide(corpus):
    """The MP4 opens with no decoder; the cut WebM counts no frames and still declares its whole 2 seconds."""
    with av.open(str(corpus / "mixed" / "nodecoder.mp4")) as container:
        assert container.streams.video[0].codec_context is None
    with av.open(str(corpus / "mixed" / "cut.webm")) as container:
        assert container.streams.video[0].frames == 0 and container.duration == 2_000_000


def test_a_whole_webm_passes_with_a_longer_audio_track_or_a_variable_frame_rate(tmp_path):
    """The container's duration spans every stream (3 s of audio beside 2 s of video is no cut), and a frame's end is
    its time plus its own duration (a variable rate's last frame ends later than the average rate says)."""
    webms = {"plain": write_video(tmp_path / "plain.webm", frames=10, seed=4, codec="libvpx"),
             "audio": write_video(tmp_path / "audio.webm", frames=10, seed=4, codec="libvpx", audio_seconds=3),
             "vfr": write_video(tmp_path / "vfr.webm", frames=6, seed=4, codec="libvpx", times_ms=[0, 40, 500, 520, 1500, 3000])}
    for name, data in webms.items():
        assert probe_video(name, data=data).total_frames == (6 if name == "vfr" else 10), name


def test_a_webm_cut_short_names_where_it_ends_and_its_declared_duration(corpus, tmp_path):
    data = (corpus / "mixed" / "cut.webm").read_bytes()
    with pytest.raises(VideoDecodeError, match=r"^the video ends before frame [1-8], at [0-9.]+ s \(the container says 2\.00 s\)$"):
        probe_video("cut", data=data)
    audio = write_video(tmp_path / "audio.webm", frames=10, seed=4, codec="libvpx", audio_seconds=2)
    with pytest.raises(VideoDecodeError, match=TRUNCATED):  # both tracks cut at the same byte
        probe_video("cut with audio", data=audio[: len(audio) // 2])


def test_folder_items_carry_the_decode_error(corpus):
    items = {item.id: item for chunk in open_sources([corpus / "mixed"], SourceOptions(modality="image")) for item in chunk}
    assert sorted(items) == ["corrupt.mp4", "cut.webm", "good.mp4", "nodecoder.mp4", "trunc.mp4"]
    assert items["good.mp4"].error is None and isinstance(items["good.mp4"].image, Video)
    assert items["good.mp4"].image.total_frames == 12
    for name, reason in REASONS.items():
        assert items[name].image is None and items[name].error.startswith(reason), name
    assert "(the container says 20 frames)" in items["trunc.mp4"].error
    assert "(the container says 2.00 s)" in items["cut.webm"].error


def test_parquet_and_jsonl_cells_carry_the_decode_error(corpus, tmp_path):
    import base64

    bad = bad_videos(tmp_path)
    good = (corpus / "good" / "good.mp4").read_bytes()
    write_parquet(tmp_path / "v.parquet", [{"id": "good", "video": good}] + [{"id": n, "video": d} for n, d in bad.items()])
    write_jsonl(tmp_path / "v.jsonl", [{"id": f"j-{n}", "video": {"bytes": base64.b64encode(d).decode()}} for n, d in bad.items()])
    write_parquet(tmp_path / "i.parquet", [{"id": f"i-{n}", "image": d} for n, d in bad.items()])  # videos in the image column
    options = SourceOptions(modality="image")
    items = {item.id: item for path in ("v.parquet", "v.jsonl", "i.parquet")
             for chunk in open_sources([tmp_path / path], options) for item in chunk}
    assert items["good"].error is None and items["good"].image.total_frames == 12
    for prefix in ("", "j-", "i-"):
        for name, reason in REASONS.items():
            line = f"line {list(bad).index(name) + 1}: " if prefix == "j-" else ""  # a JSONL bad row names its line
            assert items[prefix + name].error.startswith(line + reason), prefix + name


def test_on_error_skip_records_them_and_encodes_the_good_video_unchanged(cli, checkpoint, corpus, tmp_path):
    alone, mixed = tmp_path / "alone", tmp_path / "mixed"
    flags = ("--model", checkpoint, "--store-dtype", "float32", "--quiet")
    assert cli("encode", corpus / "good", "-o", alone, *flags).exit_code == 0
    result = cli("encode", corpus / "mixed", "-o", mixed, *flags, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    skipped = {entry["id"]: entry for entry in manifest(mixed)["skipped"]}
    assert sorted(skipped) == sorted(REASONS)
    for name, reason in REASONS.items():
        entry = skipped[name]
        assert entry["source"] == str(corpus / "mixed" / name) and entry["row"] == 0
        assert entry["reason"].startswith(reason)
    rows, want = read_index(mixed), read_index(alone)
    assert list(rows) == ["good.mp4"] == list(want)
    np.testing.assert_array_equal(rows["good.mp4"][1], want["good.mp4"][1])
    np.testing.assert_array_equal(rows["good.mp4"][0], want["good.mp4"][0])


@pytest.mark.parametrize("name, reason", sorted(REASONS.items()))
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


@pytest.mark.parametrize("source", ["folder", "cell"])
def test_without_pyav_a_video_is_exit_2_naming_the_extra_under_on_error_skip_too(cli, checkpoint, corpus, tmp_path,
                                                                                 monkeypatch, source):
    """A missing PyAV was exit 3, bad input, where every other missing extra (pdf, lance, search, ...) is a usage
    error naming it. It is no bad row either: the run stops, nothing written."""
    import base64

    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    good = (corpus / "good" / "good.mp4").read_bytes()
    cell = write_jsonl(tmp_path / "v.jsonl", [{"id": "v", "video": {"bytes": base64.b64encode(good).decode()}}])
    out = tmp_path / "index"
    inputs = corpus / "good" if source == "folder" else cell
    result = cli("encode", inputs, "-o", out, "--model", checkpoint, "--on-error", "skip", "--quiet")
    assert result.exit_code == 2, result.output
    assert "reading videos needs PyAV" in result.output and "pip install 'tokembed[video]'" in result.output
    assert not out.exists() or not (out / "manifest.json").exists()


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
