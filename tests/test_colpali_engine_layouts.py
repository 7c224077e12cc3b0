"""colpali-engine's own save layouts (ColPali, ColQwen2, ColQwen2_5, ColIdefics3), read natively.

Each tiny base is built from transformers' backbone classes and saved under the tensor names of the published
bases, of colpali-engine 0.3.18's modules, and of what it writes under transformers 5 (regex escapes left in).
The reference is colpali-engine 0.3.18's definition, computed here from the modules the base was saved from:
its processor's prompts (the literal strings of its source) and its forward (backbone's last hidden state,
projection with bias, L2 norm, times the mask).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from colpali_engine_checkpoints import BUILT, ENGINE_BUILDERS
from helpers import manifest, read_index

ARCHS = sorted(ENGINE_BUILDERS)


def _image(width: int = 60, height: int = 40, mode: str = "RGB", seed: int = 0) -> Image.Image:
    channels = len(mode)
    pixels = np.random.RandomState(seed).randint(0, 255, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode=mode)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    return {(arch, names): ENGINE_BUILDERS[arch](root / f"{arch}-{names}", names=names)
            for arch in ARCHS for names in ("published", "engine", "escaped")}


def _load(path):
    from tokembed.models.registry import load_model

    return load_model(path)


def _reference(arch: str, path, inputs: dict) -> torch.Tensor:
    """colpali-engine 0.3.18's forward on the modules the checkpoint was saved from."""
    backbone, projection = BUILT[str(path)]
    inputs = {key: value for key, value in inputs.items() if key != "labels"}
    with torch.no_grad():
        if arch.startswith("ColQwen2") and "pixel_values" in inputs:
            grid = inputs["image_grid_thw"]
            n = (grid[:, 1] * grid[:, 2]).tolist()
            inputs["pixel_values"] = torch.cat([rows[:k] for rows, k in zip(inputs["pixel_values"], n)])
        if arch == "ColPali":
            hidden = backbone(**inputs, output_hidden_states=True).hidden_states[-1]
        else:
            hidden = backbone(**inputs)[0]
        proj = projection(hidden)
        return proj / proj.norm(dim=-1, keepdim=True) * inputs["attention_mask"].unsqueeze(-1)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_saved_naming_loads_to_the_reference(bases, arch):
    image, query = _image(), "where is the total?"
    outputs = []
    for names in ("published", "engine", "escaped"):
        path = bases[(arch, names)]
        model = _load(path)
        assert model.family == arch and model.architecture == arch and model.embedding_dim == 128
        docs = model.processor.process_images([image])
        queries = model.processor.process_queries([query])
        with torch.no_grad():
            got_docs = model.model(**{k: v for k, v in docs.items() if k != "labels"})
            got_queries = model.model(**queries)
        assert (got_docs - _reference(arch, path, dict(docs))).abs().max() <= 1e-5
        assert (got_queries - _reference(arch, path, dict(queries))).abs().max() <= 1e-5
        outputs.append((got_docs, got_queries))
    # the three namings are one checkpoint: the same vectors
    for docs, queries in outputs[1:]:
        assert torch.equal(docs, outputs[0][0]) and torch.equal(queries, outputs[0][1])


_PROMPTS = {  # colpali-engine 0.3.18's processors, verbatim
    "ColQwen2": ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>",
                 "<|endoftext|>"),
    "ColQwen2_5": ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>",
                   "<|endoftext|>"),
    "ColIdefics3": ("<|im_start|>User:<image>Describe the image.<end_of_utterance>\nAssistant:", "<end_of_utterance>"),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_query_prompt_is_colpali_engine_0_3_18(bases, arch):
    model = _load(bases[(arch, "published")])
    tokenizer = model.processor.tokenizer
    query = "total amount due"
    if arch == "ColPali":  # <bos> + query + 10 <pad>, no "Question: " prefix, no token type ids
        expected = tokenizer(tokenizer.bos_token + query + tokenizer.pad_token * 10)["input_ids"]
    else:
        expected = tokenizer(query + _PROMPTS[arch][1] * 10)["input_ids"]
    got = model.processor.process_queries([query])
    assert got["input_ids"][0].tolist() == list(expected)
    assert "token_type_ids" not in got


@pytest.mark.parametrize("bidirectional", ["saved", "absent", False])
def test_colpali_queries_get_their_vectors_alone_in_a_padded_batch(bases, tmp_path, bidirectional):
    """colpali-engine's ColPali queries carry no token type ids, which PaliGemma at inference (transformers 4.57,
    5.3) reads as all prefix: bidirectional, padding masked, whatever ``use_bidirectional_attention`` says (configs
    transformers 4 saved have none; 5.x writes true). Under transformers 5.25 a padded batch was causal (0.13 off next to a longer query), and
    a config saying false made every query causal."""
    import json
    import shutil

    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    built = bases[("ColPali", "published")]
    path = shutil.copytree(built, tmp_path / "colpali")
    config = json.loads((path / "config.json").read_text())
    if bidirectional != "saved":
        config["text_config"].pop("use_bidirectional_attention", None)
    if bidirectional is False:
        config["text_config"]["use_bidirectional_attention"] = False
    (path / "config.json").write_text(json.dumps(config))
    queries = ["the cat", "what is the capital of france", "the river water city paris france and the dog sat on a mat"]
    embedder = Embedder.load(str(path), EncodeFlags(kind="query", store_dtype="float32"))
    together, alone = embedder.embed(queries), embedder.embed(queries, batch_tokens=1)
    processor = _load(path).processor
    for query, (vectors, ids), (vectors_alone, ids_alone) in zip(queries, together, alone):
        reference = _reference("ColPali", built, dict(processor.process_queries([query])))[0].numpy()
        assert ids.tolist() == ids_alone.tolist() and len(ids) == len(reference)
        assert np.abs(vectors - vectors_alone).max() <= 1e-5, query
        assert np.abs(vectors_alone - reference).max() <= 1e-5, query


def test_a_colpali_query_index_of_an_earlier_release_is_encoded_again(bases):
    """Query indexes that releases before the all-prefix token type ids built hold causal vectors for padded
    queries: the reading is part of the query settings' fingerprint (a cron run re-encodes them, as a rebuild
    would); document settings, whose vectors did not change, keep theirs."""
    from dataclasses import replace

    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    path = str(bases[("ColPali", "published")])
    query = Embedder.load(path, EncodeFlags(kind="query")).settings
    document = Embedder.load(path, EncodeFlags(kind="document")).settings
    assert query.reading == ("ColPali queries: all-prefix token type ids",) and document.reading == ()
    earlier = replace(query, reading=())
    assert earlier.fingerprint("model") != query.fingerprint("model")


def test_colqwen2_document_prompt_expands_the_image_pads(bases):
    model = _load(bases[("ColQwen2", "published")])
    tokenizer = model.processor.tokenizer
    docs = model.processor.process_images([_image(60, 40)])
    grid = docs["image_grid_thw"][0]
    n_pads = int(grid.prod()) // 4  # merge_size 2
    expected = tokenizer(_PROMPTS["ColQwen2"][0].replace("<|image_pad|>", "<|image_pad|>" * n_pads))["input_ids"]
    assert docs["input_ids"][0].tolist() == list(expected)
    assert docs["pixel_values"].ndim == 3  # re-batched per image, as colpali-engine does


def test_colidefics3_splits_images_into_tiles_by_aspect_ratio(bases):
    """Idefics3 image splitting: the longest edge is resized to size (64 px), then cut into 32 px tiles (4 image
    tokens each) plus the global image: a square page is 2x2 tiles + 1, a tall one 1x2 + 1."""
    model = _load(bases[("ColIdefics3", "published")])
    square = model.processor.process_images([_image(64, 64)])
    tall = model.processor.process_images([_image(20, 60)])
    assert square["pixel_values"].shape[1] == 5 and tall["pixel_values"].shape[1] == 3
    image_token = model.processor.tokenizer.convert_tokens_to_ids("<image>")
    assert square["input_ids"][0].tolist().count(image_token) == 5 * 4
    assert model.processor.tokenizer.convert_tokens_to_ids("<row_2_col_2>") in square["input_ids"][0].tolist()


@pytest.mark.parametrize("arch", ["ColQwen2", "ColPali"])
def test_alpha_is_dropped_not_composited(bases, arch):
    """colpali-engine's process_images does convert("RGB"): an RGBA page encodes as its RGB channels."""
    model = _load(bases[(arch, "published")])
    rgba = _image(mode="RGBA", seed=3)
    dropped = model.processor.process_images([rgba.convert("RGB")])["pixel_values"]
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.split()[3])
    composited = model.processor.process_images([white])["pixel_values"]
    got = model.processor.process_images([rgba])["pixel_values"]
    assert torch.equal(got, dropped) and not torch.equal(got, composited)


def test_a_missing_projection_bias_is_refused(bases, tmp_path, cli):
    import shutil

    from safetensors.torch import load_file, save_file

    path = shutil.copytree(bases[("ColQwen2", "published")], tmp_path / "nobias")
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["custom_text_proj.bias"]
    save_file(tensors, str(path / "model.safetensors"))
    (tmp_path / "pages").mkdir()
    _image().save(tmp_path / "pages" / "a.png")
    result = cli("encode", tmp_path / "pages", "--model", path, "-o", tmp_path / "index")
    assert result.exit_code == 4 and "custom_text_proj.bias" in result.stderr
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_encode_images_and_queries_end_to_end(bases, tmp_path, cli):
    """The CLI routes a colpali-engine ColQwen2 base to its family (it used to load as a text encoder)."""
    from tokembed.embedder import Embedder

    path = bases[("ColQwen2", "escaped")]
    pages = tmp_path / "pages"
    pages.mkdir()
    for seed in range(3):
        _image(40 + 20 * seed, 50, seed=seed).save(pages / f"p{seed}.png")
    out = tmp_path / "index"
    result = cli("encode", pages, "--model", path, "-o", out, "--store-dtype", "float32")
    assert result.exit_code == 0, result.stderr
    data = manifest(out)
    assert data["model"]["family"] == "ColQwen2" and data["dim"] == 128
    rows = read_index(out)
    model = _load(path)
    for seed in range(3):
        docs = model.processor.process_images([Image.open(pages / f"p{seed}.png")])
        reference = _reference("ColQwen2", path, dict(docs))[0].numpy()
        vectors, ids = rows[f"p{seed}.png"]
        assert ids.tolist() == docs["input_ids"][0].tolist()
        assert np.abs(vectors - reference).max() <= 1e-4
    query_embedder = Embedder.for_index(data, kind="query")
    (q, q_ids), = query_embedder.embed(["hello"])
    queries = model.processor.process_queries(["hello"])
    assert q_ids.tolist() == queries["input_ids"][0].tolist()
    assert np.abs(q - _reference("ColQwen2", path, dict(queries))[0].numpy()).max() <= 1e-4


def test_an_architecture_its_config_cannot_build_names_the_family_and_the_reason(tmp_path, cli):
    """``ColQwen2_5`` over a Qwen2-VL config: the exit-4 message was transformers' bare ``AttributeError``
    (``fullatt_block_indexes``), naming neither the family tokembed tried nor what it read it from."""
    import json

    from test_load_check import model_error_line

    path = ENGINE_BUILDERS["ColQwen2"](tmp_path / "colqwen2", names="published")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "architectures": ["ColQwen2_5"]}))
    (tmp_path / "pages").mkdir()
    _image().save(tmp_path / "pages" / "a.png")
    result = cli("encode", tmp_path / "pages", "--model", path, "-o", tmp_path / "index")
    assert result.exit_code == 4, result.output
    message = model_error_line(result.stderr)
    for needle in (str(path), "cannot load the checkpoint as family ColQwen2_5 (config.json architectures ['ColQwen2_5'], "
                   "model_type 'qwen2_vl')", "AttributeError", "fullatt_block_indexes"):
        assert needle in message, (needle, message)
    assert not (tmp_path / "index" / "manifest.json").exists()
