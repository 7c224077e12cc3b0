"""Refusals found only when an ordinary-shaped page or query is processed are bad rows too, found where rows are
planned (``VisionEncoder.input_problem``): ``--on-error skip`` records them and the run goes on, ``fail`` exits 3
naming the file or query id. Before, Nemotron's ``p_max_length``, a Qwen-VL image processor with ``do_resize``
false, and a query longer than the model's positions surfaced while tokenizing: exit 3 naming neither file nor id,
whatever ``--on-error`` said."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import manifest, read_index

BAD_INPUT = 3


def _noise(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 1000 + height)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def _folder(path, sizes: dict[str, tuple[int, int]]):
    path.mkdir()
    for name, size in sizes.items():
        _noise(*size).save(path / name)
    return path


def _edited(source, target, file: str, **changes):
    shutil.copytree(source, target)
    settings = json.loads((target / file).read_text())
    (target / file).write_text(json.dumps({**settings, **changes}))
    return target


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """Nemotron with p_max_length 60 (a 64x64 page fits, a 200x150 one does not) and Tomoro with do_resize false
    (sides must be multiples of 32 pixels)."""
    import qwen3_vl_checkpoints

    root = tmp_path_factory.mktemp("qwen3")
    nemotron = qwen3_vl_checkpoints.build_nemotron(root / "nemotron")
    tomoro = qwen3_vl_checkpoints.build_tomoro(root / "tomoro")
    return {
        "nemotron": _edited(nemotron, root / "nemotron-pmax", "processor_config.json", p_max_length=60, reserve_tokens_for_images=10),
        "tomoro": _edited(tomoro, root / "tomoro-no-resize", "preprocessor_config.json", do_resize=False),
    }


CASES = {  # checkpoint, the page it refuses, the reason
    "nemotron": ((200, 150), "an image of 200x150 pixels: the Qwen3VLNemotronEmbedModel processor refuses it (the image "
                             "takes 12 tokens: more than the model's p_max_length 60 allows with its reserve (10))"),
    "tomoro": ((50, 40), "an image of 50x40 pixels: the ColQwen3 processor refuses it (do_resize is false and its sides "
                         "are not multiples of 32 pixels"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_page_refused_while_processed_is_skipped_or_fails_naming_the_file(name, qwen3, cli, tmp_path):
    size, reason = CASES[name]
    pages = _folder(tmp_path / "pages", {"fits.png": (64, 64), "refused.png": size})
    out = tmp_path / "index"
    skipped = cli("encode", pages, "--model", qwen3[name], "-o", out, "--on-error", "skip", "--log-format", "json")
    assert skipped.exit_code == 0, skipped.output
    assert list(read_index(out)) == ["fits.png"]
    (entry,) = manifest(out)["skipped"]
    assert entry["id"] == "refused.png" and entry["reason"].startswith(reason)
    assert json.loads(skipped.stdout)["skipped_rows"][0]["id"] == "refused.png"
    failed = cli("encode", pages, "--model", qwen3[name], "-o", tmp_path / "failed")
    assert failed.exit_code == BAD_INPUT, failed.output
    assert f"refused.png (id 'refused.png'): {reason}" in failed.stderr and "Traceback" not in failed.output
    assert not (tmp_path / "failed").exists()


SIZES = [(32, 32), (64, 64), (64, 32), (96, 64), (128, 96), (50, 40), (48, 64), (200, 150), (640, 480), (16, 16), (2000, 9)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_refusal_told_from_the_size_is_the_processors_own(name, qwen3):
    """``input_problem`` does not process the pixels: it must refuse exactly the pages that processing refuses."""
    from tokembed.embedder import Embedder
    from tokembed.errors import BadInputError
    from tokembed.settings import EncodeFlags

    encoder = Embedder.load(str(qwen3[name]), EncodeFlags(), "cpu").encoder
    verdicts = set()
    for size in SIZES:
        image = _noise(*size)
        try:
            encoder.tokenize([image])
            processed = None
        except BadInputError as exc:
            processed = str(exc)
        told = encoder.input_problem(image)
        assert (told is None) == (processed is None), (size, told, processed)
        assert told is None or told.startswith(f"an image of {size[0]}x{size[1]} pixels: the "), told
        verdicts.add(processed is None)
    assert verdicts == {True, False}


@pytest.fixture(scope="module")
def colpali(tmp_path_factory):
    from vision_checkpoints import build_colpali

    return build_colpali(tmp_path_factory.mktemp("colpali") / "colpali")


@pytest.fixture
def queries(tmp_path):
    file = tmp_path / "queries.jsonl"
    rows = [{"id": "short", "text": "invoice total"}, {"id": "long", "text": " ".join(["word"] * 1500)}]
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return file


LONG = "a query of 4520 tokens: more than this model's 1024 positions"


def test_a_query_longer_than_the_model_is_a_bad_row(cli, colpali, queries, tmp_path):
    out = tmp_path / "index"
    skipped = cli("encode", queries, "--kind", "query", "--model", colpali, "-o", out, "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.output
    assert list(read_index(out)) == ["short"]
    (entry,) = manifest(out)["skipped"]
    assert entry["id"] == "long" and entry["reason"].startswith(LONG)
    failed = cli("encode", queries, "--kind", "query", "--model", colpali, "-o", tmp_path / "failed")
    assert failed.exit_code == BAD_INPUT, failed.output
    assert f"row 1 (id 'long'): {LONG}" in failed.stderr


def test_score_names_the_query_longer_than_the_model(cli, colpali, queries, tmp_path):
    out = tmp_path / "index"
    assert cli("encode", _folder(tmp_path / "pages", {"page.png": (64, 64)}), "--model", colpali, "-o", out).exit_code == 0
    result = cli("score", queries, out)
    assert result.exit_code == BAD_INPUT, result.output
    assert f"query 'long': {LONG}" in result.stderr and "Traceback" not in result.output
