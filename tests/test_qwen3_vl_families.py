"""Tomoro ColQwen3, Ops-ColQwen3 and Nemotron ColEmbed, loaded natively, against references composed here from
transformers' building blocks, independently of tokembed's code.

The reference of each family: the published prompts written out literally below, transformers' ``Qwen3VLProcessor``
(without its video part, which needs torchvision) for the token expansion, ``Qwen3VLModel`` loaded with the
checkpoint's tensors renamed by hand, and the family's head (Tomoro: projection with bias, normalized with an eps
clamp, x mask; Ops: projection, first ``dims`` dims, normalized, x mask; Nemotron: eager attention with an explicit
all-visible 4-D mask and the last layer's output read before the final norm, x mask, L2).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qwen3_vl_checkpoints
from helpers import assert_score_equals_brute_force, manifest
from tokembed.engine.batching import plan_batches
from tokembed.errors import UnsupportedModelError
from tokembed.models import describe_families, detect, load_model
from tokembed.settings import EncodeFlags, resolve

TOLERANCE = 1e-5
KEYS = {"tomoro": "ColQwen3", "ops": "OpsColQwen3Model", "nemotron": "Qwen3VLNemotronEmbedModel"}
EOT = "<|endoftext|>"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
# The families' published prompts (see tokembed/models/colqwen3.py and nemotron.py for their sources).
DOCUMENT_PROMPTS = {
    "tomoro": f"<|im_start|>user\n{IMAGE}Describe the image.<|im_end|>{EOT}",
    "ops": f"<|im_start|>user\n{IMAGE}Describe the image.<|im_end|><|im_start|>assistant\n{EOT}",
    "nemotron": f"<|im_start|>user\n{IMAGE}passage: <|im_end|>\n<|im_start|>assistant\n",
}
QUERY_PROMPTS = {
    "tomoro": lambda q: q.strip() + EOT * 10,
    "ops": lambda q: "Query: " + q + EOT * 10,
    "nemotron": lambda q: f"<|im_start|>user\nQuery: query: {q}<|im_end|>\n<|im_start|>assistant\n",
}
SIZES = [(50, 40), (30, 100), (64, 64), (90, 20)]  # (width, height): 4..16 image tokens, several lengths
QUERIES = ["what is the capital of france?", " padded query ", ""]


def noise_images() -> list[Image.Image]:
    rng = np.random.default_rng(11)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for w, h in SIZES]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3vl")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = qwen3_vl_checkpoints.QWEN3_VL_BUILDERS[name](root / name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def loaded(built):
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(built(name))
        return cache[name]

    return get


# -- the reference, from transformers' parts -------------------------------------------------------------------


class Reference:
    def __init__(self, name: str, path: Path) -> None:
        from safetensors.torch import load_file
        from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLConfig, Qwen3VLModel, Qwen3VLProcessor

        self.name = name
        raw = json.loads((path / "config.json").read_text())
        ids = {k: raw[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
        config = Qwen3VLConfig(text_config=raw["text_config"], vision_config=raw["vision_config"], **ids)
        if name == "nemotron":
            config.text_config._attn_implementation = "eager"
        self.model = Qwen3VLModel(config).eval()
        state = load_file(path / "model.safetensors")
        prefix = {"tomoro": "vlm.model.", "ops": "", "nemotron": "model."}[name]
        backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix + "visual.") or k.startswith(prefix + "language_model.")}
        self.model.load_state_dict(backbone, strict=True)
        projection = {"tomoro": "embedding_proj_layer", "ops": "custom_text_proj", "nemotron": None}[name]
        self.weight = state[f"{projection}.weight"] if projection else None
        self.bias = state[f"{projection}.bias"] if projection else None
        self.dims = raw.get("dims")

        class ImageOnly(Qwen3VLProcessor):
            attributes = ["image_processor", "tokenizer"]

            def __init__(self, image_processor=None, tokenizer=None):
                super().__init__(image_processor, tokenizer, None)

        size = None
        if name == "tomoro":  # ColQwen3Processor.from_pretrained(max_num_visual_tokens=1280)
            size = {"shortest_edge": 32 * 32 * 4, "longest_edge": 1280 * 32 * 32}
        image_processor = AutoImageProcessor.from_pretrained(path, backend="pil", **({"size": size} if size else {}))
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        self.processor = ImageOnly(image_processor, tokenizer)

    def process_image(self, image):
        return self.processor(text=[DOCUMENT_PROMPTS[self.name]], images=[image.convert("RGB")], return_tensors="pt")

    def process_query(self, text):
        return self.processor(text=[QUERY_PROMPTS[self.name](text)], return_tensors="pt")

    @torch.inference_mode()
    def vectors(self, batch) -> torch.Tensor:
        """[T, D] for one unpadded item."""
        mask = batch["attention_mask"]
        if self.name == "nemotron":
            hidden = self._nemotron_hidden(batch)
            return torch.nn.functional.normalize(hidden * mask[..., None], dim=-1)[0]
        keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
        hidden = self.model(**{k: batch[k] for k in keys if k in batch}).last_hidden_state
        out = torch.nn.functional.linear(hidden, self.weight, self.bias)
        if self.name == "tomoro":
            out = out / out.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(out.dtype).eps)
        else:
            out = out[..., : self.dims]
            out = out / out.norm(dim=-1, keepdim=True)
        return (out * mask[..., None])[0]

    def _nemotron_hidden(self, batch) -> torch.Tensor:
        """Bidirectional (an explicit all-zero additive 4-D mask), read before the final norm (its input)."""
        input_ids = batch["input_ids"]
        length = input_ids.shape[1]
        if "pixel_values" in batch:
            positions, _ = self.model.get_rope_index(
                input_ids, batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"]
            )
        else:
            positions = torch.arange(length).view(1, 1, -1).expand(3, 1, -1)
        captured = []
        handle = self.model.language_model.norm.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
        try:
            extra = {k: batch[k] for k in ("pixel_values", "image_grid_thw", "mm_token_type_ids") if k in batch}
            self.model(input_ids=input_ids, attention_mask=torch.zeros(1, 1, length, length), position_ids=positions, **extra)
        finally:
            handle.remove()
        return captured[-1]


@pytest.fixture(scope="module")
def reference(built):
    cache: dict = {}

    def get(name: str) -> Reference:
        if name not in cache:
            cache[name] = Reference(name, built(name))
        return cache[name]

    return get


# -- tokembed's side, as the engine runs a chunk ---------------------------------------------------------------


def encode(model, kind: str, inputs: list, budget: int = 1 << 20):
    encoder = model.make_encoder(resolve(EncodeFlags(kind=kind, store_dtype="float32"), model.colbert, model.max_length))
    prepared = encoder.tokenize(inputs)
    results: list = [None] * len(inputs)
    batches = plan_batches(np.array([len(item.ids) for item in prepared]), budget)
    for batch in batches:
        items = [prepared[row] for row in batch.rows]
        for row, result in zip(batch.rows, encoder.finish(encoder.embed(encoder.collate(items)), items)):
            results[row] = result
    return results, len(batches)


def assert_matches(results, inputs, process, ref: Reference) -> None:
    for value, (vectors, ids) in zip(inputs, results):
        batch = process(value)
        expected = ref.vectors(batch)
        assert ids.dtype == np.int32 and ids.tolist() == batch["input_ids"][0].tolist()
        assert vectors.shape == tuple(expected.shape)
        assert np.abs(vectors - expected.numpy()).max() <= TOLERANCE


@pytest.mark.parametrize("name", sorted(KEYS))
def test_detected_and_loaded_natively_without_remote_code(name, built, loaded):
    path = built(name)
    config = json.loads((path / "config.json").read_text())
    assert config["auto_map"] and not list(path.glob("*.py"))  # the code auto_map names is not even there
    assert detect(path) == KEYS[name] == loaded(name).family  # trust_remote_code is off
    assert detect(path, trust_remote_code=True) == KEYS[name]  # and the flag does not send it to remote code
    assert loaded(name).embedding_dim == {"tomoro": 16, "ops": 24, "nemotron": 32}[name]


@pytest.mark.parametrize("name", sorted(KEYS))
def test_documents_match_the_reference(name, loaded, reference):
    images = noise_images()
    alone, count = encode(loaded(name), "document", images, budget=1)
    assert count == len(images)
    ref = reference(name)
    assert_matches(alone, images, ref.process_image, ref)
    image_pad = ref.processor.image_token_id
    assert len({int((ids == image_pad).sum()) for _, ids in alone}) > 1  # the image's size sets its token count
    batched, count = encode(loaded(name), "document", images)  # right-padded batches: the same vectors
    assert count < len(images)
    for (a, ids_a), (b, ids_b) in zip(alone, batched):
        assert ids_a.tolist() == ids_b.tolist() and np.abs(a - b).max() <= TOLERANCE


@pytest.mark.parametrize("name", sorted(KEYS))
def test_queries_match_the_reference(name, loaded, reference):
    ref = reference(name)
    results, count = encode(loaded(name), "query", QUERIES)
    assert count == 1  # one padded batch
    assert_matches(results, QUERIES, ref.process_query, ref)
    for vectors, _ in results:
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["ops", "nemotron"])
def test_a_resave_under_qwen3_vl_is_still_its_family(name, built, loaded, tmp_path):
    """vLLM picks these families by their architecture name; a config re-saved with transformers' own model_type
    ("qwen3_vl", no auto_map) loads as a plain encoder unless the name decides (it used to: causal, no prompts)."""
    path = shutil.copytree(built(name), tmp_path / name)
    config = json.loads((path / "config.json").read_text())
    config.pop("auto_map")
    (path / "config.json").write_text(json.dumps({**config, "model_type": "qwen3_vl"}))
    assert detect(path) == KEYS[name]
    resaved, = encode(load_model(path), "query", QUERIES[:1])[0]
    original, = encode(loaded(name), "query", QUERIES[:1])[0]
    assert resaved[1].tolist() == original[1].tolist()
    np.testing.assert_array_equal(resaved[0], original[0])


def test_a_qwen3_vl_colqwen3_is_colpali_engines_and_other_model_types_are_refused(built, tmp_path):
    """architectures ColQwen3: model_type colqwen3 is Tomoro's, qwen3_vl colpali-engine's (a Tomoro checkpoint re-saved
    so does not fit it and says which family read it); any other model_type is refused by name."""
    from tokembed.errors import LayoutMismatchError

    path = shutil.copytree(built("tomoro"), tmp_path / "colqwen3")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "qwen3_vl"}))
    assert detect(path) == "ColQwen3Engine"
    with pytest.raises(LayoutMismatchError, match=r"not used: .*vlm\.model\.language_model") as error:
        load_model(path)
    assert "family ColQwen3Engine" in error.value.hint
    (path / "config.json").write_text(json.dumps({**config, "model_type": "qwen3_vl_moe"}))
    with pytest.raises(UnsupportedModelError, match="ColQwen3 with model_type 'qwen3_vl_moe'"):
        detect(path)


def test_nemotron_attention_is_bidirectional_and_tomoro_causal(loaded):
    def first_vector(name, query):
        (vectors, _), = encode(loaded(name), "query", [query])[0]
        return vectors[0]

    # A later token changes the first token's vector only when attention looks ahead.
    assert np.abs(first_vector("nemotron", "alpha one") - first_vector("nemotron", "alpha two")).max() > 1e-3
    assert np.abs(first_vector("tomoro", "alpha one") - first_vector("tomoro", "alpha two")).max() <= TOLERANCE


def test_ops_keeps_the_first_dims_of_its_projection(built, tmp_path):
    path = qwen3_vl_checkpoints.build_ops(tmp_path / "ops-full", dims=32)
    full, cut = load_model(path), load_model(built("ops"))
    assert (full.embedding_dim, cut.embedding_dim) == (32, 24)
    (a, _), = encode(full, "query", ["hello"])[0]
    (b, _), = encode(cut, "query", ["hello"])[0]
    expected = a[:, :24] / np.linalg.norm(a[:, :24], axis=-1, keepdims=True)  # the same projection, cut then normalized
    assert np.abs(expected - b).max() <= TOLERANCE


@pytest.mark.parametrize("name", sorted(KEYS))
def test_no_normalize_stores_the_vectors_before_normalization(name, loaded):
    model = loaded(name)
    unit, _ = encode(model, "query", QUERIES[:2])
    encoder_flags = EncodeFlags(kind="query", store_dtype="float32", normalize=False)
    encoder = model.make_encoder(resolve(encoder_flags, model.colbert, model.max_length))
    items = encoder.tokenize(QUERIES[:2])
    raw = encoder.finish(encoder.embed(encoder.collate(items)), items)
    for (u, ids), (r, raw_ids) in zip(unit, raw):
        assert ids.tolist() == raw_ids.tolist() and r.shape == u.shape
        assert np.abs(np.linalg.norm(r, axis=-1) - 1).max() > 0.01
        np.testing.assert_allclose(r / np.linalg.norm(r, axis=-1, keepdims=True), u, atol=1e-5)


def test_nemotron_queries_are_truncated_at_q_max_length(built, reference, tmp_path):
    path = tmp_path / "nemotron-short"
    shutil.copytree(built("nemotron"), path)
    settings = json.loads((path / "processor_config.json").read_text())
    (path / "processor_config.json").write_text(json.dumps({**settings, "q_max_length": 12}))
    ref = reference("nemotron")
    query = "a long query about quarterly revenue, invoices and boarding passes"
    expected = ref.processor(text=[QUERY_PROMPTS["nemotron"](query)], truncation=True, max_length=12, return_tensors="pt")
    assert len(ref.process_query(query)["input_ids"][0]) > 12
    (vectors, ids), = encode(load_model(path), "query", [query])[0]
    assert ids.tolist() == expected["input_ids"][0].tolist() and len(ids) == 12
    assert np.abs(vectors - ref.vectors(expected).numpy()).max() <= TOLERANCE


def test_families_are_listed():
    infos = {info.key: info for info in describe_families()}
    for key in KEYS.values():
        assert infos[key].modes == "vision" and "no --trust-remote-code" in infos[key].needs and infos[key].reference


# -- the CLI: refused checkpoints, and score over an index ----------------------------------------------------


def _edit_weights(source: Path, target: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    tensors = load_file(target / "model.safetensors")
    edit(tensors)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


def _image_folder(folder: Path) -> Path:
    folder.mkdir()
    for number, image in enumerate(noise_images()[:3]):
        image.save(folder / f"page{number}.png")
    return folder


@pytest.mark.parametrize(
    "name, edit, message",
    [
        ("tomoro", lambda t: t.pop("embedding_proj_layer.bias"), r"not in the checkpoint .*embedding_proj_layer\.bias"),
        ("ops", lambda t: t.pop("custom_text_proj.bias"), r"not in the checkpoint .*custom_text_proj\.bias"),
        ("nemotron", lambda t: t.update({"model.extra_head.weight": torch.ones(2)}), r"not used: model\.extra_head\.weight"),
        ("tomoro", lambda t: t.update({"vlm.custom_text_proj.weight": torch.ones(2)}), r"not used: vlm\.custom_text_proj\.weight"),
    ],
)
def test_incomplete_checkpoints_exit_4_without_an_index(name, edit, message, built, cli, tmp_path):
    import re

    path = _edit_weights(built(name), tmp_path / "broken", edit)
    out = tmp_path / "index"
    result = cli("encode", _image_folder(tmp_path / "pages"), "--model", path, "-o", out)
    assert result.exit_code == 4, result.output
    assert re.search(message, result.output.replace("\n", " ")), result.output
    assert not (out / "manifest.json").exists()


def _edit_config(source: Path, target: Path, **changes) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config.update(changes)
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize(
    "name, key, value",
    [("ops", "dims", -4), ("ops", "dims", 0), ("ops", "dims", 16.5), ("ops", "dims", True), ("ops", "dims", "24"),
     ("ops", "dims", 33), ("tomoro", "embed_dim", 16.5)],
    ids=["ops-negative", "ops-zero", "ops-float", "ops-bool", "ops-string", "ops-wider", "tomoro-float"],
)
def test_an_output_width_that_is_not_a_positive_whole_number_is_refused(name, key, value, built, tmp_path):
    """Ops' ``dims`` -4 was a traceback, 0 the full width, 16.5 / true the first 16 / 1 columns (exit 0)."""
    from tokembed.errors import ModelError

    path = _edit_config(built(name), tmp_path / "ckpt", **{key: value})
    with pytest.raises(ModelError, match=rf"config\.json: {key} "):
        load_model(path)


def test_a_refused_output_width_is_exit_4(built, cli, tmp_path):
    path = _edit_config(built("ops"), tmp_path / "ckpt", dims=-4)
    result = cli("encode", _image_folder(tmp_path / "pages"), "--model", path, "-o", tmp_path / "index")
    assert result.exit_code == 4, result.output
    assert "config.json: dims is -4, not a positive whole number" in result.output.replace("\n", " ")


def test_a_refused_checkpoint_leaves_the_previous_index_untouched(built, cli, tmp_path):
    pages, out = _image_folder(tmp_path / "pages"), tmp_path / "index"
    assert cli("encode", pages, "--model", built("tomoro"), "-o", out).exit_code == 0
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and "lock" not in p.name}
    broken = _edit_weights(built("tomoro"), tmp_path / "broken", lambda t: t.pop("embedding_proj_layer.bias"))
    result = cli("encode", pages, "--model", broken, "-o", out, "--full")
    assert result.exit_code == 4, result.output
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and "lock" not in p.name}
    assert after == before


@pytest.mark.parametrize("name", sorted(KEYS))
def test_score_over_an_index_equals_brute_force_maxsim(name, built, cli, tmp_path):
    out = tmp_path / "index"
    result = cli("encode", _image_folder(tmp_path / "pages"), "--model", built(name), "-o", out, "--store-dtype", "float32")
    assert result.exit_code == 0, result.output
    assert manifest(out)["model"]["family"] == KEYS[name]
    assert_score_equals_brute_force(cli, out, ["invoice total", "a chart of revenue"])
