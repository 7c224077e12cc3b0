"""ColModernVBert merged (``ModernVBERT/colmodernvbert-merged``) loads in both weight namings.

The tiny transformers-named checkpoint (``vision_checkpoints.build_colmodernvbert``) is re-saved under the
original colpali-engine / ModernVBERT names (``model.text_model.*``, ``model.vision_model.vision_model.*``,
``model.connector.modality_projection.*``, ``model.custom_text_proj.*`` or a root ``custom_text_proj.*``):
both give identical documents (images) and queries through the CLI; a tensor no rename places is exit 4.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import vision_checkpoints
from helpers import read_index, write_parquet

QUERIES = ["where is the invoice total", "hello"]


def original_name(name: str, projection: str) -> str:
    """transformers name -> the original checkpoint's (SigLIP keeps its inner ``vision_model.`` there)."""
    name = re.sub(r"^vlm\.vision_model\.", "model.vision_model.vision_model.", name)
    name = re.sub(r"^vlm\.", "model.", name)
    return re.sub(r"^embedding_proj_layer\.", projection, name)


def resave(source, target, rename) -> None:
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    tensors = load_file(str(source / "model.safetensors"))
    save_file({rename(k): v for k, v in tensors.items()}, str(target / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module")
def hf_named(tmp_path_factory):
    return vision_checkpoints.build_colmodernvbert(tmp_path_factory.mktemp("cmvb") / "transformers-names")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cmvb-images")
    rng = np.random.default_rng(3)
    for i, (w, h) in enumerate([(50, 40), (30, 70), (64, 64)]):
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / f"page{i}.png")
    return folder


def encode_both_kinds(cli, model, images, out):
    result = cli("encode", images, "-o", out / "docs", "--model", model, "--store-dtype", "float32", "--quiet")
    assert result.exit_code == 0, result.output
    queries = write_parquet(out / "queries.parquet", [{"id": f"q{i}", "text": q} for i, q in enumerate(QUERIES)])
    result = cli("encode", queries, "-o", out / "queries", "--model", model, "--kind", "query",
                 "--store-dtype", "float32", "--quiet")
    assert result.exit_code == 0, result.output
    return read_index(out / "docs"), read_index(out / "queries")


@pytest.mark.parametrize("projection", ["model.custom_text_proj.", "custom_text_proj."])
def test_original_names_give_identical_vectors(cli, hf_named, images, tmp_path, projection):
    original = tmp_path / "original-names"
    resave(hf_named, original, lambda name: original_name(name, projection))
    from safetensors import safe_open

    with safe_open(str(original / "model.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert not any(n.startswith(("vlm.", "embedding_proj_layer")) for n in names)
    assert any(n.startswith("model.vision_model.vision_model.") for n in names) and projection + "bias" in names

    want = encode_both_kinds(cli, hf_named, images, tmp_path / "a")
    got = encode_both_kinds(cli, original, images, tmp_path / "b")
    for expected, actual in zip(want, got):
        assert list(expected) == list(actual) and len(expected) >= 2
        for key, (vectors, ids) in expected.items():
            assert ids.tolist() == actual[key][1].tolist()
            assert np.array_equal(vectors, actual[key][0]), key


def test_a_tensor_no_rename_places_is_exit_4(cli, hf_named, images, tmp_path):
    broken = tmp_path / "stray-name"
    stray = "model.connector.modality_projection.weight"
    resave(hf_named, broken,
           lambda n: original_name(n, "model.custom_text_proj.").replace(stray, "model.adapter.proj.weight"))
    out = tmp_path / "index"
    result = cli("encode", images, "-o", out, "--model", broken, "--quiet")
    assert result.exit_code == 4, result.output
    assert "model.adapter.proj.weight" in result.stderr and "model.safetensors" in result.stderr
    assert "vlm.connector.modality_projection.weight" in result.stderr  # the parameter left without weights
    assert not (out / "manifest.json").exists()


def test_detection_is_unchanged(hf_named, tmp_path):
    from tokembed.models import detect

    original = tmp_path / "original"
    resave(hf_named, original, lambda name: original_name(name, "model.custom_text_proj."))
    assert json.loads((original / "config.json").read_text())["architectures"] == ["ColModernVBertForRetrieval"]
    assert detect(original) == detect(hf_named) == "ColModernVBertForRetrieval"
