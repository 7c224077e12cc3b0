"""Loading is never silently wrong, through the CLI: a checkpoint whose weights do not all land in the model
tokembed builds (or whose code cannot import) is exit 4, the message names the tensor (or package) and the
file, no index is written, and an index already in the output folder is left byte for byte as it was.

Each case first encodes a healthy copy of a tiny checkpoint into the output folder, then breaks that copy
the way real checkpoints break, and encodes again.
"""

from __future__ import annotations

import json
import shutil

import pytest

import vision_checkpoints
from helpers import read_index, write_parquet
from jina_checkpoints import build_jina_colbert
from tokembed.models.weights import safetensors_header, tensor_names

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France."]
SAMPLE_IMAGES = vision_checkpoints.REMOTE_CODE_DIR.parent.parent / "sample_data" / "images"


@pytest.fixture
def corpus(tmp_path):
    return write_parquet(tmp_path / "docs.parquet", [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Vision and jina checkpoints, built once for this module; tests break private copies."""
    root = tmp_path_factory.mktemp("load-check")
    cache = {}

    def get(name):
        if name not in cache:
            builder = build_jina_colbert if name == "jina" else vision_checkpoints.VISION_BUILDERS[name]
            cache[name] = builder(root / name)
        return cache[name]

    return get


def rewrite_weights(folder, change) -> None:
    """Apply ``change(tensors) -> tensors`` to the folder's model.safetensors."""
    from safetensors.torch import load_file, save_file

    file = folder / "model.safetensors"
    save_file(change(load_file(str(file))), str(file), metadata={"format": "pt"})


def encode_then_break(cli, model, inputs, tmp_path, breakage, *flags, needles=(), file="model.safetensors"):
    """Encode ``inputs`` with ``model`` (healthy), apply ``breakage(model)``, encode again: exit 4."""
    out = tmp_path / "index"
    first = cli("encode", inputs, "-o", out, "--model", model, "--quiet", *flags)
    assert first.exit_code == 0, first.output
    manifest = (out / "manifest.json").read_bytes()
    shards = {p.name: p.read_bytes() for p in (out / "data").iterdir()}
    breakage(model)
    again = cli("encode", inputs, "-o", out, "--model", model, "--quiet", "--full", *flags)
    fresh = cli("encode", inputs, "-o", tmp_path / "fresh", "--model", model, "--quiet", *flags)
    for result in (again, fresh):
        assert result.exit_code == 4, result.output
        message = model_error_line(result.stderr)
        for needle in (str(model), file, *needles):
            assert needle in message, (needle, message)
    assert (out / "manifest.json").read_bytes() == manifest
    assert {p.name: p.read_bytes() for p in (out / "data").iterdir()} == shards
    assert not (tmp_path / "fresh" / "manifest.json").exists()
    return model_error_line(again.stderr)


def model_error_line(stderr: str) -> str:
    """tokembed's one-line error (transformers may print its own load report before it)."""
    lines = [line for line in stderr.splitlines() if line.startswith("tokembed: model error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def test_hf_colbert_config_over_renamed_tensors(cli, checkpoint, corpus, tmp_path):
    """A Stanford ``HF_ColBERT`` whose backbone tensors are not under ``bert.``: never random weights."""
    model = checkpoint("stanford")

    def rename(folder):
        rewrite_weights(folder, lambda t: {k.replace("bert.", "backbone.", 1): v for k, v in t.items()})

    stderr = encode_then_break(
        cli, model, corpus, tmp_path, rename,
        needles=("backbone.embeddings.LayerNorm.bias", "not in the checkpoint"),
    )
    assert "were not used" in stderr


def test_an_extra_unknown_tensor(cli, checkpoint, corpus, tmp_path):
    model = checkpoint("stanford")
    extra = "bert.encoder.layer.0.attention.self.rel_scale"

    def add(folder):
        import torch

        rewrite_weights(folder, lambda t: {**t, extra: torch.ones(4)})

    encode_then_break(cli, model, corpus, tmp_path, add, needles=(extra, "were not used"))


def test_a_missing_projection_bias_of_a_vision_checkpoint(cli, built, tmp_path):
    model = tmp_path / "colpali"
    shutil.copytree(built("colpali"), model)

    def drop_bias(folder):
        rewrite_weights(folder, lambda t: {k: v for k, v in t.items() if k != "embedding_proj_layer.bias"})

    encode_then_break(
        cli, model, SAMPLE_IMAGES, tmp_path, drop_bias,
        needles=("embedding_proj_layer.bias", "not in the checkpoint"),
    )


@pytest.mark.parametrize("family, name", [("colpali", "vlm.vision_tower.encoder.layers.0.self_attn.q_proj.weight"),
                                          ("colqwen2", "vlm.visual.blocks.0.norm1.weight")])
def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(cli, built, tmp_path, family, name):
    """transformers' own message pointed at a report tokembed keeps off stderr: no tensor, no shape."""
    import torch

    model = shutil.copytree(built(family), tmp_path / family)
    shape = tuple(safetensors_header(model / "model.safetensors")[name]["shape"])
    wider = (shape[0] + 1, *shape[1:])

    def widen(folder):
        rewrite_weights(folder, lambda t: {**t, name: torch.cat([t[name], t[name][:1]])})

    encode_then_break(cli, model, SAMPLE_IMAGES, tmp_path, widen,
                      needles=(f"{name} (in {model / 'model.safetensors'}): checkpoint {wider}, model {shape}",))


def test_a_vision_checkpoint_without_its_tokenizer_settings(cli, built, tmp_path):
    """Without tokenizer_config.json the processor has no pad / query augmentation token and fails on every row:
    refused when the model loads, not a traceback in the middle of the run."""
    model = shutil.copytree(built("colpali"), tmp_path / "colpali")
    encode_then_break(cli, model, SAMPLE_IMAGES, tmp_path, _without("tokenizer_config.json"), file="",
                      needles=("its processor cannot process a query",))


def test_two_saved_names_for_one_parameter_are_refused(cli, tmp_path):
    """colpali-engine layouts are read through renamings: two saved tensors that land on one parameter would leave
    the vectors to whichever transformers read last."""
    from colpali_engine_checkpoints import build_colqwen2_engine

    model = build_colqwen2_engine(tmp_path / "ce_colqwen2")

    def add_alias(folder):
        import torch

        rewrite_weights(folder, lambda t: {**t, **{"language_model." + k[len("model."):]: torch.randn_like(v)
                                                   for k, v in t.items() if k == "model.norm.weight"}})

    assert "model.norm.weight" in tensor_names(model)
    encode_then_break(cli, model, SAMPLE_IMAGES, tmp_path, add_alias,
                      needles=("language_model.norm.weight and model.norm.weight", "are both loaded as"))


@pytest.mark.parametrize("alias, of", [
    ("embeddings.LayerNorm.gamma", "embeddings.LayerNorm.weight"),  # transformers' legacy rename
    ("roberta.encoder.layer.0.output.dense.bias", "encoder.layer.0.output.dense.bias"),  # its base-model prefix
])
def test_two_names_transformers_itself_loads_as_one_are_refused(cli, corpus, tmp_path, alias, of):
    """transformers renames legacy names and strips the base-model prefix on every load: a checkpoint that also
    carries the other spelling of a tensor gave the vectors of whichever copy it read last (exit 0)."""
    from checkpoints import build_pylate_xlmr

    model = build_pylate_xlmr(tmp_path / "xlmr")

    def add_alias(folder):
        rewrite_weights(folder, lambda t: {**t, alias: t[of] * 3 + 1})

    assert of in tensor_names(model)
    encode_then_break(cli, model, corpus, tmp_path, add_alias,
                      needles=(f"{min(alias, of)} and {max(alias, of)}", f"are both loaded as {of}"))


def test_remote_code_that_imports_a_missing_package(cli, built, tmp_path):
    model = tmp_path / "remote"
    shutil.copytree(built("remote_code"), model)
    package = "tokembed_absent_package"

    def add_import(folder):
        code = folder / "modeling_tinycol.py"
        code.write_text(f"import {package}\n" + code.read_text())

    stderr = encode_then_break(
        cli, model, SAMPLE_IMAGES, tmp_path, add_import, "--trust-remote-code", needles=(package,), file=""
    )
    assert f"pip install {package}" in stderr


@pytest.mark.parametrize("breakage", ["missing", "extra", "renamed", "reshaped"])
def test_jina_colbert_tensors_are_checked_too(cli, built, corpus, tmp_path, breakage):
    """The native jina loader: a missing fused weight, an extra tensor, a renamed layer, a tensor of the wrong
    shape are all exit 4."""
    import torch

    model = tmp_path / "jina"
    shutil.copytree(built("jina"), model)
    name = "roberta.encoder.layers.1.mixer.Wqkv.weight"
    changes = {
        "missing": (lambda t: {k: v for k, v in t.items() if k != name}, (name, "not in the checkpoint")),
        "extra": (lambda t: {**t, "roberta.encoder.layers.1.mixer.rotary_scale": torch.ones(2)},
                  ("roberta.encoder.layers.1.mixer.rotary_scale", "were not used")),
        "renamed": (lambda t: {k.replace("layers.1.", "layer.1."): v for k, v in t.items()},
                    ("roberta.encoder.layer.1.mixer.Wqkv.weight", name)),
        "reshaped": (lambda t: {**t, "roberta.emb_ln.weight": torch.ones(31)},
                     ("roberta.emb_ln.weight", "wrong shape")),
    }
    change, needles = changes[breakage]
    encode_then_break(
        cli, model, corpus, tmp_path, lambda folder: rewrite_weights(folder, change),
        needles=needles,
    )


def test_the_plain_stanford_loader_refuses_jina_weights(built):
    """What happened before jina-colbert had its own family: an XLM-R with random weights. Now a model error."""
    from tokembed.errors import ModelError
    from tokembed.models import LoadOptions
    from tokembed.models.stanford import StanfordColBERT

    with pytest.raises(ModelError, match=r"mixer\.Wqkv") as error:
        StanfordColBERT.load(built("jina"), LoadOptions())
    assert "model.safetensors" in str(error.value)
    assert json.loads((built("jina") / "config.json").read_text())["architectures"] == ["HF_ColBERT"]


def _without(*names):
    def breakage(folder):
        for name in names:
            (folder / name).unlink()
    return breakage


def _truncated(name):
    def breakage(folder):
        file = folder / name
        file.write_bytes(file.read_bytes()[:-300])
    return breakage


def _json_edited(name, change):
    def breakage(folder):
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))
    return breakage


def _dense_bias_added(folder):
    import torch
    from safetensors.torch import load_file, save_file

    file = folder / "1_Dense" / "model.safetensors"
    tensors = load_file(str(file))
    save_file({**tensors, "linear.bias": torch.full((tensors["linear.weight"].shape[0],), 0.5)}, str(file), metadata={"format": "pt"})


def _tensor_retyped(file_name, name, dtype):
    def breakage(folder):
        import torch
        from safetensors.torch import load_file, save_file

        file = folder / file_name
        tensors = load_file(str(file))
        tensors[name] = (tensors[name] * 100).to(getattr(torch, dtype))
        save_file(tensors, str(file), metadata={"format": "pt"})
    return breakage


def _sharded(extra_copy=None, missing_shard=False):
    """model.safetensors split into two listed shards; ``extra_copy``: the second also holds another copy of that
    tensor; ``missing_shard``: the index also lists a third file that is not there."""
    def breakage(folder):
        import torch
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(folder / "model.safetensors"))
        (folder / "model.safetensors").unlink()
        names = sorted(tensors)
        halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
        weight_map = {name: file for file, part in halves.items() for name in part}
        for file, part in halves.items():
            chosen = {name: tensors[name] for name in part}
            if extra_copy and file != weight_map[extra_copy]:
                chosen[extra_copy] = torch.randn_like(tensors[extra_copy])
            save_file(chosen, str(folder / file), metadata={"format": "pt"})
        if missing_shard:
            weight_map[names[0]] = "model-00003-of-00003.safetensors"
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return breakage


def _dense_widened(folder):
    """The Dense weight and its config agree with each other, not with the backbone's hidden size."""
    import torch
    from safetensors.torch import load_file, save_file

    file = folder / "1_Dense" / "model.safetensors"
    weight = load_file(str(file))["linear.weight"]
    save_file({"linear.weight": torch.randn(weight.shape[0], weight.shape[1] + 8)}, str(file), metadata={"format": "pt"})
    _json_edited("1_Dense/config.json", lambda c: c.update(in_features=weight.shape[1] + 8))(folder)


def _dense_unlisted(folder):
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Dense")]))


# checkpoint, breakage, the file the message names, what it says
BROKEN_CHECKPOINTS = {
    # transformers builds an empty tokenizer from a folder without tokenizer files: every word [UNK]
    "no tokenizer files": ("stanford", _without("tokenizer.json", "tokenizer_config.json", "vocab.txt"), "tokenizer.json",
                           "its tokenizer holds no vocabulary"),
    "no tokenizer files, decoder": ("raw_decoder", _without("tokenizer.json", "tokenizer_config.json"), "tokenizer.json",
                                    "its tokenizer holds no vocabulary"),
    "truncated weights": ("stanford", _truncated("model.safetensors"), "model.safetensors", "cannot read the weights"),
    "truncated weights, transformers path": ("raw_decoder", _truncated("model.safetensors"), "raw_decoder",
                                             "cannot load the backbone"),
    "truncated Dense": ("pylate_bert", _truncated("1_Dense/model.safetensors"), "1_Dense/model.safetensors", "cannot read"),
    "a Dense bias its config turns off": ("pylate_bert", _dense_bias_added, "1_Dense", "that its config.json does not use"),
    "a Dense config of another shape": ("pylate_bert", _json_edited("1_Dense/config.json", lambda c: c.update(out_features=7)),
                                        "1_Dense", "config.json says out_features 7"),
    "no model_type": ("stanford", _json_edited("config.json", lambda c: c.pop("model_type")), "config.json", "model_type"),
    "PyLate settings without modules.json": ("pylate_bert", _without("modules.json"), "modules.json",
                                             "ColBERT settings in config_sentence_transformers.json"),
    # a cast to float would turn them into other numbers
    "an integer projection": ("stanford", _tensor_retyped("model.safetensors", "linear.weight", "int32"),
                              "model.safetensors", "tensor linear.weight is stored as I32, not a floating-point type"),
    "an integer Dense weight": ("pylate_bert", _tensor_retyped("1_Dense/model.safetensors", "linear.weight", "int8"),
                                "1_Dense/model.safetensors", "stored as I8"),
    "an integer embedding, transformers path": ("raw_decoder", _tensor_retyped("model.safetensors", "model.embed_tokens.weight",
                                                "int8"), "model.safetensors", "model.embed_tokens.weight is stored as I8"),
    # which copy would win depended on the file names
    "a tensor in two listed shards": ("stanford", _sharded(extra_copy="linear.weight"), "model-0000",
                                      "tensor linear.weight is in both"),
    "a tensor in two listed shards, transformers path": ("raw_decoder", _sharded(extra_copy="model.norm.weight"),
                                                         "model-0000", "tensor model.norm.weight is in both"),
    "an index naming a missing shard": ("stanford", _sharded(missing_shard=True), "model.safetensors.index.json",
                                        "model-00003-of-00003.safetensors"),
    # colbert-ai refuses a projection of another width than its metadata's dim
    "artifact.metadata of another dim": ("stanford", _json_edited("artifact.metadata", lambda m: m.update(dim=7)),
                                         "artifact.metadata", "says dim 7, linear.weight is [24, 32]"),
    # the projection never applied, the hidden states written as the vectors
    "a Dense that modules.json does not list": ("pylate_bert", _dense_unlisted, "1_Dense", "modules.json does not list it"),
    "a Dense that does not fit the backbone": ("pylate_bert", _dense_widened, "pylate_bert",
                                               "projection layer 1 takes 40 inputs, but the backbone's hidden size 32"),
    # what transformers' own validators refuse: a model error, not a traceback
    "a layer count its layer types disagree with": ("raw_decoder", _json_edited(
        "config.json", lambda c: c.update(num_hidden_layers=c["num_hidden_layers"] + 1)), "raw_decoder",
        "cannot load the checkpoint as family causal-lm (config.json architectures ['Qwen2ForCausalLM'], model_type "
        "'qwen2'): StrictDataclassClassValidationError"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CHECKPOINTS))
def test_a_broken_checkpoint_is_refused_naming_what_is_wrong(cli, checkpoint, corpus, tmp_path, case):
    name, breakage, file, says = BROKEN_CHECKPOINTS[case]
    encode_then_break(cli, checkpoint(name), corpus, tmp_path, breakage, file=file, needles=(says,))


@pytest.mark.parametrize("name", ["stanford", "raw_decoder"])
def test_a_stray_weight_file_beside_model_safetensors_is_not_read(cli, checkpoint, corpus, tmp_path, name):
    """What transformers reads is ``model.safetensors`` (else the files its index lists): a stray file beside it,
    holding another copy of a tensor, changes nothing (it used to win, by its name, in tokembed's own loaders)."""
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    model = checkpoint(name)
    assert cli("encode", corpus, "-o", tmp_path / "before", "--model", model, "--quiet").exit_code == 0
    tensors = load_file(str(model / "model.safetensors"))
    save_file({key: torch.randn_like(value) for key, value in tensors.items()}, str(model / "zz.safetensors"))
    assert cli("encode", corpus, "-o", tmp_path / "after", "--model", model, "--quiet").exit_code == 0
    before, after = read_index(tmp_path / "before"), read_index(tmp_path / "after")
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key][0], after[key][0])
