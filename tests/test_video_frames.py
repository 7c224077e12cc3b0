"""Which frames a video has and which way up they stand: the frames the decoder gives (not the container's sample
count, which an edit list exceeds), turned as the container's display matrix says (a phone's portrait video)."""

from __future__ import annotations

import struct
from pathlib import Path

import av  # PyAV: the test extra installs it (tokembed[video])
import numpy as np
import pytest

import qwen_checkpoints
from helpers import manifest, read_index
from tokembed.sources import SourceOptions, open_sources
from tokembed.sources.video import Video, probe_video

RATE = 5


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    """An mpeg4 MP4 at 5 fps of the given RGB frames."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def gray_frames(count: int) -> list[np.ndarray]:
    """Frame i is flat gray i * 12: a decoded frame says which frame it is."""
    return [np.full((48, 64, 3), i * 12, np.uint8) for i in range(count)]


def trimmed(source: Path, target: Path, skip: int, faststart: bool = False) -> Path:
    """``source`` with its first ``skip`` frames cut by an edit list, as ``ffmpeg -ss N -c copy`` cuts: every
    sample is kept (the decoder needs the key frame) and shifted to negative times, which the MP4 muxer writes
    as an edit list; players and the decoder start at the first frame at time 0. ``faststart``: the header
    first, so that a copy cut short still opens."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(source)) as reader, av.open(str(target), "w", options=options) as writer:
        stream = reader.streams.video[0]
        out = writer.add_stream_from_template(stream)
        tick = int(1 / (stream.time_base * RATE))
        for packet in reader.demux(stream):
            if packet.dts is None:  # the demuxer's final flush packet
                continue
            packet.pts -= skip * tick
            packet.dts -= skip * tick
            packet.stream = out
            writer.mux(packet)
    return target


def pattern() -> np.ndarray:
    """48x64, a different colour in each quarter: any turn or flip shows."""
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:24, :32] = (255, 255, 255)
    pixels[:24, 32:] = (230, 40, 40)
    pixels[24:, :32] = (40, 40, 230)
    pixels[24:, 32:] = (40, 200, 40)
    return pixels


def with_rotation(path: Path, degrees: int) -> Path:
    """Write the display matrix an MP4 muxer writes for a ``degrees`` counter-clockwise turn (what a phone writes
    for a portrait video, what PyAV reads back as ``VideoFrame.rotation``) into the file's ``tkhd`` box."""
    cos, sin = {90: (0, 1), -90: (0, -1), 180: (-1, 0)}[degrees]
    matrix = (cos << 16, -sin << 16, 0, sin << 16, cos << 16, 0, 0, 0, 1 << 30)
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") + 44  # version/flags, 2 times, track id, reserved, duration, 8 reserved, 4 shorts
    assert struct.unpack(">9i", data[at : at + 36]) == (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)  # identity
    data[at : at + 36] = struct.pack(">9i", *matrix)
    path.write_bytes(bytes(data))
    return path


def every_frame(calls: list):
    """A plan that samples every frame at the probed size, and records what it was given."""
    def plan(total, fps, height, width):
        calls.append((total, fps, height, width))
        return np.arange(total), (height, width)
    return plan


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    source = write_video(tmp_path_factory.mktemp("source") / "source.mp4", gray_frames(20))
    trimmed(source, folder / "trimmed.mp4", skip=5)
    write_video(folder / "portrait.mp4", [pattern()] * 4)
    with_rotation(folder / "portrait.mp4", 90)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return qwen_checkpoints.build_colqwen3_5(tmp_path_factory.mktemp("colqwen3_5") / "ckpt")


def test_an_edit_list_video_has_the_frames_the_decoder_gives(clips):
    """The container counts 20 samples, the decoder gives the 15 after the cut: the video was a bad row, "the
    video ends before frame 15 (the container says 20 frames)"."""
    path = str(clips / "trimmed.mp4")
    with av.open(path) as container:
        assert container.streams.video[0].frames == 20
        assert sum(1 for _ in container.decode(video=0)) == 15
    video = probe_video(path, path=path)
    assert (video.total_frames, video.fps, video.height, video.width, video.rotation) == (15, RATE, 48, 64, 0)
    calls: list = []
    frames = video.decode(every_frame(calls))
    assert calls == [(15, RATE, 48, 64)]
    assert frames.indices.tolist() == list(range(15))
    levels = frames.frames.reshape(15, -1).mean(axis=1)
    np.testing.assert_allclose(levels, [(5 + i) * 12 for i in range(15)], atol=6)  # frames 5..19 of the source


def test_an_edit_list_video_cut_short_is_still_a_bad_row(tmp_path):
    """The decoded count is the frame count only where the file is whole: one cut short (inside a frame, or
    frames missing) still ends before the frames it announces."""
    source = write_video(tmp_path / "source.mp4", gray_frames(20))
    data = trimmed(source, tmp_path / "header_first.mp4", skip=5, faststart=True).read_bytes()
    assert probe_video("whole", data=data).total_frames == 15
    for cut in (len(data) - 10, int(len(data) * 0.9)):
        with pytest.raises(Exception, match=r"the video ends before frame 1[0-4] \(the container says 20 frames\)"):
            probe_video("cut", data=data[:cut])


@pytest.mark.parametrize("degrees, turns, size", [(90, 1, (64, 48)), (-90, 3, (64, 48)), (180, 2, (48, 64))])
def test_frames_are_turned_upright_as_the_display_matrix_says(tmp_path, degrees, turns, size):
    """A portrait phone video (display matrix: turn 90 degrees) was encoded sideways, at its stored size."""
    path = tmp_path / "clip.mp4"
    write_video(path, [pattern()] * 3)
    with av.open(str(path)) as container:  # the stored frames, as the decoder gives them
        stored = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    with_rotation(path, degrees)
    video = probe_video(str(path), path=str(path))
    assert (video.height, video.width) == size and video.rotation == turns * 90
    calls: list = []
    frames = video.decode(every_frame(calls))
    assert calls == [(3, RATE, *size)]  # the planned resize sees the upright size
    assert frames.frames.shape == (3, *size, 3) and frames.source_size == size
    for got, want in zip(frames.frames, stored):
        np.testing.assert_array_equal(got, np.rot90(want, turns))  # counter-clockwise quarter turns
    upright = frames.frames[0].astype(int)
    corner = {1: upright[-1, 0], 3: upright[0, -1], 2: upright[-1, -1]}[turns]  # where the white quarter went
    assert (corner > 200).all()


def test_a_folder_of_an_edit_list_and_a_portrait_video_is_encoded(clips, checkpoint, cli, tmp_path):
    """The edit-list clip was exit 3 (a bad row); both are rows, sampled over the frames they have
    (``sample_frames`` given the decoded count) at their upright size."""
    items = [item for chunk in open_sources([clips], SourceOptions(modality="image")) for item in chunk]
    portrait = {item.id: item for item in items}["portrait.mp4"]
    assert isinstance(portrait.image, Video) and (portrait.image.height, portrait.image.width) == (64, 48)
    assert {item.id: item for item in items}["trimmed.mp4"].image.total_frames == 15
    out = tmp_path / "index"
    result = cli("encode", clips, "--model", checkpoint, "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(read_index(out)) == ["portrait.mp4", "trimmed.mp4"]


def test_a_video_read_otherwise_than_before_is_encoded_again_by_an_incremental_run(clips, tmp_path):
    """An earlier release read these bytes otherwise (frames left sideways, the container's 20 frames): their
    content hash, made of the bytes alone, kept the old vectors in every incremental run; a rebuild differed."""
    import hashlib

    source = write_video(tmp_path / "plain.mp4", gray_frames(4))
    items = {item.id: item for chunk in open_sources([clips, source.parent], SourceOptions(modality="image"))
             for item in chunk}
    digest = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
              for folder, name in ((clips, "portrait.mp4"), (clips, "trimmed.mp4"), (source.parent, "plain.mp4"))}
    assert items["portrait.mp4"].image_sha256 == digest["portrait.mp4"] + " turned 90"
    assert items["trimmed.mp4"].image_sha256 == digest["trimmed.mp4"] + " 15 of 20 frames"
    assert items["plain.mp4"].image_sha256 == digest["plain.mp4"]  # read as before: its rows are carried


def without_frame_rate(path: Path) -> Path:
    """``path`` with every sample lasting 0 ticks and the durations 0: PyAV then reads no average, guessed or
    base rate (a container reporting 0 fps)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"stts")
    for entry in range(struct.unpack(">I", data[at + 8 : at + 12])[0]):
        data[at + 16 + 8 * entry : at + 20 + 8 * entry] = struct.pack(">I", 0)
    for box, offset in ((b"mdhd", 20), (b"mvhd", 20), (b"tkhd", 24)):  # version 0: the duration field
        at = data.index(box) + offset
        data[at : at + 4] = struct.pack(">I", 0)
    path.write_bytes(bytes(data))
    return path


UNSAMPLABLE = {  # transformers: smart_resize raises for fewer frames than temporal_patch_size; sample_frames
    # divides by the rate
    "one-frame.mp4": (lambda path: write_video(path, gray_frames(1)), "must be larger than temporal_factor:2"),
    "no-rate.mp4": (lambda path: without_frame_rate(write_video(path, gray_frames(4))), "no frame rate"),
}


@pytest.mark.parametrize("name", sorted(UNSAMPLABLE))
def test_a_video_the_processor_cannot_sample_is_a_bad_row(name, checkpoint, cli, tmp_path):
    make, reason = UNSAMPLABLE[name]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_video(inputs / "good.mp4", gray_frames(4))
    make(inputs / name)
    out = tmp_path / "index"
    skipped = cli("encode", inputs, "--model", checkpoint, "-o", out, "--on-error", "skip", "--quiet")
    assert skipped.exit_code == 0, skipped.output
    assert list(read_index(out)) == ["good.mp4"]
    (entry,) = manifest(out)["skipped"]
    assert entry["id"] == name and reason in entry["reason"]
    failed = cli("encode", inputs, "--model", checkpoint, "-o", tmp_path / "failed")
    assert failed.exit_code == 3, failed.output
    assert f"{inputs / name} (id {name!r})" in failed.output and reason in failed.output
    assert "Traceback" not in failed.output


def test_a_video_with_a_zero_frame_rate_is_refused_not_divided_by(checkpoint):
    """The probe refuses a file without a rate; a ``Video`` made otherwise reached ``sample_frames``, whose
    division by the rate was a ZeroDivisionError traceback."""
    from tokembed.models.colqwen3_5 import PROMPTS
    from tokembed.models.qwen_vl_processor import QwenVLProcessor

    processor = QwenVLProcessor.from_pretrained(checkpoint, PROMPTS)
    with pytest.raises(ValueError, match="frame rate is 0.0"):  # processed() words a ValueError as a bad input
        processor.video_plan(10, 0.0, 48, 64)
    video = Video("clip.mp4", None, b"", total_frames=10, fps=0.0, height=48, width=64)
    assert "frame rate is 0.0" in processor.video_input_refusal(video)


def test_frames_decoded_in_a_thread_leave_no_reformatter_a_fork_would_free(tmp_path):
    """PyAV's ``to_image()`` kept a reformatter (with FFmpeg slice threads) in the decoding thread's thread-local
    state; a fork freed it in the child, which then waited forever for threads the fork did not copy (a forked
    query process hung the test suite). The frames are the ones ``to_image()`` gives."""
    import os
    import time
    from concurrent.futures import ThreadPoolExecutor

    from tokembed.sources.video import _decode_frames

    rng = np.random.default_rng(0)
    path = write_video(tmp_path / "v.mp4", [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(4)])
    video = probe_video("v.mp4", str(path))
    decoding = ThreadPoolExecutor(1)  # a thread that lives on, as a decode pool's
    decoded = {"frames": decoding.submit(_decode_frames, video, np.array([0, 2]), (480, 640), 3).result()}
    with av.open(str(path)) as container:
        expected = [np.asarray(frame.to_image()) for i, frame in enumerate(container.decode(video=0)) if i in (0, 2)]
    assert np.array_equal(decoded["frames"], np.stack(expected))
    child = os.fork()
    if child == 0:
        os._exit(0)
    deadline, exited = time.monotonic() + 20, False
    while not exited and time.monotonic() < deadline:
        exited = os.waitpid(child, os.WNOHANG) != (0, 0)
        time.sleep(0.05)
    if not exited:
        os.kill(child, 9)
        os.waitpid(child, 0)
    decoding.shutdown()
    assert exited, "the forked child hung freeing the decoding thread's state"
