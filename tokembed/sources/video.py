"""Videos as corpus items: a folder of ``.mp4`` / ``.webm`` files, or video cells of a Parquet/JSONL column.

Stage: sources. In: a video file or the bytes of one. Out: an ``Item`` whose ``image`` is a ``Video`` (where the
bytes are, its frame count, frame rate, displayed size and rotation) and whose ``image_sha256`` is the sha256
of the stored bytes (what the content hash of the item is made of), or ``Item.error`` naming why the video
cannot be used. The reader opens the container (PyAV), reads its headers (and packet count), and decodes every
frame once without keeping any (``probe_video``), so a video that does not decode (corrupt data, no decoder, a
file cut short of the frames or the duration its container announces) is a bad row of the reader, skipped or
failed under ``--on-error`` like a bad image or PDF page, not an error in the middle of encoding; a chunk of video
items holds no frames. The model decodes the frames it samples when it encodes the item (``Video.decode``),
turning each one upright as the container's display matrix says (a phone's portrait video is stored sideways) and
resizing it as it comes, so memory is bounded by the sampled, resized frames of one video. A folder's videos are
probed on the images' decoding threads, taken back in order.

PyAV (FFmpeg) is the decoder: ``pip install 'tokembed[video]'``.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokembed.errors import BadInputError, UsageError
from tokembed.index.atomic import sha256_file
from tokembed.open_files import refuse_out_of_descriptors
from tokembed.sources.base import VIDEO_SUFFIXES, Item, SourceOptions, read_digest
from tokembed.sources.chunks import chunked
from tokembed.sources.files import folder_files
from tokembed.sources.files import special_file_problem
from tokembed.sources.path_cells import cell_file

# A plan: (total frames, fps, height, width) -> (frame numbers to sample, (height, width) to resize them to).
Plan = Callable[[int, float, int, int], tuple[np.ndarray, tuple[int, int]]]


class VideoDecodeError(Exception):
    """Why one video cannot be used; becomes ``Item.error``."""


@dataclass(frozen=True)
class VideoFrames:
    """A decoded video: the sampled frames and where they sit in the source (for the timestamps)."""

    frames: np.ndarray  # [n_frames, height, width, 3] uint8 RGB (already resized, or at the source size)
    indices: np.ndarray  # [n_frames] the frame numbers sampled from the source
    fps: float  # the source's frame rate
    source_size: tuple[int, int] | None = None  # (height, width) of the source; None: the frames' own size


@dataclass(frozen=True)
class Video:
    """A video item's content: a file (``path``) or bytes held in memory (``data``), and its probed headers."""

    name: str  # what error messages call it (the file, or the row's source)
    path: str | None
    data: bytes | None
    total_frames: int  # the frames the decoder gives (an edit list makes them fewer than the container's samples)
    fps: float
    height: int  # the size a player shows: the coded size swapped when the video is turned a quarter
    width: int
    rotation: int = 0  # degrees (0, 90, 180, 270) each frame is turned counter-clockwise to stand upright
    announced: int = 0  # the frames the container counts (0: as decoded)

    def content_digest(self, sha256: str) -> str:
        """What the item's content hash is made of: the stored bytes' digest, and what the reader makes of them
        where an earlier release read them otherwise (frames left unturned, the container's frame count), so
        that an incremental run encodes such a video again, as a rebuild does."""
        turned = f"turned {self.rotation}" if self.rotation else ""
        cut = f"{self.total_frames} of {self.announced} frames" if self.announced not in (0, self.total_frames) else ""
        return read_digest(sha256, turned, cut)

    def decode(self, plan: Plan, resample: int = 3) -> VideoFrames:
        """Decode the frames ``plan`` picks, each resized with PIL (``resample``: a ``PIL.Image.Resampling``
        value, bicubic by default) to the size it gives, as it is decoded."""
        indices, (height, width) = plan(self.total_frames, self.fps, self.height, self.width)
        frames = _decode_frames(self, np.asarray(indices, dtype=np.int64), (height, width), resample)
        return VideoFrames(frames, np.asarray(indices, dtype=np.int64), self.fps, (self.height, self.width))


def is_video(value: Any) -> bool:
    return isinstance(value, (Video, VideoFrames))


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def looks_like_video(data: bytes) -> bool:
    """MP4/QuickTime (an ``ftyp`` box first, of a brand that is no HEIF image's: AVIF and HEIC files start with an
    ``ftyp`` box too) or WebM/Matroska (the EBML magic)."""
    if data[4:8] == b"ftyp":
        return data[8:12] not in HEIF_IMAGE_BRANDS
    return data[:4] == b"\x1a\x45\xdf\xa3"


# ISO/IEC 23008-12 (HEIF) and the AVIF specification: the major brands of still images and image sequences
HEIF_IMAGE_BRANDS = frozenset({b"mif1", b"msf1", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"avif",
                               b"avis", b"avci", b"avcs", b"jpeg", b"vvic", b"vvis"})


def probe_video(name: str, path: str | None = None, data: bytes | None = None, max_pixels: int | None = None) -> Video:
    """Open the container and read its first video stream's frame rate and size; a frame larger than
    ``max_pixels`` (``--max-image-pixels``, as for images) is refused before any frame is decoded. Then decode
    every frame once (``_check_frames``) for the frame count and the display rotation."""
    av = _import_av()
    try:
        with _opened(av, path, data) as container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:  # a damaged sample description ('stsd'): PyAV finds no decoder
                raise VideoDecodeError("the video stream has no decoder (a damaged or unknown codec description)")
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else 0.0
            counted = int(stream.frames or 0)
            announced = counted or sum(1 for packet in container.demux(stream) if packet.size)
            height, width = int(stream.codec_context.height), int(stream.codec_context.width)
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(f"cannot open the video ({type(exc).__name__}: {exc})") from None
    if announced <= 0:
        raise VideoDecodeError("the video has no frames")
    if fps <= 0:
        raise VideoDecodeError("the video has no frame rate")
    if height <= 0 or width <= 0:
        raise VideoDecodeError(f"the video has zero size ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise VideoDecodeError(f"the video's frames are {width}x{height} = {width * height} pixels, over the limit of "
                               f"{max_pixels} (--max-image-pixels)")
    total, rotation = _check_frames(av, path, data, announced, counted, fps)
    if rotation % 180:  # a phone's portrait video, stored sideways
        height, width = width, height
    return Video(name, path, data, total, fps, height, width, rotation, announced)


def _opened(av, path: str | None, data: bytes | None):
    """The container of a video file (``path``) or of its bytes, for reading."""
    try:
        return av.open(path if path is not None else io.BytesIO(data), mode="r")
    except OSError as exc:  # PyAV's errors with an errno are OSErrors: EMFILE is the limit's, not the video's
        refuse_out_of_descriptors(path, exc)
        raise


def _check_frames(av, path: str | None, data: bytes | None, announced: int, counted: int, fps: float) -> tuple[int, int]:
    """Decode every frame as ``Video.decode`` does (the same stream, the same decoder settings), keeping none, so
    that a video that passes decodes when it is encoded. Returns the number of frames decoded, which is the video's
    frame count (an edit list, as ``ffmpeg -ss N -c copy`` writes, cuts samples the container still counts), and
    the display rotation (``_quarter_turns``). ``counted``: the samples the container's header counts (an MP4's
    sample table); where the packets read outnumber them (none in a WebM or a fragmented MP4, the first fragment's
    in one whose header holds it), the video is cut short where it ends before its duration."""
    decoded = packets = read = rotation = 0  # read: the packets with data, whole or not
    video_end = any_end = None  # seconds: where the video stream's whole packets end, and any stream's
    try:
        with _opened(av, path, data) as container:
            stream = container.streams.video[0]
            for packet in container.demux():  # every stream: the container's duration spans them all
                end = _packet_end(packet, 1 / fps if packet.stream_index == stream.index else 0)
                any_end = _later(any_end, end)
                if packet.stream_index != stream.index:
                    continue
                read += bool(packet.size)
                if packet.size and not packet.is_corrupt:  # a packet read in part: the file is cut inside it
                    packets += 1
                    video_end = _later(video_end, end)
                for frame in packet.decode():
                    rotation = rotation if decoded else frame.rotation
                    decoded += 1
            whole = min(decoded, packets)  # a frame decoded from a packet read in part is no whole frame
            cut = (_fewer_samples(stream, announced, packets, whole, video_end)
                   or (_before_duration(container, stream, whole, video_end, any_end, fps) if read > counted else None))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(f"cannot decode the video at frame {decoded} ({type(exc).__name__}: {exc})") from None
    if cut:
        raise VideoDecodeError(cut)
    if decoded == 0:
        raise VideoDecodeError("the video has no frames")
    return decoded, _quarter_turns(rotation)


def _packet_end(packet, frame_seconds: float) -> float | None:
    """Where a whole packet ends, in seconds: its time plus its duration (``frame_seconds`` where it has none).
    None for a packet without a time, an empty one (a decoder's flush) or one read in part."""
    if packet.pts is None or not packet.size or packet.is_corrupt:
        return None
    duration = float(packet.duration * packet.time_base) if packet.duration else frame_seconds
    return float(packet.pts * packet.time_base) + duration


def _later(end: float | None, other: float | None) -> float | None:
    return other if end is None else end if other is None else max(end, other)


def _fewer_samples(stream, announced: int, packets: int, whole: int, end: float | None) -> str | None:
    """Why a video is cut short where fewer whole packets are read than its container's samples and they end more
    than half a frame before the stream's duration (samples an edit list cuts lie outside the duration; without one
    known, any missing sample is a cut); None where it is not."""
    if packets >= announced:
        return None
    if stream.duration and end is not None and stream.average_rate:
        half_frame = 1 / (2 * float(stream.average_rate))
        if end + half_frame >= float(((stream.start_time or 0) + stream.duration) * stream.time_base):
            return None
    return f"the video ends before frame {whole} (the container says {announced} frames)"


def _before_duration(container, stream, whole: int, video_end: float | None, any_end: float | None,
                     fps: float) -> str | None:
    """Why a video whose container counts no samples (WebM, fragmented MP4) is cut short: its packets end more than
    a frame before the duration it declares (a partial download keeps the header's duration). The stream's own
    duration where the container gives one, else the container's, which spans every stream: compared with where
    any stream's packets end, so that an audio track longer than the video is no cut. None where it is not."""
    if stream.duration:
        declared, end = float(((stream.start_time or 0) + stream.duration) * stream.time_base), video_end
    elif container.duration:  # microseconds; a start below 0 (reordered frames) shortens the span
        declared, end = (container.duration + min(container.start_time or 0, 0)) / 1e6, any_end
    else:
        return None
    if end is None or end + 1 / fps >= declared:
        return None
    return f"the video ends before frame {whole}, at {end:.2f} s (the container says {declared:.2f} s)"


def _quarter_turns(rotation: float) -> int:
    """PyAV's ``VideoFrame.rotation`` (the display matrix's counter-clockwise turn, -180..180) as 0, 90, 180 or 270."""
    return round(rotation / 90) % 4 * 90


def _upright(image, rotation: int):
    """A decoded frame turned as a player shows it (``rotation``: counter-clockwise degrees, ``_quarter_turns``)."""
    from PIL import Image

    turns = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    return image.transpose(turns[rotation]) if rotation else image


def _decode_frames(video: Video, indices: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    from PIL import Image

    av = _import_av()
    wanted = {int(i) for i in indices}
    last = max(wanted)
    found: dict[int, np.ndarray] = {}
    height, width = size
    # PyAV's to_image() converts with a reformatter it keeps in a thread-local of the decoding thread, with FFmpeg
    # slice threads behind it: a fork of this process frees that thread's state in the child, whose reformatter
    # then waits for threads the fork did not copy (a forked query process hung). This call's own is freed here.
    reformatter = av.video.reformatter.VideoReformatter()
    try:
        with _opened(av, video.path, video.data) as container:
            for number, frame in enumerate(container.decode(video=0)):
                if number in wanted:
                    image = _upright(_rgb_image(reformatter.reformat(frame, format="rgb24")), video.rotation)
                    if image.size != (width, height):
                        image = image.resize((width, height), resample=Image.Resampling(resample))
                    found[number] = np.asarray(image, dtype=np.uint8)
                if number >= last:
                    break
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise BadInputError(f"{video.name}: cannot decode the video ({type(exc).__name__}: {exc})") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise BadInputError(f"{video.name}: the video ends before frame {missing[0]} ({video.total_frames} frames when it was read)")
    return np.stack([found[int(i)] for i in indices])


def _rgb_image(frame):
    """An rgb24 frame as a PIL image, read from its plane (``to_image()`` would take PyAV's thread-local reformatter)."""
    from PIL import Image

    plane = frame.planes[0]
    rows = np.frombuffer(plane, dtype=np.uint8).reshape(frame.height, abs(plane.line_size))
    if plane.line_size < 0:  # bottom-up: the buffer starts at the lowest row
        rows = rows[::-1]
    return Image.fromarray(np.ascontiguousarray(rows[:, : frame.width * 3]).reshape(frame.height, frame.width, 3))


def _import_av():
    """PyAV, or ``UsageError`` (exit 2) naming the extra, as the other extras' imports: a missing package is no bad
    row, so the run stops under ``--on-error skip`` too."""
    try:
        import av
    except ImportError:
        raise UsageError("reading videos needs PyAV, which is not installed",
                         hint="pip install 'tokembed[video]'  (or: pip install av)") from None
    return av


# -- a folder of videos -----------------------------------------------------------------------------


def video_files(folder: Path, walks=None) -> list[Path]:
    return folder_files(folder, is_video_file, walks)


def read_video_folder(folder: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    """One item per video file, id = path relative to the folder, in path order."""
    from tokembed.sources.images import in_background, in_order

    _import_av()  # a clear error before the first file rather than one per file
    size = min(options.chunk_rows, options.image_chunk_rows)
    probing = (in_background(_file_item, folder, file, options.max_image_pixels) for file in video_files(folder, options.walks))  # PyAV decodes without the GIL
    return chunked(in_order(probing), size)


def _file_item(folder: Path, file: Path, max_pixels: int | None) -> Item:
    item_id = file.relative_to(folder).as_posix()
    if problem := special_file_problem(file):  # a FIFO would block the read forever
        return Item(item_id, None, str(file), 0, error=problem)
    try:
        digest = sha256_file(file)
    except OSError as exc:
        refuse_out_of_descriptors(file, exc)
        return Item(item_id, None, str(file), 0, error=f"cannot read ({exc.strerror or exc})")
    try:
        video = probe_video(str(file), path=str(file), max_pixels=max_pixels)
    except VideoDecodeError as exc:
        return Item(item_id, None, str(file), 0, error=str(exc))
    return Item(item_id, None, str(file), 0, image=video, image_sha256=video.content_digest(digest))


# -- a video cell of a Parquet/JSONL column ---------------------------------------------------------


def video_from_value(value: Any, base: Path, name: str, max_pixels: int | None = None) -> tuple[Video, str]:
    """A video-column value (bytes, a path relative to ``base``, or ``{bytes, path}``) -> (Video, sha256 hex)."""
    if value is None:
        raise VideoDecodeError("null video")
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return video_from_value(_struct_bytes(value["bytes"]), base, name, max_pixels)
        if value.get("path"):
            return video_from_value(str(value["path"]), base, name, max_pixels)
        raise VideoDecodeError("video struct has neither bytes nor path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not data:
            raise VideoDecodeError("empty video (0 bytes)")
        return probe_video(name, data=data, max_pixels=max_pixels), hashlib.sha256(data).hexdigest()
    if isinstance(value, str):
        if value.startswith("data:"):  # no file name: its base64 would be read as one (too long for the file system)
            raise VideoDecodeError("video is a data: URI, which a video cell does not take "
                                   "(bytes, a path or {bytes, path})")
        path, problem = cell_file(value, base, "video", name)
        if problem:
            raise VideoDecodeError(problem)
        return probe_video(str(path), path=str(path), max_pixels=max_pixels), sha256_file(path)
    raise VideoDecodeError(f"video is {type(value).__name__}, not bytes, a path or {{bytes, path}}")


def _struct_bytes(value: Any) -> bytes:
    """Raw bytes in Parquet; base64 text in JSON (as for images)."""
    from tokembed.sources.images import ImageDecodeError, _struct_bytes as image_struct_bytes

    try:
        return image_struct_bytes(value)
    except ImageDecodeError as exc:
        raise VideoDecodeError(str(exc).replace("image", "video")) from None


def video_in_value(value: Any, base: Path) -> bool:
    """Whether an image-column value holds a video: MP4/WebM bytes, or a path ending in .mp4/.webm."""
    if isinstance(value, dict):
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return looks_like_video(bytes(value[:12]))
    return isinstance(value, str) and not value.startswith("data:") and value.lower().endswith(VIDEO_SUFFIXES)


def video_item(item: Item, value: Any, base: Path, options: SourceOptions) -> Item:
    """A row's video cell onto its item (``attach_video``), or, where the run's model encodes no video, a bad row
    naming why (``SourceOptions.video_refusal``), its bytes never probed."""
    if options.video_refusal is not None:
        from dataclasses import replace

        return replace(item, error=f"a video: {options.video_refusal}")
    return attach_video(item, value, base, options.max_image_pixels)


def attach_video(item: Item, value: Any, base: Path, max_pixels: int | None = None) -> Item:
    """Probe a row's video-column value onto its item (or name why it cannot be used)."""
    from dataclasses import replace

    try:
        video, digest = video_from_value(value, base, item.location, max_pixels)
    except VideoDecodeError as exc:
        return replace(item, error=str(exc))
    return replace(item, image=video, image_sha256=video.content_digest(digest))
