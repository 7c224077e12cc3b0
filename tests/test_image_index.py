"""Image corpora end to end: ``encode`` a folder of page images with a vision model, then ``score``
text queries against the image index, equal to brute-force MaxSim."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_score_equals_brute_force, manifest, read_index, write_jsonl

SAMPLE_IMAGES = __import__("conftest").SAMPLE_DATA / "images"


@pytest.fixture(scope="module")
def colpali(tmp_path_factory):
    from vision_checkpoints import build_colpali

    return build_colpali(tmp_path_factory.mktemp("vision") / "colpali")


def test_encode_image_folder_then_score_text_queries(cli, colpali, tmp_path):
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    out = tmp_path / "index"
    result = cli("encode", SAMPLE_IMAGES, "--model", colpali, "-o", out, "--store-dtype", "float32", "--batch-tokens", 2048)
    assert result.exit_code == 0, result.output
    data = manifest(out)
    images = sorted(p.name for p in SAMPLE_IMAGES.iterdir())
    assert data["model"]["family"] == "ColPaliForRetrieval" and data["totals"]["rows"] == len(images)
    rows = read_index(out)
    assert sorted(rows) == images

    # the same image encoded alone through the model gives the stored vectors
    embedder = Embedder.load(str(colpali), EncodeFlags(store_dtype="float32"))
    from tokembed.sources.images import decode_image

    first = images[0]
    image = decode_image((SAMPLE_IMAGES / first).read_bytes(), 40_000_000).image
    (alone, ids), = embedder.embed([image])
    assert ids.tolist() == rows[first][1].tolist() and np.abs(alone - rows[first][0]).max() <= 1e-5

    assert_score_equals_brute_force(cli, out, ["quarterly revenue chart", "boarding pass gate"])


def test_bad_image_skip_and_fail(cli, colpali, tmp_path):
    folder = tmp_path / "pages"
    folder.mkdir()
    good = sorted(SAMPLE_IMAGES.iterdir())[0]
    (folder / "good.png").write_bytes(good.read_bytes())
    (folder / "broken.png").write_bytes(good.read_bytes()[:200])
    out = tmp_path / "index"
    failed = cli("encode", folder, "--model", colpali, "-o", out)
    assert failed.exit_code == 3 and "broken.png" in failed.stderr
    skipped = cli("encode", folder, "--model", colpali, "-o", out, "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.output
    assert list(read_index(out)) == ["good.png"]
    assert manifest(out)["skipped"][0]["id"] == "broken.png"


def test_pillow_warnings_are_log_lines_and_quiet_stays_silent(cli, colpali, tmp_path):
    """A photo with a truncated EXIF block decodes, but Pillow warns ("Corrupt EXIF data"). The warning was a
    two-line Python warning on stderr even with --quiet, which mails a cron job's owner on a good night."""
    import io
    import warnings

    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    photo = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(photo, "JPEG", exif=b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05")
    (folder / "photo.jpg").write_bytes(photo.getvalue())
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # not once per session: each run below must meet the warning
        loud = cli("encode", folder, "--model", colpali, "-o", tmp_path / "loud")
        quiet = cli("encode", folder, "--model", colpali, "-o", tmp_path / "quiet", "--quiet")
    assert loud.exit_code == 0 and quiet.exit_code == 0
    assert "tokembed: warning: UserWarning: Corrupt EXIF data" in loud.stderr and "warnings.warn" not in loud.stderr
    assert quiet.stderr == "" and "1 rows" in quiet.stdout


def test_a_32_bit_page_an_earlier_release_read_otherwise_is_encoded_again(cli, colpali, tmp_path, monkeypatch):
    """The first cron run after the 32-bit scaling encodes such a page again, as a rebuild does (its hash was the
    bytes' alone), and carries every other page."""
    import json

    from PIL import Image

    from tokembed.sources import images

    folder = tmp_path / "pages"
    folder.mkdir()
    (folder / "scan.png").write_bytes((SAMPLE_IMAGES / sorted(p.name for p in SAMPLE_IMAGES.iterdir())[0]).read_bytes())
    wide = (np.arange(48 * 64, dtype=np.int64).reshape(48, 64) * 600_000).astype(np.int32)
    Image.fromarray(wide).save(folder / "wide.tif")
    index = tmp_path / "index"
    encode = ("encode", folder, "--model", colpali, "-o", index, "--log-format", "json")
    with monkeypatch.context() as patch:  # the content hashes an earlier release recorded: no reading named
        patch.setattr(images, "_past_16_bits", lambda *args: False)
        assert cli(*encode).exit_code == 0
    upgraded = cli(*encode)
    assert upgraded.exit_code == 0, upgraded.output
    summary = json.loads(upgraded.stdout.strip().splitlines()[-1])
    assert (summary["updated"], summary["unchanged"]) == (1, 1)
    again = json.loads(cli(*encode).stdout.strip().splitlines()[-1])
    assert (again["updated"], again["unchanged"]) == (0, 2)


def test_max_length_is_refused_for_an_image_model(cli, colpali, tmp_path):
    """Its processor prepares pages and queries whole: --max-length 8 was recorded in the manifest and the settings
    fingerprint (a cron re-run adding it re-encoded everything) while every row kept its tokens. Exit 2, either kind,
    before anything is encoded."""
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"id": "q1", "text": "quarterly revenue chart for the north"}])
    for kind, inputs in (("document", SAMPLE_IMAGES), ("query", queries)):
        out = tmp_path / kind
        result = cli("encode", inputs, "--model", colpali, "-o", out, "--kind", kind, "--max-length", 8)
        assert result.exit_code == 2, result.output
        assert "--max-length 8: ColPaliForRetrieval is an image model family" in result.stderr
        assert not (out / "manifest.json").exists()


def test_the_library_refuses_max_length_for_an_image_model_too(colpali, tmp_path):
    from tokembed.embedder import Embedder
    from tokembed.encode import EncodeJob, encode_corpus
    from tokembed.errors import UsageError
    from tokembed.settings import EncodeFlags

    job = EncodeJob([SAMPLE_IMAGES], tmp_path / "index", model=colpali, flags=EncodeFlags(max_length=8), devices="cpu")
    with pytest.raises(UsageError, match="--max-length 8: ColPaliForRetrieval is an image model family"):
        encode_corpus(job)
    assert not (tmp_path / "index" / "manifest.json").exists()
    with pytest.raises(UsageError, match="--max-length 8: ColPaliForRetrieval"):
        Embedder.load(str(colpali), EncodeFlags(kind="query", max_length=8))


def test_a_query_index_an_earlier_release_recorded_a_max_length_in_still_loads(cli, colpali, tmp_path):
    """The length such an index's manifest records cut nothing: its queries are encoded without it, not refused."""
    from tokembed.embedder import Embedder

    queries = write_jsonl(tmp_path / "queries.jsonl", [{"id": "q1", "text": "boarding pass gate"}])
    out = tmp_path / "index"
    assert cli("encode", queries, "--model", colpali, "-o", out, "--kind", "query").exit_code == 0
    data = manifest(out)
    data["flags"]["max_length"] = 8
    embedder = Embedder.for_index(data, kind="query", model=str(colpali))
    assert embedder.settings.max_length == manifest(out)["settings"]["max_length"]
