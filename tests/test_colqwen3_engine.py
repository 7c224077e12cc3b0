"""colpali-engine 0.3.18's own ``ColQwen3`` layout (architectures ColQwen3, model_type qwen3_vl), loaded natively.

The reference is composed here from transformers' building blocks, independently of tokembed's code: a
``Qwen3VLModel`` holding the checkpoint's tensors (``model.`` prefix stripped by hand, loaded strictly) + a ``Linear``
holding ``custom_text_proj``; ``ColQwen3Processor``'s prompts written out, the placeholder expanded with the PIL image
processor's grid; vectors = normalize(proj(last hidden state)) x mask (``ColQwen3.forward``). A bonus test runs
colpali-engine 0.3.18's own ``ColQwen3`` module where its source is at hand.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qwen3_vl_checkpoints
from helpers import assert_score_equals_brute_force, manifest, read_index
from helpers import encode_chunk as encode
from tokembed.errors import LayoutMismatchError
from tokembed.models import LoadOptions, describe_families, detect, load_model

TOLERANCE = 1e-5
EOT = "<|endoftext|>"
IMAGE_PROMPT = f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>{EOT}"
SIZES = [(50, 40), (30, 100), (64, 64), (90, 20)]  # (width, height): 4..16 image tokens, several lengths
QUERIES = ["what is the capital of france?", "hello", ""]


def noise_images() -> list[Image.Image]:
    rng = np.random.default_rng(5)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for w, h in SIZES]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return qwen3_vl_checkpoints.build_colqwen3_engine(tmp_path_factory.mktemp("colqwen3_engine") / "ckpt")


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint, LoadOptions())


class Reference:
    """colpali-engine's ColQwen3 semantics from transformers' blocks (see the module doc)."""

    def __init__(self, path: Path) -> None:
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, Qwen3VLConfig, Qwen3VLModel
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        tensors = {re.sub(r"^model\.", "", name): t for name, t in load_file(path / "model.safetensors").items()}
        weight, bias = tensors.pop("custom_text_proj.weight"), tensors.pop("custom_text_proj.bias")
        self.backbone = Qwen3VLModel(Qwen3VLConfig.from_pretrained(path)).eval()
        self.backbone.load_state_dict(tensors, strict=True)
        self.proj = torch.nn.Linear(weight.shape[1], weight.shape[0])
        self.proj.load_state_dict({"weight": weight, "bias": bias})
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        settings = json.loads((path / "processor_config.json").read_text())["image_processor"]
        self.images = Qwen2VLImageProcessorPil.from_dict(settings)
        self.image_pad = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    @torch.inference_mode()
    def forward(self, text: str, **vision) -> tuple[list[int], np.ndarray]:
        ids = torch.tensor([self.tokenizer(text)["input_ids"]])
        mask = torch.ones_like(ids)
        types = (ids == self.image_pad).long()
        hidden = self.backbone(input_ids=ids, attention_mask=mask, mm_token_type_ids=types, **vision).last_hidden_state
        proj = self.proj(hidden)
        return ids[0].tolist(), (proj / proj.norm(dim=-1, keepdim=True) * mask.unsqueeze(-1))[0].numpy()

    def image(self, image: Image.Image):
        out = self.images(images=[image.convert("RGB")], return_tensors="pt")
        grid = out["image_grid_thw"]
        text = IMAGE_PROMPT.replace("<|image_pad|>", "<|image_pad|>" * (int(grid.prod()) // 4))
        return self.forward(text, pixel_values=out["pixel_values"], image_grid_thw=grid)

    def query(self, query: str):
        return self.forward(query + EOT * 10)


@pytest.fixture(scope="module")
def reference(checkpoint) -> Reference:
    return Reference(checkpoint)




def assert_same(results, expected) -> None:
    for (vectors, ids), (want_ids, want) in zip(results, expected):
        assert ids.tolist() == want_ids
        assert vectors.shape == want.shape
        assert np.abs(vectors - want).max() <= TOLERANCE


def test_detected_natively_and_listed_apart_from_tomoro(checkpoint, model, tmp_path):
    assert detect(checkpoint) == "ColQwen3Engine" == model.family  # no --trust-remote-code, no auto_map
    assert (model.architecture, model.embedding_dim) == ("ColQwen3", qwen3_vl_checkpoints.COLQWEN3_ENGINE_DIM)
    tomoro = qwen3_vl_checkpoints.build_tomoro(tmp_path / "tomoro")
    assert detect(tomoro) == "ColQwen3"  # Tomoro's model_type keeps its own family
    info = {f.key: f for f in describe_families()}["ColQwen3Engine"]
    assert "colpali-engine 0.3.18 ColQwen3" in info.reference and "qwen3_vl" in info.detected_by


def test_image_documents_match_the_reference(model, reference):
    images = noise_images()
    results = encode(model, "document", images, budget=120)  # several right-padded batches of mixed lengths
    assert_same(results, [reference.image(image) for image in images])
    assert len({int((ids == reference.image_pad).sum()) for _, ids in results}) > 1  # aspect ratio sets the count
    for vectors, _ in results:
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-5)


def test_queries_match_the_reference(model, reference):
    results = encode(model, "query", QUERIES, budget=30)
    assert_same(results, [reference.query(query) for query in QUERIES])
    eot = reference.tokenizer.convert_tokens_to_ids(EOT)
    assert results[QUERIES.index("")][1].tolist() == [eot] * 10  # no prefix, no newline: the augmentation only
    raw = encode(model, "query", QUERIES[:1], normalize=False)  # --no-normalize: custom_text_proj's output, bias in
    norms = np.linalg.norm(raw[0][0], axis=-1, keepdims=True)
    assert np.abs(norms - 1).max() > 0.01 and np.abs(raw[0][0] / norms - results[0][0]).max() <= TOLERANCE


def _edit_weights(path: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def _escaped(tensors: dict) -> None:
    """The backbone's names with the regex escape a reversed key mapping leaves in (``model\\.visual.…``)."""
    for name in [name for name in tensors if re.match(r"model\.(visual|language_model)\.", name)]:
        tensors[name.replace("model.", "model\\.", 1)] = tensors.pop(name)


def _unprefixed_with_head(tensors: dict) -> None:
    for name in list(tensors):
        tensors[name[len("model."):]] = tensors.pop(name)
    tensors["lm_head.weight"] = torch.zeros(4, qwen3_vl_checkpoints.HIDDEN)  # a language-model head: ignorable


@pytest.mark.parametrize("edit", [_unprefixed_with_head, _escaped], ids=["unprefixed-with-lm-head", "escaped"])
def test_other_spellings_of_the_tensor_names_load_the_same(model, checkpoint, tmp_path, edit):
    path = shutil.copytree(checkpoint, tmp_path / "ckpt")
    _edit_weights(path, edit)
    other = load_model(path)
    images = noise_images()[:2]
    for kind, inputs in (("document", images), ("query", QUERIES[:2])):
        for (a, ids_a), (b, ids_b) in zip(encode(model, kind, inputs), encode(other, kind, inputs)):
            assert ids_a.tolist() == ids_b.tolist() and np.array_equal(a, b)


def _without_bias(tensors: dict) -> None:
    tensors.pop("model.custom_text_proj.bias")


def _narrow_projection(tensors: dict) -> None:
    tensors["model.custom_text_proj.weight"] = tensors["model.custom_text_proj.weight"][:128].clone()
    tensors["model.custom_text_proj.bias"] = tensors["model.custom_text_proj.bias"][:128].clone()


@pytest.mark.parametrize(
    "edit, message",
    [
        (_without_bias, r"not in the checkpoint .*custom_text_proj\.bias"),
        (lambda t: t.__setitem__("pooler.dense.weight", torch.zeros(2, 2)), r"not used: pooler\.dense\.weight"),
        (_narrow_projection, r"wrong shape: model\.custom_text_proj\.bias"),  # colpali-engine builds 320, always
        (lambda t: t.__setitem__("visual.merger.norm.weight", t["model.visual.merger.norm.weight"].clone() + 1), "both loaded as"),
    ],
    ids=["missing-projection-bias", "extra-unknown-tensor", "128-wide-projection", "both-spellings"],
)
def test_a_checkpoint_that_does_not_match_is_refused_naming_the_family(checkpoint, tmp_path, edit, message):
    from tokembed.errors import ModelError

    path = shutil.copytree(checkpoint, tmp_path / "ckpt")
    _edit_weights(path, edit)
    with pytest.raises(ModelError) as error:
        load_model(path)
    assert re.search(message, str(error.value)), str(error.value)
    if isinstance(error.value, LayoutMismatchError):
        assert "family ColQwen3Engine" in error.value.hint


def test_encode_then_score_equals_brute_force_maxsim(cli, checkpoint, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for number, image in enumerate(noise_images()):
        image.save(corpus / f"page{number}.png")
    out = tmp_path / "index"
    result = cli("encode", corpus, "--model", checkpoint, "-o", out, "--store-dtype", "float32", "--quiet")
    assert result.exit_code == 0, result.output
    assert manifest(out)["model"]["family"] == "ColQwen3Engine"
    assert sorted(read_index(out)) == [f"page{n}.png" for n in range(len(SIZES))]
    assert_score_equals_brute_force(cli, out, ["capital of france", "hello"])
    listed = cli("models")
    assert listed.exit_code == 0 and "ColQwen3Engine" in listed.output


def test_a_lora_adapter_equals_peft_unmerged_forward(checkpoint, model, tmp_path):
    """An adapter saved by peft over the module (``language_model.*`` names) and the same tensors under
    ``model.language_model.*`` (the checkpoint's saved spelling) both give peft's own unmerged forward."""
    from peft import PeftModel

    from colpali_engine_checkpoints import build_adapter, rename_adapter_tensors

    regex = r"(.*(language_model).*(q_proj|v_proj)$|.*(custom_text_proj).*$)"
    adapter = build_adapter(copy.deepcopy(model.model), tmp_path / "lora", str(checkpoint), target_modules=regex)
    prefixed = shutil.copytree(adapter, tmp_path / "lora-prefixed")
    rename_adapter_tensors(prefixed, {r"^language_model\.": "model.language_model."})
    peft_model = PeftModel.from_pretrained(load_model(checkpoint).model, str(adapter)).eval()
    image, query = noise_images()[0], "total amount due"
    with torch.no_grad():
        docs = model.processor.process_images([image])
        want = peft_model(**docs), peft_model(**model.processor.process_queries([query]))
        base = model.model(**docs)
        for folder in (adapter, prefixed):
            loaded = load_model(folder)
            got = loaded.model(**docs), loaded.model(**loaded.processor.process_queries([query]))
            assert all((a - b).abs().max() <= 1e-4 for a, b in zip(got, want))
            assert not any("lora" in name for name, _ in loaded.model.named_parameters())  # merged
    assert (want[0] - base).abs().max() > 1e-2  # the adapter changes the vectors


# -- bonus: colpali-engine 0.3.18's own ColQwen3 module (its processor needs torchvision: the prompts above) ------
_COLPALI_ENGINE_SCRIPT = r'''
import importlib.util, sys
import numpy as np, torch
spec = importlib.util.spec_from_file_location("modeling_colqwen3", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
model = module.ColQwen3.from_pretrained(sys.argv[2]).eval()
inputs = dict(np.load(sys.argv[3]))
with torch.no_grad():
    out = {key: model(**{k[len(key) + 1:]: torch.from_numpy(v) for k, v in inputs.items() if k.startswith(key + ":")})[0].numpy()
           for key in {name.split(":")[0] for name in inputs}}
np.savez(sys.argv[4], **out)
'''


@pytest.mark.slow
def test_matches_colpali_engine_itself(model, checkpoint, tmp_path):
    """colpali-engine 0.3.18's ``modeling_colqwen3.py`` (its ``ColQwen3.from_pretrained``, key mapping included), read
    from the unpacked wheel named in TOKEMBED_COLPALI_ENGINE_SRC (``pip install --no-deps --target DIR
    colpali-engine==0.3.18``), in a subprocess (it registers a conversion mapping for every qwen3_vl model)."""
    source = os.environ.get("TOKEMBED_COLPALI_ENGINE_SRC")
    modeling = Path(source or ".") / "colpali_engine/models/qwen3/colqwen3/modeling_colqwen3.py"
    if not source or not modeling.is_file():
        pytest.skip("set TOKEMBED_COLPALI_ENGINE_SRC to an unpacked colpali-engine 0.3.18 (see the docstring)")
    items = {f"d{i}": model.processor.process_images([image]) for i, image in enumerate(noise_images())}
    items.update({f"q{i}": model.processor.process_queries([query]) for i, query in enumerate(QUERIES)})
    arrays = {f"{key}:{name}": value.numpy() for key, batch in items.items() for name, value in batch.items()}
    np.savez(tmp_path / "inputs.npz", **arrays)
    script = tmp_path / "run.py"
    script.write_text(_COLPALI_ENGINE_SCRIPT)
    args = [sys.executable, str(script), str(modeling), str(checkpoint), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")]
    subprocess.run(args, check=True, capture_output=True, timeout=600)
    want = np.load(tmp_path / "out.npz")
    got = encode(model, "document", noise_images(), budget=120) + encode(model, "query", QUERIES, budget=30)
    for (vectors, ids), key in zip(got, list(items)):
        assert ids.tolist() == items[key]["input_ids"][0].tolist()
        assert np.abs(vectors - want[key]).max() <= TOLERANCE
