"""A page the model's processor refuses (Qwen-VL families' ``smart_resize`` takes no aspect ratio past 200: a
2000x3 sliver) is a bad row under ``--on-error`` on every engine (skipped and recorded, or exit 3 naming the file
and the reason), not a traceback (local engine, exit 1) or a device error (Ray, exit 9)."""

from __future__ import annotations

import pytest
from PIL import Image

from helpers import manifest, read_index
from test_ray_engine import cluster  # noqa: F401 - its one-node Ray cluster fixture (the Ray test below)

SAMPLE_PAGE = __import__("conftest").SAMPLE_DATA / "images" / "02-sales-table.png"
BAD_INPUT = 3


@pytest.fixture(scope="module")
def colqwen2(tmp_path_factory):
    from vision_checkpoints import build_colqwen2

    return build_colqwen2(tmp_path_factory.mktemp("vision") / "colqwen2")


@pytest.fixture
def pages(tmp_path):
    """A real page, a 2000x3 sliver the processor refuses, and a 1000x5 strip (ratio 200) it takes."""
    folder = tmp_path / "pages"
    folder.mkdir()
    (folder / "page.png").write_bytes(SAMPLE_PAGE.read_bytes())
    Image.new("RGB", (2000, 3), "white").save(folder / "sliver.png")
    Image.new("RGB", (1000, 5), "gray").save(folder / "strip.png")
    return folder


REASON = "an image of 2000x3 pixels: the ColQwen2ForRetrieval processor refuses it (absolute aspect ratio must be smaller than 200"


def test_a_refused_page_fails_naming_the_file_and_creates_no_index(cli, colqwen2, pages, tmp_path):
    out = tmp_path / "index"
    result = cli("encode", pages, "--model", colqwen2, "-o", out)
    assert result.exit_code == BAD_INPUT, result.output
    assert f"sliver.png (id 'sliver.png'): {REASON}" in result.stderr and "Traceback" not in result.output
    assert not out.exists()


def test_a_refused_page_is_skipped_and_recorded(cli, colqwen2, pages, tmp_path):
    out = tmp_path / "index"
    result = cli("encode", pages, "--model", colqwen2, "-o", out, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert sorted(read_index(out)) == ["page.png", "strip.png"]
    (skipped,) = manifest(out)["skipped"]
    assert skipped["id"] == "sliver.png" and skipped["reason"].startswith(REASON)
    assert "warning: skipped" in result.stderr and "sliver.png (id 'sliver.png'): an image of 2000x3" in result.stderr


def test_the_encoder_itself_refuses_it_as_bad_input(colqwen2):
    """Where the processor runs (a worker, a Ray actor, ``Embedder.embed``): a bad input, not a ValueError."""
    from tokembed.embedder import Embedder
    from tokembed.errors import BadInputError
    from tokembed.settings import EncodeFlags

    encoder = Embedder.load(str(colqwen2), EncodeFlags(), "cpu").encoder
    sliver = Image.new("RGB", (2000, 3), "white")
    with pytest.raises(BadInputError, match="2000x3 pixels: the ColQwen2ForRetrieval processor refuses it"):
        encoder.tokenize([sliver])
    assert encoder.input_problem(sliver).startswith(REASON)
    assert encoder.input_problem(Image.new("RGB", (1000, 5))) is None
    assert encoder.input_problem(Image.new("RGB", (64, 64))) is None


@pytest.mark.slow
def test_the_worker_pool_skips_it_as_the_local_engine_does(cli, colqwen2, pages, tmp_path):
    local, pool = tmp_path / "local", tmp_path / "pool"
    assert cli("encode", pages, "--model", colqwen2, "-o", local, "--on-error", "skip", "--devices", "cpu").exit_code == 0
    result = cli("encode", pages, "--model", colqwen2, "-o", pool, "--on-error", "skip", "--devices", "cpu:2")
    assert result.exit_code == 0, result.output
    assert manifest(pool)["skipped"] == manifest(local)["skipped"]
    assert read_index(pool).keys() == read_index(local).keys()


@pytest.mark.ray
@pytest.mark.slow
def test_the_ray_engine_skips_it_or_fails_with_exit_3(colqwen2, pages, tmp_path, cluster):
    from test_ray_engine import ray_encode

    failed = ray_encode(pages, tmp_path / "failed", cluster, "--devices", "cpu", model=colqwen2)
    assert failed.returncode == BAD_INPUT, failed.stderr
    assert f"sliver.png (id 'sliver.png'): {REASON}" in failed.stderr
    skipped = ray_encode(pages, tmp_path / "index", cluster, "--devices", "cpu", "--on-error", "skip", model=colqwen2)
    assert skipped.returncode == 0, skipped.stderr
    assert [entry["id"] for entry in manifest(tmp_path / "index")["skipped"]] == ["sliver.png"]


# -- queries holding the processor's image / video placeholder ---------------------------------------------------
# transformers' processors raise "Found 1 <image> tokens in the text but no images were passed": a traceback (exit 1)
# in score and encode --kind query. A processor that takes the placeholder as text keeps encoding it.

PLACEHOLDER_QUERIES = {
    "colpali": "see <image> here",
    "colqwen2": "see <|image_pad|> here",
    "colmodernvbert": "see <image> here",
    "engine-ColQwen2": "see <|video_pad|> here",
    "engine-ColIdefics3": "see <image> here",
}


def _build(name, folder):
    import colpali_engine_checkpoints
    import vision_checkpoints

    if name.startswith("engine-"):
        return colpali_engine_checkpoints.ENGINE_BUILDERS[name.removeprefix("engine-")](folder)
    return vision_checkpoints.VISION_BUILDERS[name](folder)


@pytest.mark.parametrize("name", sorted(PLACEHOLDER_QUERIES))
def test_a_query_holding_an_image_placeholder_is_bad_input(name, tmp_path):
    from tokembed.embedder import Embedder
    from tokembed.errors import BadInputError
    from tokembed.settings import EncodeFlags

    encoder = Embedder.load(str(_build(name, tmp_path / name)), EncodeFlags(kind="query"), "cpu").encoder
    query = PLACEHOLDER_QUERIES[name]
    placeholder = query.split()[1]
    assert f"a query holding {placeholder!r}" in encoder.input_problem(query)
    assert encoder.input_problem("see the image here") is None
    with pytest.raises(BadInputError, match="image/video placeholder: the processor refuses it"):
        encoder.tokenize([query])


def test_a_processor_that_takes_the_placeholder_as_text_still_encodes_it(tmp_path):
    """colpali-engine's ColPali (PaliGemma's processor) tokenizes ``<image>`` in a query: unchanged."""
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    encoder = Embedder.load(str(_build("engine-ColPali", tmp_path / "colpali")), EncodeFlags(kind="query"), "cpu").encoder
    assert encoder.input_problem("see <image> here") is None
    assert len(encoder.tokenize(["see <image> here"])[0].ids) > 0


@pytest.fixture
def queries(tmp_path):
    import json

    file = tmp_path / "queries.jsonl"
    rows = [{"id": "good", "text": "invoice total"}, {"id": "bad", "text": "a <|image_pad|> b"}]
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return file


def test_encode_kind_query_makes_it_a_bad_row(cli, colqwen2, queries, tmp_path):
    import numpy as np

    reason = "a query holding '<|image_pad|>', the ColQwen2ForRetrieval processor's image/video placeholder"
    failed = cli("encode", queries, "--kind", "query", "--model", colqwen2, "-o", tmp_path / "failed")
    assert failed.exit_code == BAD_INPUT, failed.output
    assert f"row 1 (id 'bad'): {reason}" in failed.stderr and "Traceback" not in failed.output
    out = tmp_path / "index"
    skipped = cli("encode", queries, "--kind", "query", "--model", colqwen2, "-o", out, "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.output
    (entry,) = manifest(out)["skipped"]
    assert entry["id"] == "bad" and entry["reason"].startswith(reason)
    alone = tmp_path / "alone"
    queries.write_text('{"id": "good", "text": "invoice total"}\n')
    assert cli("encode", queries, "--kind", "query", "--model", colqwen2, "-o", alone).exit_code == 0
    np.testing.assert_array_equal(read_index(out)["good"][0], read_index(alone)["good"][0])


def test_score_refuses_it_naming_the_query(cli, colqwen2, pages, tmp_path):
    out = tmp_path / "index"
    assert cli("encode", pages, "--model", colqwen2, "-o", out, "--on-error", "skip").exit_code == 0
    result = cli("score", out, "--query", "invoice total", "--query", "see <|image_pad|> here")
    assert result.exit_code == BAD_INPUT, result.output
    assert "query 'q2': a query holding '<|image_pad|>'" in result.stderr and "Traceback" not in result.output
    assert cli("score", out, "--query", "invoice total").exit_code == 0
