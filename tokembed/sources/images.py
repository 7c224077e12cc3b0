"""Images as corpus items: decoding with Pillow, the values an image column may hold, and image folders.

Stage: sources. In: raw bytes (a file, a Parquet/JSONL cell, the Hugging Face ``datasets`` Image struct
``{bytes, path}``). Out: an RGB ``PIL.Image`` on ``Item.image`` plus the sha256 of the stored bytes
(``Item.image_sha256``, what the content hash of an image item is made of, with ``DecodedImage.reading``), or
``Item.error`` naming why the image cannot be used. Decoding happens in the reader, so a bad image is an item error like a null
text, and memory stays bounded by the chunk (``SourceOptions.image_chunk_rows`` decoded images and
``image_chunk_pixels`` decoded pixels at most, plus the few in flight, about half as many pixels again: a
folder's or a Parquet column's images decode on ``DECODE_THREADS`` threads, in order).

Decoding follows what a page screenshot pipeline expects: EXIF orientation applied
(``ImageOps.exif_transpose``), first frame of animated images (page 1 of a multi-page TIFF, with a warning),
transparency composited on white, CMYK and palette images converted to RGB, 16- and 32-bit grayscale scaled to
8 bits by the range of their type (a 32-bit page that would become one gray level is an item error),
and a pixel limit checked on the header before any pixel is decoded (decompression bombs are an item error,
never a crash).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokembed.open_files import refuse_out_of_descriptors
from tokembed.sources.base import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, Item, SourceOptions, read_digest
from tokembed.sources.chunks import chunked, image_pixels
from tokembed.sources.files import folder_files, special_file_problem
from tokembed.sources.path_cells import cell_file, shown

WHITE = (255, 255, 255)
DECODE_THREADS = 4  # images of a folder or a Parquet image column decoded at once (Pillow releases the GIL)
_OPENING = threading.Lock()
_decoder: ThreadPoolExecutor | None = None


class ImageDecodeError(Exception):
    """Why one image cannot be used; becomes ``Item.error``."""


@dataclass(frozen=True)
class DecodedImage:
    image: Any  # PIL.Image.Image, mode RGB
    sha256: str  # hex digest of the bytes as stored (file, cell), not of the pixels
    pages: int = 1  # a multi-page TIFF's page count (only page 1 is read: ``warn_pages_left``)
    reading: str = ""  # how this release reads the bytes otherwise than an earlier one did ("" almost always)

    @property
    def content_digest(self) -> str:
        """What the item's content hash is made of: the stored bytes' digest, and the reading where an earlier
        release read them otherwise, so that an incremental run encodes such an image again, as a rebuild does."""
        return read_digest(self.sha256, self.reading)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Bytes -> RGB image, or ``ImageDecodeError`` with a one-line reason."""
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    image, pages, reading = _decode(bytes(data), max_pixels)
    return DecodedImage(image, digest, pages, reading)


def _decode(data: bytes, max_pixels: int) -> tuple[Any, int, str]:
    """(the RGB image, the page count of a multi-page TIFF, else 1, ``DecodedImage.reading``)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    _allow_pixels(max_pixels)
    try:
        # Our own limit is checked below; Pillow's warning (from ``open``) would only repeat it. The filter is
        # process-wide state, so decoding threads take turns for the header only; the pixels decode in parallel.
        with _OPENING, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageDecodeError(f"image has zero size ({width}x{height})")
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} (--max-image-pixels)"
            )
        pages = getattr(image, "n_frames", 1) if image.format == "TIFF" else 1  # a scan's pages, not an animation
        image.seek(0)  # first frame of an animated GIF/WebP/TIFF
        image.load()
        unsigned = _unsigned_32(image)  # a TIFF tag: the transposed copy has none
        reading = "32-bit gray by its range" if _past_16_bits(image, unsigned) else ""
        return to_rgb(ImageOps.exif_transpose(image), unsigned), pages, reading
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (Pillow cannot identify the format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(_bomb_reason(exc, max_pixels)) from None
    except MemoryError:
        raise ImageDecodeError("out of memory while decoding the image") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, struct.error, ...
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            raise ImageDecodeError(f"truncated image ({reason})") from None
        raise ImageDecodeError(f"cannot decode image ({type(exc).__name__}: {reason})") from None


def warn_pages_left(location: str, decoded: DecodedImage) -> None:
    """A ``tokembed: warning:`` line for a multi-page TIFF (a scanned document), whose pages after the first are
    not read: an image is one row (``#page=N`` rows are the PDFs')."""
    if decoded.pages > 1:
        import logging

        logging.getLogger("tokembed").warning(
            "%s: a TIFF of %d pages: only page 1 is read (save the pages as a PDF, or one image each, to index them)",
            location, decoded.pages)


def _allow_pixels(max_pixels: int) -> None:
    """Let Pillow open what our limit allows: its own bomb check (2 x MAX_IMAGE_PIXELS) fires in ``open``.

    The global is only ever raised, never lowered or disabled, so other Pillow users keep their guard.
    """
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _bomb_reason(exc: Exception, max_pixels: int) -> str:
    """The reason for an image Pillow's own bomb check refused (``open`` checks at twice ``MAX_IMAGE_PIXELS``, which
    ``_allow_pixels`` keeps at or above ours: such an image is over our limit too), as ``_decode`` words its own; the
    size is known only from Pillow's message (its pixel count)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"image is {found.group(1)} pixels, " if found else "image is "
    return f"{size}over the limit of {max_pixels} (--max-image-pixels)"


def to_rgb(image, unsigned: bool = False):
    """Any Pillow mode -> RGB: transparency on white, CMYK/YCbCr/palette converted, 16- and 32-bit scaled to 8.
    ``unsigned``: a mode ``I`` image holds unsigned 32-bit values (a TIFF's SampleFormat 1)."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_8bit(image, unsigned), mode="L").convert("RGB")
    if mode in ("P", "PA") and (mode == "PA" or "transparency" in image.info):
        image = image.convert("RGBA")
    elif mode == "P":
        return image.convert("RGB")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _to_8bit(image, unsigned: bool = False):
    """16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) grayscale -> uint8 array, scaled by the range of
    its type (Pillow's own ``convert`` clips at 255, which turns most such pages white). A 32-bit page (whose real
    range is not known: the type's is a guess) that was not one gray level and would become one is refused rather
    than indexed blank; a dark 16-bit or float page stays as dark as a viewer shows it."""
    import numpy as np

    values = np.asarray(image)
    if unsigned and image.mode == "I":
        values = values.view(np.uint32)  # Pillow reads a uint32 TIFF into int32: values past 2**31 wrapped
    values = values.astype(np.float64)
    top = _float_top(values) if image.mode == "F" else _integer_top(image.mode, values, unsigned)
    gray = np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8)
    if top > 65535 and values.min() != values.max() and gray.min() == gray.max():  # 32-bit: its range a guess
        raise ImageDecodeError(f"a grayscale image of mode {image.mode} whose values ({values.min():g} to "
                               f"{values.max():g}) all become gray level {gray.flat[0]} at 8 bits over its type's range "
                               f"(0 to {top:.0f}): it would be indexed as a blank page")
    return gray


def _float_top(values) -> float:
    return 1.0 if values.size and values.max() <= 1.0 else 255.0


def _integer_top(mode: str, values, unsigned: bool) -> float:
    """The white of an integer image: its type's largest value. Mode ``I`` (32-bit) also holds 8- and 16-bit data
    (a 16-bit PGM, a 16-bit PNG in older Pillow, an 8-bit array saved as int32), told by its values."""
    high = values.max() if values.size else 0
    if mode.startswith("I;16") or 255 < high <= 65535:
        return 65535.0
    if high <= 255:
        return 255.0  # as Pillow's convert reads it
    return 2.0**32 - 1 if unsigned else 2.0**31 - 1


def _past_16_bits(image, unsigned: bool) -> bool:
    """A 32-bit integer page with values past 65535, which releases before the 32-bit scaling divided by 257
    (clipped white) and read negative where a TIFF's unsigned values wrapped: ``_to_8bit`` reads it otherwise."""
    import numpy as np

    if image.mode != "I":
        return False
    values = np.asarray(image)
    return bool(values.size) and int((values.view(np.uint32) if unsigned else values).max()) > 65535


def _unsigned_32(image) -> bool:
    """A TIFF of unsigned 32-bit samples (BitsPerSample 32, SampleFormat 1 or unset), which Pillow opens as mode I."""
    tags = getattr(image, "tag_v2", None)
    if image.mode != "I" or tags is None:
        return False
    first = lambda value: value[0] if isinstance(value, tuple) else value  # noqa: E731 (a tag: a tuple, or one number)
    return first(tags.get(258, 0)) == 32 and first(tags.get(339, 1)) == 1


# -- values of an image column ----------------------------------------------------------------------


def image_from_value(value: Any, base: Path, max_pixels: int, where: str) -> DecodedImage:
    """Decode one image-column value: bytes, a path (relative to ``base``), a data URI, or ``{bytes, path}``;
    ``where``: the row's location, which a path the locale would misread names (``UsageError``)."""
    if value is None:
        raise ImageDecodeError("null image")
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return image_from_value(_struct_bytes(value["bytes"]), base, max_pixels, where)
        if value.get("path"):
            return image_from_value(str(value["path"]), base, max_pixels, where)
        raise ImageDecodeError("image struct has neither bytes nor path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_image(bytes(value), max_pixels)
    if isinstance(value, str):
        if value.startswith("data:"):
            return decode_image(_data_uri(value), max_pixels)
        return decode_image(_read_file(value, base, where), max_pixels)
    raise ImageDecodeError(f"image is {type(value).__name__}, not bytes, a path or {{bytes, path}}")


def _struct_bytes(value: Any) -> bytes:
    """``bytes`` of a struct: raw in Parquet; base64 text in JSON (JSON cannot hold raw bytes)."""
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ImageDecodeError("image bytes are a string but not valid base64") from None
    if isinstance(value, list):
        try:
            return bytes(value)
        except (TypeError, ValueError):
            raise ImageDecodeError("image bytes are a list but not of byte values") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise ImageDecodeError(f"image bytes are {type(value).__name__}")


def _data_uri(value: str) -> bytes:
    header, _, payload = value.partition(",")
    if ";base64" not in header:
        raise ImageDecodeError("data URI image is not base64-encoded")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageDecodeError("data URI image is not valid base64") from None


def _read_file(value: str, base: Path, where: str) -> bytes:
    path, problem = cell_file(value, base, "image", where)
    if problem:
        raise ImageDecodeError(problem + _inline_data_hint(value))
    try:
        return path.read_bytes()
    except OSError as exc:
        refuse_out_of_descriptors(path, exc)
        raise ImageDecodeError(f"cannot read image file {shown(value)} ({exc.strerror or exc}){_inline_data_hint(value)}"
                               ) from None


def _inline_data_hint(value: str) -> str:
    """What an image cell holds, for a value too long to be a path (plain base64 without its ``data:`` prefix)."""
    if value == shown(value):
        return ""
    return ": an image cell holds a path, a data URI (data:image/png;base64,...) or {bytes, path} (JSON: bytes in base64)"


# -- decoding threads -------------------------------------------------------------------------------


def in_background(function, *args) -> Item | Future:
    """``function(*args)`` (an item with its image decoded) on the decoding threads, or here with one core."""
    threads = min(DECODE_THREADS, os.cpu_count() or 1)
    if threads < 2:
        return function(*args)
    global _decoder
    if _decoder is None:
        _decoder = ThreadPoolExecutor(threads, thread_name_prefix="tokembed-decode")
    return _decoder.submit(function, *args)


def in_order(items: Iterable[Item | Future], pixels: int | None = None) -> Iterator[Item]:
    """The items, in order, each ``in_background`` one once decoded, with up to ``2 x DECODE_THREADS`` in flight
    (that many decoded images beyond the chunk), fewer where images are large: given ``pixels`` (a chunk's budget,
    ``SourceOptions.image_chunk_pixels``), those in flight hold about half of it, sized by the last image taken."""
    window: deque = deque()
    last = 0  # pixels of the last decoded image taken
    for item in items:
        window.append(item)
        while len(window) > _ahead(last, pixels):
            done = _done(window.popleft())
            last = image_pixels(done) or last
            yield done
    while window:
        yield _done(window.popleft())


def _ahead(last: int, pixels: int | None) -> int:
    """Items decoded ahead of the one taken: the images in flight decode at once, each as large as ``last``."""
    if pixels is None or last == 0:
        return 2 * DECODE_THREADS
    return max(1, min(2 * DECODE_THREADS, pixels // 2 // last))


def _done(item: Item | Future) -> Item:
    return item.result() if isinstance(item, Future) else item


# -- a folder of images -----------------------------------------------------------------------------


def image_files(folder: Path, walks=None) -> list[Path]:
    return folder_files(folder, is_image_file, walks)


def read_image_folder(folder: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    """One item per image file, id = path relative to the folder, in path order."""
    size, pixels = min(options.chunk_rows, options.image_chunk_rows), options.image_chunk_pixels
    decoding = (in_background(_file_item, folder, file, options.max_image_pixels) for file in image_files(folder, options.walks))
    return chunked(in_order(decoding, pixels), size, pixels)


def _file_item(folder: Path, file: Path, max_pixels: int) -> Item:
    item_id = file.relative_to(folder).as_posix()
    if problem := special_file_problem(file):  # a FIFO would block the read forever
        return Item(item_id, None, str(file), 0, error=problem)
    try:
        data = file.read_bytes()
    except OSError as exc:
        refuse_out_of_descriptors(file, exc)
        return Item(item_id, None, str(file), 0, error=f"cannot read ({exc.strerror or exc})")
    try:
        decoded = decode_image(data, max_pixels)
    except ImageDecodeError as exc:
        return Item(item_id, None, str(file), 0, error=str(exc))
    warn_pages_left(str(file), decoded)
    return Item(item_id, None, str(file), 0, image=decoded.image, image_sha256=decoded.content_digest)


def attach_image(item: Item, value: Any, base: Path, max_pixels: int, either: bool = False) -> Item:
    """Decode a row's image-column value onto its item (or name why it cannot be used).

    ``either`` (modality "auto"): the row needs a usable text or image, not both; a null image leaves a
    text row as it is, and a good image is enough for a row whose text is missing.
    """
    from dataclasses import replace

    if value is None and either:
        return item
    try:
        decoded = image_from_value(value, base, max_pixels, item.location)
    except ImageDecodeError as exc:
        return replace(item, error=str(exc))
    warn_pages_left(f"{item.location} (id {item.id!r})", decoded)
    if either and item.text is None:
        item = replace(item, error=None)
    return replace(item, image=decoded.image, image_sha256=decoded.content_digest)
