"""A vision checkpoint that also carries a sentence-transformers module tree: a vision family loads the folder itself
and applies no module, so a module with weights (a ``1_Dense``, listed in ``modules.json`` or not) or one that changes
the vectors (a ``MultiVectorMask``) is refused (exit 4), as it is for a text checkpoint; the root Transformer with
``Pooling`` / ``Normalize`` / ``Dropout`` leaves the family's vectors as they are and loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import colpali_engine_checkpoints
import qwen3_vl_checkpoints
import qwen_checkpoints
import vision_checkpoints
from tokembed.errors import ModelError
from tokembed.models import LoadOptions, detect, load_model
from tokembed.settings import EncodeFlags, resolve

BUILDERS = {  # name -> (builder, family key)
    "colqwen2": (vision_checkpoints.build_colqwen2, "ColQwen2ForRetrieval"),
    "colqwen2_engine": (colpali_engine_checkpoints.build_colqwen2_engine, "ColQwen2"),
    "tomoro": (qwen3_vl_checkpoints.build_tomoro, "ColQwen3"),
    "nemotron": (qwen3_vl_checkpoints.build_nemotron, "Qwen3VLNemotronEmbedModel"),
    "colqwen3_5": (qwen_checkpoints.build_colqwen3_5, "ColQwen3_5"),
}
TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_tree")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = BUILDERS[name][0](root / name)
        return cache[name]

    return get


@pytest.fixture
def copy_of(built, tmp_path):
    def get(name: str) -> Path:
        return Path(shutil.copytree(built(name), tmp_path / name))

    return get


def write_dense(folder: Path, in_features: int = 16, out_features: int = 8) -> None:
    folder.mkdir()
    folder.joinpath("config.json").write_text(json.dumps({
        "in_features": in_features, "out_features": out_features, "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity"}))
    save_file({"linear.weight": torch.randn(out_features, in_features)}, str(folder / "model.safetensors"))


def write_modules(path: Path, *modules: dict) -> None:
    path.joinpath("modules.json").write_text(json.dumps([TRANSFORMER, *modules]))


@pytest.mark.parametrize("name", BUILDERS)
def test_an_unlisted_module_folder_with_weights_is_refused(copy_of, name):
    path = copy_of(name)
    write_dense(path / "2_Dense")
    with pytest.raises(ModelError, match=r"2_Dense: a sentence-transformers module with weights, but the checkpoint "
                                         r"has no modules.json; its weights would not be used"):
        detect(path)
    write_modules(path, {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    with pytest.raises(ModelError, match=r"2_Dense: .* modules.json does not list it; its weights would not be used"):
        detect(path)


@pytest.mark.parametrize(("name", "dense_type"), [("colqwen2", "pylate.models.Dense.Dense"),
                                                  ("colqwen2_engine", "pylate.models.Dense.Dense"),
                                                  ("tomoro", "sentence_transformers.models.Dense"),
                                                  ("colqwen3_5", "sentence_transformers.models.Dense")])
def test_a_listed_dense_is_refused_naming_its_folder_and_the_family(copy_of, name, dense_type):
    path = copy_of(name)
    write_dense(path / "1_Dense")
    write_modules(path, {"idx": 1, "name": "1", "path": "1_Dense", "type": dense_type})
    with pytest.raises(ModelError, match=rf"1_Dense: a sentence-transformers Dense module with weights that "
                                         rf"modules.json lists, but family {BUILDERS[name][1]} .* its weights would "
                                         "not be used"):
        detect(path)


def test_modules_that_change_the_vectors_are_refused(copy_of):
    path = copy_of("colqwen2_engine")
    write_modules(path, {"idx": 1, "name": "1", "path": "1_MultiVectorMask",
                         "type": "sentence_transformers.models.MultiVectorMask"})
    (path / "1_MultiVectorMask").mkdir()
    for dropping in ({"skiplist_words": ["."]}, {"keep_only_token_ids": [1, 2]}):  # a mask that drops vectors
        (path / "1_MultiVectorMask" / "config.json").write_text(json.dumps(dropping))
        with pytest.raises(ModelError, match=r"module '1_MultiVectorMask' is a .*MultiVectorMask', which family "
                                             "ColQwen2 does not apply"):
            detect(path)
    path.joinpath("modules.json").write_text(json.dumps([{**TRANSFORMER, "path": "0_Transformer"}]))
    shutil.copytree(path, path / "0_Transformer", ignore=shutil.ignore_patterns("0_Transformer", "modules.json"))
    with pytest.raises(ModelError, match=r"0_Transformer: a sentence-transformers Transformer module with weights"):
        detect(path)
    write_modules(path, {"idx": 1, "name": "1", "path": "1_CNN", "type": "sentence_transformers.models.CNN"})
    with pytest.raises(ModelError, match="which tokembed does not apply"):
        detect(path)


def test_the_root_transformer_with_pooling_normalize_and_dropout_loads_to_the_same_vectors(built, copy_of):
    path = copy_of("colqwen2")
    write_modules(path, {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                  {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
                  {"idx": 3, "name": "3", "path": "", "type": "sentence_transformers.models.Dropout"})
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 16, "pooling_mode_mean_tokens": True}))
    (path / "2_Normalize").mkdir()
    assert detect(path) == "ColQwen2ForRetrieval"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    vectors = [document_vectors(load_model(folder, LoadOptions()), image) for folder in (built("colqwen2"), path)]
    np.testing.assert_array_equal(vectors[0], vectors[1])


def document_vectors(model, image) -> np.ndarray:
    settings = resolve(EncodeFlags(kind="document", store_dtype="float32"), model.colbert, model.max_length)
    encoder = model.make_encoder(settings)
    items = encoder.tokenize([image])
    return encoder.finish(encoder.embed(encoder.collate(items)), items)[0][0]


def test_encode_refuses_a_vision_checkpoint_with_a_dense_folder(copy_of, tmp_path, cli):
    path = copy_of("colqwen2")
    write_dense(path / "1_Dense")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 24), "white").save(images / "a.png")
    result = cli("encode", images, "--model", path, "-o", tmp_path / "index", "--quiet")
    assert result.exit_code == 4, result.output
    assert f"{path / '1_Dense'}: a sentence-transformers module with weights" in result.stderr
    assert not (tmp_path / "index").exists()


def test_a_remote_code_saves_own_class_at_the_root_is_the_model_the_family_loads(copy_of):
    # a remote-code checkpoint's modules.json may name its own class for the root module: the family reads that root
    path = copy_of("tomoro")
    root = {**TRANSFORMER, "type": "custom_st.Transformer"}
    (path / "modules.json").write_text(json.dumps([root]))
    assert detect(path) == BUILDERS["tomoro"][1]
    (path / "modules.json").write_text(json.dumps([root, {**TRANSFORMER, "idx": 1, "name": "1", "path": "1_CNN",
                                                          "type": "custom_st.CNN"}]))
    with pytest.raises(ModelError, match="custom_st.CNN"):
        detect(path)


@pytest.mark.parametrize("values, named", [
    ({"prompts": {"query": "find: "}}, "prompts query"),
    ({"document_prefix": "[D] "}, "document_prefix"),
    ({"model_type": "ColBERT"}, "model_type 'ColBERT'"),
])
def test_prompts_apply_whatever_the_root_class_so_a_remote_code_save_is_refused(copy_of, values, named):
    # sentence-transformers prepends its prompts (and PyLate's prefixes, and appends v3's mask) whatever class loads
    # the root; lengths and expansion reach only its own Transformer, which a remote-code class may not be
    path = copy_of("tomoro")
    (path / "modules.json").write_text(json.dumps([{**TRANSFORMER, "type": "custom_st.Transformer"}]))
    (path / "sentence_bert_config.json").write_text(json.dumps({"document_length": 12}))
    assert detect(path) == BUILDERS["tomoro"][1]
    (path / "config_sentence_transformers.json").write_text(json.dumps(values))
    with pytest.raises(ModelError, match=rf"config_sentence_transformers.json {named} is a sentence-transformers "
                                         "setting that family ColQwen3's own code does not apply"):
        detect(path)


def test_a_sentence_transformers_save_of_a_vision_checkpoint_loads_to_the_same_vectors(built, st_saved):
    # MultiVectorEncoder saves a *ForRetrieval checkpoint with a MultiVectorMask that keeps the attention mask
    saved = st_saved
    assert [module["path"] for module in json.loads((saved / "modules.json").read_text())] == ["", "1_MultiVectorMask"]
    assert detect(saved) == "ColQwen2ForRetrieval"
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    vectors = [document_vectors(load_model(folder, LoadOptions()), image) for folder in (built("colqwen2"), saved)]
    np.testing.assert_array_equal(vectors[0], vectors[1])


@pytest.fixture(scope="module")
def st_saved(built, tmp_path_factory):
    from sentence_transformers import MultiVectorEncoder

    saved = tmp_path_factory.mktemp("st_saved") / "colqwen2"
    MultiVectorEncoder(str(built("colqwen2")), device="cpu", local_files_only=True).save(str(saved))
    return saved


@pytest.mark.parametrize("file, values, named", [
    ("config_sentence_transformers.json", {"prompts": {"query": "find: ", "document": ""}}, "prompts query"),
    ("config_sentence_transformers.json", {"skiplist_words": ["."]},
     r"skiplist_words \(it turns query expansion on\)"),
    ("config_sentence_transformers.json", {"model_type": "ColBERT", "do_query_expansion": False},
     "model_type 'ColBERT'"),  # a PyLate v3 save: sentence-transformers appends a punctuation skiplist
    ("sentence_bert_config.json", {"query_expansion": {"strategy": "fixed", "attend": True, "token": None,
                                                       "length": 64}}, "query_expansion"),
    ("sentence_bert_config.json", {"document_length": 12}, "document_length"),
])
def test_settings_sentence_transformers_would_apply_to_a_vision_save_are_refused(st_saved, tmp_path, file, values,
                                                                                  named):
    # MultiVectorEncoder applies them to the vision model it loads; the family's own code has none of them
    path = Path(shutil.copytree(st_saved, tmp_path / "edited"))
    data = json.loads((path / file).read_text())
    (path / file).write_text(json.dumps({**data, **values}))
    with pytest.raises(ModelError, match=rf"{file} {named} is a sentence-transformers setting that family "
                                         "ColQwen2ForRetrieval's own code does not apply"):
        detect(path)


@pytest.mark.parametrize("file, values", [
    ("config_sentence_transformers.json", {"query_expansion": None}),
    ("config_sentence_transformers.json", {"do_query_expansion": False}),
    # the saved MultiVectorMask's empty skiplist wins over the flat one (it only seeds a mask the reference builds)
    ("config_sentence_transformers.json", {"do_query_expansion": False, "query_prefix": "", "skiplist_words": ["."]}),
    ("sentence_bert_config.json", {"query_expansion": None, "query_length": None, "document_length": None}),
])
def test_settings_that_leave_sentence_transformers_as_the_family_load(st_saved, tmp_path, file, values):
    # expansion turned off, empty prefixes and null lengths: MultiVectorEncoder applies nothing the family lacks
    path = Path(shutil.copytree(st_saved, tmp_path / "edited"))
    data = json.loads((path / file).read_text())
    (path / file).write_text(json.dumps({**data, **values}))
    assert detect(path) == "ColQwen2ForRetrieval"


def test_a_flat_key_that_turns_expansion_on_is_named_with_why(st_saved, tmp_path):
    path = Path(shutil.copytree(st_saved, tmp_path / "edited"))
    data = json.loads((path / "config_sentence_transformers.json").read_text())
    (path / "config_sentence_transformers.json").write_text(json.dumps({**data, "attend_to_expansion_tokens": False}))
    with pytest.raises(ModelError, match=r"attend_to_expansion_tokens \(it turns query expansion on\)"):
        detect(path)
