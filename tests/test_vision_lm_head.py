"""A -hf ColQwen2 / ColPali checkpoint as transformers 4.x saved an untied base: its ``vlm`` was an
``AutoModelForImageTextToText``, so the folder carries the language-model head (``vlm.lm_head.weight``, ColPali's 4.x
name ``vlm.language_model.lm_head.weight``). transformers 5 loads it to the parameters of the folder without the
head; tokembed loads it to the same vectors (a head under a backbone is ignorable, as ``lm_head.*`` at the root)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import vision_checkpoints
from test_vision_module_tree import document_vectors
from tokembed.models import LoadOptions, load_model


@pytest.mark.parametrize("build, head, embeddings", [
    (vision_checkpoints.build_colqwen2, "vlm.lm_head.weight", "vlm.language_model.embed_tokens.weight"),
    (vision_checkpoints.build_colpali, "vlm.language_model.lm_head.weight",
     "vlm.language_model.model.embed_tokens.weight"),
])
def test_the_vlms_head_of_an_untied_base_is_ignored(tmp_path, build, head, embeddings):
    plain = build(tmp_path / "plain")
    with_head = shutil.copytree(plain, tmp_path / "with_head")
    state = load_file(str(plain / "model.safetensors"))
    assert head not in state
    state[head] = torch.randn_like(state[embeddings])
    save_file(state, str(with_head / "model.safetensors"), metadata={"format": "pt"})
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    vectors = [document_vectors(load_model(folder, LoadOptions()), image) for folder in (plain, with_head)]
    np.testing.assert_array_equal(vectors[0], vectors[1])
