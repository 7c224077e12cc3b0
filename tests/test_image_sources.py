"""Image inputs: every form an image comes in, every way it can be bad, and the decoding conversions."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import write_jsonl
from tokembed.errors import BadInputError
from tokembed.sources import SourceOptions, open_sources
from tokembed.sources.images import IMAGE_SUFFIXES, ImageDecodeError, decode_image

SAMPLE_IMAGES = Path(__file__).resolve().parent.parent / "sample_data" / "images"
SAMPLE_QUERIES = SAMPLE_IMAGES.parent / "queries_images.txt"


def read_all(paths, **options):
    options.setdefault("modality", "image")
    return [item for chunk in open_sources([Path(p) for p in paths], SourceOptions(**options)) for item in chunk]


def encoded(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def page(width: int = 40, height: int = 30, colour=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (valid CRC) but holds almost no data."""
    data = bytearray(encoded(page(4, 4)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def write_parquet_column(path: Path, ids: list[str], images, image_type=None, extra: dict | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"id": pa.array(ids), "image": pa.array(images, type=image_type)}
    for name, values in (extra or {}).items():
        columns[name] = pa.array(values)
    pq.write_table(pa.table(columns), path)
    return path


def hf_image_type():
    import pyarrow as pa

    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


# -- input forms ------------------------------------------------------------------------------------


def test_folder_of_images_ids_are_relative_paths_in_small_chunks(tmp_path):
    folder = tmp_path / "pages"
    (folder / "sub").mkdir(parents=True)
    for name, fmt in (("a.png", "PNG"), ("sub/b.jpg", "JPEG"), ("c.webp", "WEBP"), ("d.PNG", "PNG")):
        (folder / name).write_bytes(encoded(page(), fmt))
    (folder / "notes.csv").write_text("ignored")
    chunks = list(open_sources([folder], SourceOptions(modality="image", image_chunk_rows=3)))
    assert [len(chunk) for chunk in chunks] == [3, 1]  # decoded images are held one small chunk at a time
    items = {item.id: item for chunk in chunks for item in chunk}
    assert sorted(items) == ["a.png", "c.webp", "d.PNG", "sub/b.jpg"]
    item = items["a.png"]
    assert item.error is None and item.text is None and item.image.mode == "RGB" and item.image.size == (40, 30)
    assert item.image_sha256 == hashlib.sha256((folder / "a.png").read_bytes()).hexdigest()
    assert item.location == str(folder / "a.png")


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES)
def test_every_image_suffix_decodes(tmp_path, suffix):
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix, suffix[1:].upper())
    (tmp_path / f"page{suffix}").write_bytes(encoded(page(), fmt))
    [item] = read_all([tmp_path])
    assert item.error is None and item.image.size == (40, 30) and item.id == f"page{suffix}"


def test_parquet_image_column_of_bytes(tmp_path):
    import pyarrow as pa

    path = write_parquet_column(tmp_path / "c.parquet", ["p1", "p2"], [encoded(page()), encoded(page(10, 20))], pa.binary())
    items = read_all([path])
    assert [(item.id, item.image.size) for item in items] == [("p1", (40, 30)), ("p2", (10, 20))]
    assert items[0].image_sha256 == hashlib.sha256(encoded(page())).hexdigest()


def test_parquet_image_column_of_paths_relative_to_the_file(tmp_path):
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "one.png").write_bytes(encoded(page(12, 34)))
    absolute = tmp_path / "two.jpg"
    absolute.write_bytes(encoded(page(5, 6), "JPEG"))
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "three.png").write_bytes(encoded(page(7, 8)))
    path = write_parquet_column(folder / "c.parquet", ["a", "b", "c"], ["../scans/one.png", str(absolute), "three.png"])
    assert [item.image.size for item in read_all([path])] == [(12, 34), (5, 6), (7, 8)]


def test_parquet_datasets_image_struct_prefers_bytes_then_path(tmp_path):
    (tmp_path / "on-disk.png").write_bytes(encoded(page(9, 9)))
    rows = [
        {"bytes": encoded(page(3, 4)), "path": "original-name.png"},  # as datasets stores an embedded image
        {"bytes": None, "path": "on-disk.png"},
        {"bytes": None, "path": None},
        None,
    ]
    path = write_parquet_column(tmp_path / "c.parquet", ["emb", "disk", "empty", "null"], rows, hf_image_type())
    items = {item.id: item for item in read_all([path])}
    assert items["emb"].image.size == (3, 4) and items["disk"].image.size == (9, 9)
    assert items["empty"].error == "image struct has neither bytes nor path"
    assert items["null"].error == "null image" and items["null"].location.endswith("c.parquet row 3")


def test_custom_image_column_and_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["x"], "scan": [encoded(page())], "text": ["hello"]}), path)
    [item] = read_all([path], image_column="scan", image_column_given=True)
    assert item.image is not None and item.text is None  # modality image reads the image column only
    with pytest.raises(BadInputError, match=r"c\.parquet: no image column 'image' \(columns: id, scan, text\)"):
        read_all([path])


def test_jsonl_image_field_path_data_uri_and_struct(tmp_path):
    (tmp_path / "p.png").write_bytes(encoded(page(11, 12)))
    b64 = base64.b64encode(encoded(page(13, 14))).decode()
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": "path", "image": "p.png"},
            {"id": "uri", "image": f"data:image/png;base64,{b64}"},
            {"id": "struct", "image": {"bytes": b64, "path": None}},
            {"id": "struct-path", "image": {"bytes": None, "path": "p.png"}},
            {"id": "number", "image": 7},
            {"id": "bad-b64", "image": {"bytes": "%%%", "path": None}},
        ],
    )
    items = {item.id: item for item in read_all([path])}
    assert items["path"].image.size == (11, 12) and items["struct-path"].image.size == (11, 12)
    assert items["uri"].image.size == (13, 14) and items["struct"].image.size == (13, 14)
    assert items["number"].error == "line 5: image is int, not bytes, a path or {bytes, path}"  # a JSONL bad row names its line
    assert items["bad-b64"].error == "line 6: image bytes are a string but not valid base64"
    with open(path, "a") as handle:
        handle.write(json.dumps({"id": "z", "text": "no image here"}) + "\n")
    last = read_all([path])[-1]  # this record's field: a bad row, as a null image is
    assert (last.id, last.row, last.error) == ("z", 6, "line 7: no image field 'image' (fields: id, text)")


def test_text_and_image_columns_encode_what_is_asked(tmp_path):
    import pyarrow as pa

    path = write_parquet_column(
        tmp_path / "c.parquet", ["a", "b"], [encoded(page()), None], pa.binary(), extra={"text": ["caption a", "caption b"]}
    )
    text_items = read_all([path], modality="text")
    assert [(i.text, i.image) for i in text_items] == [("caption a", None), ("caption b", None)]
    image_items = read_all([path], modality="image")
    assert image_items[0].image is not None and image_items[0].text is None and image_items[1].error == "null image"
    both = read_all([path], modality="auto")
    assert both[0].text == "caption a" and both[0].image is not None
    assert both[1].text == "caption b" and both[1].image is None and both[1].error is None


def test_folder_dispatch_follows_the_modality(tmp_path):
    (tmp_path / "a.png").write_bytes(encoded(page()))
    with pytest.raises(BadInputError, match="a folder of images, but this run encodes text") as error:
        read_all([tmp_path], modality="text")
    assert "vision retrieval model" in error.value.hint
    (tmp_path / "b.txt").write_text("words")
    assert [item.id for item in read_all([tmp_path], modality="text")] == ["b.txt"]
    assert [item.id for item in read_all([tmp_path], modality="image")] == ["a.png"]
    assert [item.id for item in read_all([tmp_path], modality="auto")] == ["b.txt", "a.png"]


def test_content_of_image_items_is_the_stored_bytes_digest(tmp_path):
    (tmp_path / "a.png").write_bytes(encoded(page()))
    (tmp_path / "b.png").write_bytes(encoded(page(colour=(0, 0, 255))))
    a, b = read_all([tmp_path])
    assert a.image_sha256 is not None and _hashed(a) != _hashed(b)
    (tmp_path / "b.png").write_bytes(encoded(page()))
    assert _hashed(read_all([tmp_path])[1]) == _hashed(a)


def _hashed(item) -> bytes:
    """The item's content hash as an encode run computes it (``plan._content_hashes``)."""
    from tokembed.plan import content_hash

    return content_hash("settings", item.text or "", "", item.image_sha256)


# -- bad images -------------------------------------------------------------------------------------

BAD_IMAGES = {
    "truncated": (lambda: encoded(page(200, 200).effect_spread(5))[:400], "truncated image"),
    "not-an-image": (lambda: b"plain text, this is not an image", "not an image"),
    "zero-bytes": (lambda: b"", "empty image (0 bytes)"),
    "zero-width": (lambda: png_header_claiming(0, 0), "not an image"),
    "over-our-limit": (lambda: png_header_claiming(8000, 6000), "image is 8000x6000 = 48000000 pixels, over the limit of 40000000"),
    "over-pillow-limit": (lambda: png_header_claiming(20000, 20000), "over the"),
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_are_item_errors_in_a_folder(tmp_path, case):
    make, reason = BAD_IMAGES[case]
    (tmp_path / "good.png").write_bytes(encoded(page()))
    (tmp_path / "bad.png").write_bytes(make())
    items = {item.id: item for item in read_all([tmp_path])}
    assert items["good.png"].error is None
    assert items["bad.png"].image is None and reason in items["bad.png"].error


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_images_are_item_errors_in_parquet(tmp_path, case):
    import pyarrow as pa

    make, reason = BAD_IMAGES[case]
    path = write_parquet_column(tmp_path / "c.parquet", ["good", "bad"], [encoded(page()), make()], pa.binary())
    good, bad = read_all([path])
    assert good.error is None and reason in bad.error and bad.location == f"{path} row 1"


def test_missing_file_and_configurable_pixel_limit(tmp_path):
    (tmp_path / "big.png").write_bytes(encoded(page(100, 100)))
    path = write_parquet_column(tmp_path / "c.parquet", ["missing", "big"], ["nope.png", "big.png"])
    missing, big = read_all([path], max_image_pixels=5000)
    assert missing.error == "image file not found: nope.png"
    assert big.error == "image is 100x100 = 10000 pixels, over the limit of 5000 (--max-image-pixels)"
    assert read_all([path], max_image_pixels=10000)[1].error is None


def test_a_limit_above_pillows_own_is_honoured_without_disabling_it():
    from PIL import Image as PILImage

    before = PILImage.MAX_IMAGE_PIXELS
    try:
        with pytest.raises(ImageDecodeError, match="over the limit of 300000000"):
            decode_image(png_header_claiming(20000, 20000), max_pixels=300_000_000)  # reaches our check, not Pillow's
        assert PILImage.MAX_IMAGE_PIXELS == 300_000_000
        decode_image(encoded(page()), max_pixels=5000)
        assert PILImage.MAX_IMAGE_PIXELS == 300_000_000  # never lowered
    finally:
        PILImage.MAX_IMAGE_PIXELS = before


# -- decoding conversions ---------------------------------------------------------------------------


def decoded(data: bytes) -> Image.Image:
    image = decode_image(data).image
    assert image.mode == "RGB"
    return image


def test_exif_orientation_is_applied():
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, as the camera stored it
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left edge becomes the top
    image = decoded(encoded(stored, "PNG", exif=exif))
    assert image.size == (20, 40)
    assert image.getpixel((10, 5)) == (255, 0, 0) and image.getpixel((10, 35)) == (0, 0, 255)


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    rgba.putpixel((2, 0), (255, 0, 0, 255))
    image = decoded(encoded(rgba))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert all(120 <= c <= 135 for c in image.getpixel((1, 0)))
    assert image.getpixel((2, 0)) == (255, 0, 0)
    la = Image.new("LA", (1, 1), (0, 0))
    assert decoded(encoded(la)).getpixel((0, 0)) == (255, 255, 255)


def test_palette_images_with_and_without_transparency():
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 128, 0, 10, 20, 30] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    assert decoded(encoded(palette)).getpixel((1, 0)) == (10, 20, 30)
    image = decoded(encoded(palette, "GIF", transparency=0))
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((1, 0)) == (10, 20, 30)


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    assert decoded(encoded(cmyk, "TIFF")).getpixel((0, 0)) == (255, 0, 0)
    assert decoded(encoded(cmyk, "JPEG", quality=100)).getpixel((1, 1))[0] > 240


def test_16_bit_grayscale_is_scaled_to_8_bits():
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    image16 = Image.fromarray(values)
    assert image16.mode == "I;16"
    image = decoded(encoded(image16))
    assert [image.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_32_bit_integer_grayscale_is_scaled_by_its_range():
    """Mode I past 65535 was divided by 257 as if 16-bit: a page of values up to 2**31 - 1 came out all white."""
    signed = Image.fromarray(np.array([[0, 2**30, 2**31 - 1, -5]], dtype=np.int32))
    assert signed.mode == "I"
    image = decoded(encoded(signed, "TIFF"))
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 0]
    # a TIFF of unsigned 32-bit samples (SampleFormat 1): Pillow reads 3e9 into int32 as a negative number
    wrapped = np.array([[0, 2**31, 2**32 - 1]], dtype=np.uint32).view(np.int32)
    image = decoded(unsigned_tiff(encoded(Image.fromarray(wrapped), "TIFF")))
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    eight_bit = decoded(encoded(Image.fromarray(np.array([[0, 77, 255]], dtype=np.int32)), "TIFF"))
    assert [eight_bit.getpixel((x, 0))[0] for x in range(3)] == [0, 77, 255]  # as Pillow's convert reads it


def unsigned_tiff(data: bytes) -> bytes:
    """A little-endian TIFF Pillow wrote for mode I (SampleFormat 2, which it always writes), marked SampleFormat 1."""
    signed = struct.pack("<HHIH", 339, 3, 1, 2)  # tag, SHORT, one value, 2 (signed integer)
    assert data.count(signed) == 1
    return data.replace(signed, struct.pack("<HHIH", 339, 3, 1, 1))


def test_a_page_its_bit_depth_would_turn_into_one_gray_level_is_refused():
    """An 8-bit page saved as int32 x 1000 (0 to 255,000): all white before, all black over the 32-bit range."""
    page_values = (np.arange(64, dtype=np.int32).reshape(8, 8) * 4) * 1000
    with pytest.raises(ImageDecodeError, match=r"values \(0 to 252000\) all become gray level 0 .* blank page"):
        decode_image(encoded(Image.fromarray(page_values), "TIFF"))
    uniform = decoded(encoded(Image.fromarray(np.full((2, 2), 100_000, dtype=np.int32)), "TIFF"))
    assert uniform.getpixel((0, 0)) == (0, 0, 0)  # one gray level already: nothing lost
    dark = decoded(encoded(Image.fromarray(np.array([[0, 100]], dtype=np.uint16)), "PNG"))  # 16-bit: known range
    assert [dark.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (0, 0, 0)]  # as dark as a viewer shows it


def test_only_a_32_bit_page_past_16_bits_names_its_new_reading_in_its_content():
    """Releases before the 32-bit scaling divided such a page by 257 (white): its stored bytes' digest alone kept
    their vectors in every incremental run. Every other image's content is its digest, as before."""
    pages = {"wide": encoded(Image.fromarray(np.array([[0, 2**20, 2**30]], dtype=np.int32)), "TIFF"),
             "wrapped": unsigned_tiff(encoded(Image.fromarray(np.array([[0, 5, -1]], dtype=np.int32)), "TIFF")),
             "narrow": encoded(Image.fromarray(np.array([[0, 300, 65535]], dtype=np.int32)), "TIFF"),
             "16-bit": encoded(Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))),
             "rgb": encoded(page())}
    for name, data in pages.items():
        digest = hashlib.sha256(data).hexdigest()
        marked = name in ("wide", "wrapped")
        assert decode_image(data).content_digest == (f"{digest} 32-bit gray by its range" if marked else digest), name


def test_first_frame_of_an_animated_gif():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert decoded(data).getpixel((4, 4)) == (255, 0, 0)


def test_grayscale_and_bilevel_become_rgb():
    assert decoded(encoded(Image.new("L", (2, 2), 77))).getpixel((0, 0)) == (77, 77, 77)
    assert decoded(encoded(Image.new("1", (2, 2), 1))).getpixel((0, 0)) == (255, 255, 255)


# -- the sample corpus ------------------------------------------------------------------------------


def test_sample_images_decode_and_each_query_has_its_page():
    items = read_all([SAMPLE_IMAGES])
    queries = SAMPLE_QUERIES.read_text(encoding="utf-8").splitlines()
    assert len(items) >= 12 and len(queries) == len(items) and all(q.strip() for q in queries)
    assert all(item.error is None and item.image.mode == "RGB" for item in items)
    assert [item.id[:2] for item in items] == [f"{n:02d}" for n in range(1, len(items) + 1)]  # line N <-> NN-*
    receipt = next(item for item in items if item.id.endswith(".jpg"))
    assert receipt.image.height > receipt.image.width  # stored sideways, EXIF-rotated upright


def test_avif_bytes_in_an_image_column_are_an_image_not_a_video(tmp_path):
    """An AVIF (like an MP4) starts with an ``ftyp`` box: its bytes, alone or in a datasets struct, were taken for a
    video (a bad row "a video: ... does not encode videos"), while the same file given by its path was an image."""
    import pyarrow as pa
    from PIL import features

    from tokembed.sources.video import looks_like_video

    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    avif = encoded(page(8, 6), "AVIF")
    assert avif[4:12] == b"ftypavif" and not looks_like_video(avif[:12])
    assert looks_like_video(b"\x00\x00\x00\x18ftypisom") and looks_like_video(b"\x00\x00\x00\x18ftypmp42")
    raw = write_parquet_column(tmp_path / "raw.parquet", ["a"], [avif], pa.binary())
    struct = write_parquet_column(tmp_path / "struct.parquet", ["b"], [{"bytes": avif, "path": "x.avif"}], hf_image_type())
    items = read_all([raw, struct])
    assert [(item.id, item.error, item.image.size) for item in items] == [("a", None, (8, 6)), ("b", None, (8, 6))]
