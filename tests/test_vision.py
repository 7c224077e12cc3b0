"""Vision retrieval models: tokembed's vectors against each class's own forward on its processor's output.

Each tiny checkpoint (``tests/vision_checkpoints.py``) is built once per session; the reference is loaded
separately, straight from transformers (``XForRetrieval.from_pretrained`` + ``AutoProcessor``), and run
on ``process_images`` / ``process_queries`` output: one item at a time and as the processor batches them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vision_checkpoints
from tokembed.engine.batching import plan_batches
from tokembed.errors import BadInputError, ModelError, UnsupportedModelError, UsageError
from tokembed.models import LoadOptions, describe_families, detect, load_model
from tokembed.models.vision import VisionModel
from tokembed.settings import EncodeFlags, resolve
from tokembed.sources import SourceOptions, open_sources

TOLERANCE = 1e-5
FAMILIES = {  # builder -> (family key, reference class in transformers)
    "colpali": ("ColPaliForRetrieval", "ColPaliForRetrieval"),
    "colqwen2": ("ColQwen2ForRetrieval", "ColQwen2ForRetrieval"),
    "colqwen2_5": ("ColQwen2ForRetrieval", "ColQwen2ForRetrieval"),
    "colmodernvbert": ("ColModernVBertForRetrieval", "ColModernVBertForRetrieval"),
    "remote_code": ("remote-code-retrieval", "AutoModel"),
}
SIZES = [(50, 40), (30, 100), (64, 64), (90, 20), (47, 33)]  # (width, height): several aspect ratios
QUERIES = ["what is the capital of france?", "hello", "invoice total due from Bluefin Office Supplies", ""]
SAMPLE_IMAGES = Path(__file__).resolve().parent.parent / "sample_data" / "images"


def noise_images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for w, h in SIZES]


@pytest.fixture(scope="session")
def vision_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = vision_checkpoints.VISION_BUILDERS[name](root / name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def loaded(vision_path):
    cache: dict[str, VisionModel] = {}

    def get(name: str) -> VisionModel:
        if name not in cache:
            cache[name] = load_model(vision_path(name), LoadOptions(trust_remote_code=name == "remote_code"))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def reference(vision_path):
    """The model class and processor as a transformers user loads them, independent of tokembed."""
    import transformers

    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            path, remote = vision_path(name), name == "remote_code"
            model_class = getattr(transformers, FAMILIES[name][1])
            model = model_class.from_pretrained(path, trust_remote_code=remote).eval()
            processor = transformers.AutoProcessor.from_pretrained(path, trust_remote_code=remote)
            cache[name] = (model, processor)
        return cache[name]

    return get


def settings(model: VisionModel, kind: str, **flags):
    return resolve(EncodeFlags(kind=kind, store_dtype=flags.pop("store_dtype", "float32"), **flags), model.colbert, model.max_length)


def encode(model: VisionModel, kind: str, inputs: list, budget: int = 1 << 20, **flags):
    """What the engine does with a chunk: tokenize, batch by length under the budget, collate, embed, finish."""
    encoder = model.make_encoder(settings(model, kind, **flags))
    prepared = encoder.tokenize(inputs)
    lengths = np.array([len(item.ids) for item in prepared])
    results: list = [None] * len(inputs)
    batches = plan_batches(lengths, budget)
    for batch in batches:
        items = [prepared[row] for row in batch.rows]
        for row, result in zip(batch.rows, encoder.finish(encoder.embed(encoder.collate(items)), items)):
            results[row] = result
    return results, prepared, len(batches)


@torch.inference_mode()
def model_output(model, batch) -> torch.Tensor:
    output = model(**batch)
    return output if isinstance(output, torch.Tensor) else output.embeddings


def assert_matches_reference(results, inputs, ref_model, process) -> None:
    for value, (vectors, ids) in zip(inputs, results):  # one item at a time
        batch = process([value])
        expected = model_output(ref_model, batch)[0]
        assert ids.dtype == np.int32 and ids.tolist() == batch["input_ids"][0].tolist()
        assert vectors.shape == tuple(expected.shape)
        assert np.abs(vectors - expected.numpy()).max() <= TOLERANCE
    batch = process(inputs)  # as the processor batches them itself
    expected = model_output(ref_model, batch)
    for row, (vectors, ids) in enumerate(results):
        attended = batch["attention_mask"][row].bool()
        assert ids.tolist() == batch["input_ids"][row][attended].tolist()
        assert np.abs(vectors - expected[row][attended].numpy()).max() <= TOLERANCE


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_documents_match_the_models_own_forward(name, loaded, reference, vision_path):
    model = loaded(name)
    assert detect(vision_path(name), trust_remote_code=True) == FAMILIES[name][0] == model.family
    images = noise_images()
    results, _, _ = encode(model, "document", images)
    ref_model, ref_processor = reference(name)
    assert_matches_reference(results, images, ref_model, ref_processor.process_images)
    for vectors, _ in results:  # the model's own normalization: unit vectors at every attended position
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_queries_match_the_models_own_forward(name, loaded, reference):
    results, prepared, _ = encode(loaded(name), "query", QUERIES)
    ref_model, ref_processor = reference(name)
    assert_matches_reference(results, QUERIES, ref_model, ref_processor.process_queries)
    # The query path adds the processor's prefix and augmentation tokens, and keeps them all.
    empty = ref_processor.process_queries([""])["input_ids"][0]
    assert len(prepared[QUERIES.index("")].ids) == len(empty) > 5


def test_image_length_is_the_processed_sequence_length(loaded):
    images = noise_images()
    colqwen = loaded("colqwen2")
    prepared = colqwen.make_encoder(settings(colqwen, "document")).tokenize(images)
    image_pad = colqwen.processor.image_token_id
    for item in prepared:  # Qwen2-VL: t*h*w patches / merge_size^2 image tokens + the prompt
        grid = item.payload["image_grid_thw"]
        assert int((item.ids == image_pad).sum()) == int(grid.prod()) // 4
        assert item.payload["pixel_values"].shape[0] == int(grid.prod())
    assert len({len(item.ids) for item in prepared}) > 1  # aspect ratio changes the length
    colpali = loaded("colpali")
    lengths = {len(item.ids) for item in colpali.make_encoder(settings(colpali, "document")).tokenize(images)}
    assert lengths == {16 + len(colpali.tokenizer("<bos>Describe the image.\n", add_special_tokens=False)["input_ids"])}
    vbert = loaded("colmodernvbert")
    tiles = [vbert.make_encoder(settings(vbert, "document")).tokenize([image])[0].payload["pixel_values"].shape[0] for image in images]
    assert len(set(tiles)) > 1  # Idefics3 splits large/long images into more tiles, hence more tokens


@pytest.mark.parametrize("name", ["colqwen2", "colmodernvbert"])
def test_batches_under_a_token_budget_give_the_same_vectors(name, loaded):
    images = noise_images() * 2
    alone, _, count = encode(loaded(name), "document", images, budget=1)  # every item longer than the budget
    assert count == len(images)
    batched, _, count = encode(loaded(name), "document", images)
    assert count < len(images) / 2  # padded batches of items of different lengths
    for (a, ids_a), (b, ids_b) in zip(alone, batched):
        assert ids_a.tolist() == ids_b.tolist() and np.abs(a - b).max() <= TOLERANCE


def test_projection_bias_is_kept_and_a_missing_one_is_an_error(loaded, vision_path, tmp_path):
    from safetensors.torch import load_file, save_file

    bias = loaded("colpali").model.embedding_proj_layer.bias.detach()
    assert float(bias.abs().max()) > 0.1  # the checkpoint's bias, not zeros (parity above proves it is used)
    path = tmp_path / "no-bias"
    shutil.copytree(vision_path("colpali"), path)
    tensors = load_file(path / "model.safetensors")
    del tensors["embedding_proj_layer.bias"]
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"parameter\(s\) of the model are not in the checkpoint .*: embedding_proj_layer\.bias"):
        load_model(path)


def test_no_normalize_dimensions_and_store_dtype(loaded):
    model = loaded("colpali")
    images = noise_images()[:2]
    normalized, _, _ = encode(model, "document", images)
    raw, _, _ = encode(model, "document", images, normalize=False)
    for (unit, ids), (vectors, raw_ids) in zip(normalized, raw):
        assert ids.tolist() == raw_ids.tolist()
        assert np.abs(np.linalg.norm(vectors, axis=-1) - 1).max() > 0.01  # the projection before normalization
        np.testing.assert_allclose(vectors / np.linalg.norm(vectors, axis=-1, keepdims=True), unit, atol=1e-5)
    cut, _, _ = encode(model, "document", images, dimensions=8, store_dtype="float16")
    for (unit, _), (vectors, _) in zip(normalized, cut):
        assert vectors.dtype == np.float16 and vectors.shape == (unit.shape[0], 8)
        expected = unit[:, :8] / np.linalg.norm(unit[:, :8], axis=-1, keepdims=True)
        np.testing.assert_allclose(vectors.astype(np.float32), expected, atol=2e-3)
    assert model.make_encoder(settings(model, "document", dimensions=8)).output_dim == 8
    without_projection = dataclasses.replace(model, projection=None)  # a remote model with an unknown head
    with pytest.raises(UsageError, match="--no-normalize: cannot find the projection"):
        without_projection.make_encoder(settings(model, "document", normalize=False))


def test_remote_code_is_refused_without_the_flag(vision_path):
    path = vision_path("remote_code")
    with pytest.raises(UnsupportedModelError, match="--trust-remote-code") as error:
        detect(path)
    assert "TinyColRetriever" in str(error.value) and "vision retrieval model" in str(error.value)
    with pytest.raises(UnsupportedModelError, match="--trust-remote-code"):
        load_model(path)
    assert detect(path, trust_remote_code=True) == "remote-code-retrieval"


def test_unknown_retrieval_architecture_names_the_known_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["ColFutureForRetrieval"], "model_type": "colfuture"}))
    with pytest.raises(UnsupportedModelError, match="ColFutureForRetrieval is a vision retrieval model tokembed does not know") as error:
        detect(tmp_path)
    assert "ColPaliForRetrieval" in str(error.value)


def test_documents_are_images_and_queries_are_text(loaded):
    model = loaded("colqwen2")
    with pytest.raises(BadInputError, match="encodes documents as images; got text"):
        model.make_encoder(settings(model, "document")).tokenize(["some text"])
    with pytest.raises(BadInputError, match="queries are text; got Image"):
        model.make_encoder(settings(model, "query")).tokenize(noise_images()[:1])


def test_vision_families_are_listed():
    infos = {info.key: info for info in describe_families()}
    for key in ("ColPaliForRetrieval", "ColQwen2ForRetrieval", "ColModernVBertForRetrieval", "remote-code-retrieval"):
        assert infos[key].modes.startswith("vision") and infos[key].detected_by and infos[key].needs
    assert "--trust-remote-code" in infos["remote-code-retrieval"].needs


def test_sample_images_from_the_folder_reader_through_a_model(loaded):
    model = loaded("colqwen2")
    items = [item for chunk in open_sources([SAMPLE_IMAGES], SourceOptions(modality="image")) for item in chunk]
    results, prepared, _ = encode(model, "document", [item.image for item in items], budget=256)
    assert len(results) == len(items) >= 12
    assert all(vectors.shape == (len(item.ids), 16) for (vectors, _), item in zip(results, prepared))
    landscape = [len(p.ids) for p, item in zip(prepared, items) if item.image.width > item.image.height]
    portrait = [len(p.ids) for p, item in zip(prepared, items) if item.image.width < item.image.height]
    assert landscape and portrait and min(landscape + portrait) < max(landscape + portrait)
