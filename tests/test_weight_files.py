"""Which files and modules a checkpoint is made of is what its reference library reads, and nothing else.

* weight files by their exact names: transformers (and colbert-ai's ``HF_ColBERT``) read ``model.safetensors``,
  its index, ``pytorch_model.bin``, its index; a sentence-transformers ``Dense`` ``model.safetensors`` else
  ``pytorch_model.bin``. A safetensors file of another name used to win over ``pytorch_model.bin``;
* a ``Dense`` config without ``activation_function`` is the reference's default (sentence-transformers: Tanh), or
  refused where the references disagree; without ``config.json`` it is refused (it used to be Identity);
* a ``modules.json`` module tokembed does not apply is refused (it used to be skipped);
* a tensor in two sharded ``pytorch_model-*.bin`` files is refused on the transformers path too;
* a weight file or module folder listed outside the checkpoint folder (``..``, absolute, a link up) is refused: the
  fingerprint covers the folder's files only (links inside it, as in a hub cache snapshot, are read through).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import manifest, read_index, write_parquet
from test_load_check import TEXTS, encode_then_break
from tokembed.models.base import LoadOptions
from tokembed.models.registry import load_model


@pytest.fixture
def corpus(tmp_path):
    return write_parquet(tmp_path / "docs.parquet", [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)])


def _perturbed(tensors: dict) -> dict:
    torch.manual_seed(0)
    return {name: t + 0.1 * torch.randn_like(t) if t.is_floating_point() else t for name, t in tensors.items()}


@pytest.mark.parametrize("native", ["1", "0"])
def test_pytorch_model_bin_wins_over_a_safetensors_file_of_another_name(checkpoint, monkeypatch, native):
    """transformers reads ``pytorch_model.bin`` here, not ``weights.safetensors``: backbone and projection both
    come from it (the transformers path used to take the backbone from one and ``linear.weight`` from the other)."""
    monkeypatch.setenv("TOKEMBED_NATIVE", native)
    model = checkpoint("stanford")
    stray = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").rename(model / "weights.safetensors")
    read = _perturbed(stray)
    torch.save(read, model / "pytorch_model.bin")
    loaded = load_model(model, LoadOptions())
    assert torch.equal(loaded.projection[0].linear.weight, read["linear.weight"])
    embeddings = loaded.backbone.embeddings.word_embeddings.weight
    assert torch.equal(embeddings, read["bert.embeddings.word_embeddings.weight"])


def test_a_stray_safetensors_beside_a_bin_only_checkpoint_is_not_read(checkpoint, cli, corpus, tmp_path):
    """An optimizer's state saved beside ``pytorch_model.bin`` used to be taken for the weights (exit 4)."""
    model = checkpoint("stanford")
    tensors = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    torch.save(tensors, model / "pytorch_model.bin")
    assert cli("encode", corpus, "-o", tmp_path / "before", "--model", model, "--quiet").exit_code == 0
    save_file({"step": torch.zeros(1, dtype=torch.int64)}, str(model / "optimizer.safetensors"))
    after = cli("encode", corpus, "-o", tmp_path / "after", "--model", model, "--quiet")
    assert after.exit_code == 0, after.output
    before, after = read_index(tmp_path / "before"), read_index(tmp_path / "after")
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key][0], after[key][0])


def test_a_dense_folder_reads_model_safetensors_else_pytorch_model_bin_only(checkpoint, cli, corpus, tmp_path):
    """sentence-transformers' ``load_torch_weights``: ``linear.safetensors`` is not a Dense weight file."""
    model = checkpoint("st_native")
    dense = model / "1_Dense"
    stray = load_file(str(dense / "model.safetensors"))
    renamed = lambda _: (dense / "model.safetensors").rename(dense / "linear.safetensors")  # noqa: E731
    encode_then_break(cli, model, corpus, tmp_path, renamed, file="1_Dense",
                      needles=("weights ['linear.bias', 'linear.weight'] not found", "pytorch_model.bin"))
    read = _perturbed(stray)
    torch.save(read, dense / "pytorch_model.bin")
    assert torch.equal(load_model(model).projection[0].linear.weight, read["linear.weight"])


def _dense_config_edited(change, dense="1_Dense"):
    def breakage(folder):
        file = folder / dense / "config.json"
        file.write_text(json.dumps(change(json.loads(file.read_text()))))
    return breakage


def _without_activation(config: dict) -> dict:
    return {key: value for key, value in config.items() if key != "activation_function"}


def test_a_dense_config_without_activation_is_sentence_transformers_default(checkpoint):
    from sentence_transformers import MultiVectorEncoder

    model = checkpoint("st_native")
    _dense_config_edited(_without_activation)(model)
    reference = MultiVectorEncoder(str(model), device="cpu", local_files_only=True)[1].activation_function
    assert type(load_model(model).projection[0].activation) is type(reference) is torch.nn.Tanh


@pytest.mark.parametrize("name, breakage, file, says", [
    ("st_native", lambda folder: (folder / "1_Dense" / "config.json").unlink(), "1_Dense", "without a config.json"),
    ("pylate_bert", _dense_config_edited(_without_activation), "1_Dense/config.json",
     "no activation_function key; PyLate's Dense would apply Identity"),
    ("raw_projection", _dense_config_edited(_without_activation, "2_Dense"), "2_Dense/config.json",
     "no activation_function key; vLLM would apply no activation"),
    ("st_native", _dense_config_edited(lambda c: {**c, "activation_function": None}), "1_Dense/config.json",
     "activation_function None is not a class name"),
])
def test_a_dense_config_the_references_cannot_agree_on_is_refused(checkpoint, cli, corpus, tmp_path, name, breakage,
                                                                  file, says):
    encode_then_break(cli, checkpoint(name), corpus, tmp_path, breakage, file=file, needles=(says,))


def _module_added(module_type: str, with_weights: bool):
    def breakage(folder):
        modules = json.loads((folder / "modules.json").read_text())
        modules.insert(1, {"idx": 1, "name": "1", "path": "1_Extra", "type": module_type})
        for index, module in enumerate(modules):
            module["idx"] = index
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Extra").mkdir()
        (folder / "1_Extra" / "config.json").write_text("{}")
        if with_weights:
            save_file({"weight": torch.ones(32)}, str(folder / "1_Extra" / "model.safetensors"))
    return breakage


@pytest.mark.parametrize("module_type, with_weights", [
    ("sentence_transformers.models.CNN", True),
    ("sentence_transformers.models.LSTM", True),
    ("sentence_transformers.models.WordWeights", False),
    ("sentence_transformers.multi_vector_encoder.modules.token_pooling.TokenPooling", False),
    ("mypkg.modules.Dense", True),
])
def test_a_module_tokembed_does_not_apply_is_refused(checkpoint, cli, corpus, tmp_path, module_type, with_weights):
    encode_then_break(cli, checkpoint("st_native"), corpus, tmp_path, _module_added(module_type, with_weights),
                      file="modules.json", needles=(f"'1_Extra' is a '{module_type}', which tokembed does not apply",))


def test_a_second_transformer_module_is_refused(checkpoint, cli, corpus, tmp_path):
    encode_then_break(cli, checkpoint("st_native"), corpus, tmp_path,
                      _module_added("sentence_transformers.models.Transformer", False), file="modules.json",
                      needles=("more than one Transformer module",))


def _bin_shards(duplicate: bool):
    """model.safetensors split into two ``pytorch_model-*.bin`` shards and their index; ``duplicate``: the second
    also holds another copy of the first shard's first tensor."""
    def breakage(folder):
        tensors = load_file(str(folder / "model.safetensors"))
        (folder / "model.safetensors").unlink()
        names = sorted(tensors)
        halves = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
        for file, part in halves.items():
            shard = {name: tensors[name] for name in part}
            if duplicate and file.startswith("pytorch_model-00002"):
                shard[names[0]] = tensors[names[0]] * 3
            torch.save(shard, folder / file)
        weight_map = {name: file for file, part in halves.items() for name in part}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return breakage


@pytest.mark.parametrize("name", ["raw_decoder", "stanford"])
def test_a_tensor_in_two_bin_shards_is_refused(checkpoint, cli, corpus, tmp_path, name):
    encode_then_break(cli, checkpoint(name), corpus, tmp_path, _bin_shards(duplicate=True),
                      file="pytorch_model-00002-of-00002.bin",
                      needles=(" is in both pytorch_model-00001-of-00002.bin",))


def test_bin_shards_without_a_duplicate_load(checkpoint, cli, corpus, tmp_path):
    model = checkpoint("raw_decoder")
    _bin_shards(duplicate=False)(model)
    result = cli("encode", corpus, "-o", tmp_path / "index", "--model", model, "--quiet")
    assert result.exit_code == 0, result.output


def _shard_listed_as(where):
    """model.safetensors split in two shards and their index; the second shard moved to ``where(folder)`` =
    (where it lies, the name the index lists it by)."""
    def breakage(folder):
        tensors = load_file(str(folder / "model.safetensors"))
        (folder / "model.safetensors").unlink()
        names = sorted(tensors)
        second, listed = where(folder)
        second.parent.mkdir(parents=True, exist_ok=True)
        save_file({name: tensors[name] for name in names[::2]}, str(folder / "model-00001-of-00002.safetensors"))
        save_file({name: tensors[name] for name in names[1::2]}, str(second))
        weight_map = {name: "model-00001-of-00002.safetensors" for name in names[::2]}
        weight_map.update({name: listed for name in names[1::2]})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return breakage


def _beside(folder):
    return folder.parent / "store" / "shard.safetensors", "../store/shard.safetensors"


def _absolute(folder):
    return folder.parent / "store" / "shard.safetensors", str(folder.parent / "store" / "shard.safetensors")


def _through_a_link_up(folder):
    (folder / "up").symlink_to(folder.parent, target_is_directory=True)  # the fingerprint's walk never follows it
    return folder.parent / "store" / "shard.safetensors", "up/store/shard.safetensors"


@pytest.mark.parametrize("where", [_beside, _absolute, _through_a_link_up])
@pytest.mark.parametrize("name", ["raw_decoder", "stanford"])
def test_a_weight_file_outside_the_checkpoint_folder_is_refused(checkpoint, cli, corpus, tmp_path, name, where):
    """An index listing ``../store/shard.safetensors`` was read, but neither the fingerprint nor the weights digest
    covered it: after the shard changed, a cron run kept every row 'unchanged' and score took the stale index."""
    encode_then_break(cli, checkpoint(name), corpus, tmp_path, _shard_listed_as(where),
                      file="model.safetensors.index.json",
                      needles=("the weight file", "store/shard.safetensors", "is outside the checkpoint folder"))


@pytest.mark.parametrize("listed", ["../dense_store", "ABSOLUTE"])
def test_a_module_folder_outside_the_checkpoint_folder_is_refused(checkpoint, cli, corpus, tmp_path, listed):
    """modules.json naming ``../dense_store`` for its Dense: read, never fingerprinted (new projection weights kept
    every row 'unchanged')."""
    model = checkpoint("st_native")
    store = tmp_path / "dense_store"

    def breakage(folder):
        shutil.move(folder / "1_Dense", store)
        modules = json.loads((folder / "modules.json").read_text())
        modules[1]["path"] = str(store) if listed == "ABSOLUTE" else listed
        (folder / "modules.json").write_text(json.dumps(modules))

    message = encode_then_break(cli, model, corpus, tmp_path, breakage, file="modules.json",
                                needles=("the module folder", "is outside the checkpoint folder"))
    assert (str(store) if listed == "ABSOLUTE" else listed) in message


def test_shards_linked_from_inside_the_folder_load_and_are_fingerprinted(checkpoint, cli, corpus, tmp_path):
    """A hub cache snapshot: each listed shard is a link (in the folder) to ``../../blobs/<hash>``; it loads, and a
    change of a blob re-encodes every row."""
    model = checkpoint("raw_decoder")
    _shard_listed_as(lambda folder: (folder / "model-00002-of-00002.safetensors", "model-00002-of-00002.safetensors"))(model)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for shard in sorted(model.glob("model-*.safetensors")):
        shutil.move(shard, blobs / shard.name)
        shard.symlink_to(os.path.relpath(blobs / shard.name, model))
    index = tmp_path / "index"
    assert cli("encode", corpus, "-o", index, "--model", model, "--quiet").exit_code == 0
    blob = blobs / "model-00002-of-00002.safetensors"
    save_file(_perturbed(load_file(str(blob))), str(blob))
    again = cli("encode", corpus, "-o", index, "--model", model, "--quiet")
    assert again.exit_code == 0, again.output
    assert manifest(index)["stats"]["updated"] == len(TEXTS)
