"""A Stanford ``HF_ColBERT`` folder that also carries a PyLate module tree (``modules.json``, ``1_Dense``,
``config_sentence_transformers.json``), as PyLate conversions of colbert-ai checkpoints do: colbert-ai reads the
first, PyLate 1.6 the second; likewise a native sentence-transformers tree (``MultiVectorEncoder.save``, markers as
``prompts``). Where they say the same, the folder loads as the Stanford folder alone; where they disagree (the
projection, a length, a marker), the load is refused (exit 4) naming both layouts."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from checkpoints import build_stanford
from helpers import write_parquet
from jina_checkpoints import build_jina_colbert
from pylate_checkpoints import add_pylate_module_tree
from tokembed.embedder import Embedder
from tokembed.settings import EncodeFlags

TEXTS = ["Paris is the capital of France.", "Mars, known for its reddish appearance, is the Red Planet!", "hi"]
BUILDERS = {"stanford": build_stanford, "jina": build_jina_colbert}


@pytest.fixture(scope="module")
def alone(tmp_path_factory):
    """Each Stanford-layout checkpoint without a module tree, built once."""
    root = tmp_path_factory.mktemp("both-layouts")
    return {name: build(root / name) for name, build in BUILDERS.items()}


def with_module_tree(alone, tmp_path, name="stanford", **settings):
    path = tmp_path / f"{name}-both"
    shutil.copytree(alone[name], path)
    return add_pylate_module_tree(path, **settings)


def embedded(path, kind):
    embedder = Embedder.load(str(path), EncodeFlags(kind=kind, store_dtype="float32"))
    return embedder.embed(TEXTS), embedder.model.family


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("kind", ["query", "document"])
def test_agreeing_layouts_load_as_the_stanford_folder(alone, tmp_path, name, kind):
    expected, family = embedded(alone[name], kind)
    got, got_family = embedded(with_module_tree(alone, tmp_path, name), kind)
    assert got_family == family
    for (vectors, ids), (want_vectors, want_ids) in zip(got, expected):
        assert np.array_equal(ids, want_ids)
        assert np.array_equal(vectors, want_vectors)


def _moved(weight: torch.Tensor) -> torch.Tensor:
    moved = weight.clone()
    moved[0, 0] = torch.nextafter(moved[0, 0], torch.tensor(1.0))  # one value, one ulp
    return moved


def _dense_weight(alone, name):
    from safetensors import safe_open

    with safe_open(str(alone[name] / "model.safetensors"), "pt") as weights:
        return weights.get_tensor("linear.weight")


DISAGREEMENTS = {
    "projection": (lambda weight: {"dense_weight": _moved(weight)}, "value for value"),
    "document length": (lambda weight: {"document_length": 12}, "doc_maxlen"),
    "query length": (lambda weight: {"query_length": 7}, "query_maxlen"),
    "query marker": (lambda weight: {"query_prefix": "[Q] "}, "query_token_id"),
    "skiplist": (lambda weight: {"skiplist_words": ["."]}, "mask_punctuation"),
    "attention to expansion": (lambda weight: {"attend_to_expansion_tokens": True}, "attend_to_mask_tokens"),
}


@pytest.mark.parametrize("what", list(DISAGREEMENTS))
def test_disagreeing_layouts_are_refused(cli, alone, tmp_path, what):
    settings, needle = DISAGREEMENTS[what]
    model = with_module_tree(alone, tmp_path, **settings(_dense_weight(alone, "stanford")))
    corpus = write_parquet(tmp_path / "docs.parquet", [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)])
    result = cli("encode", corpus, "-o", tmp_path / "index", "--model", model, "--quiet")
    assert result.exit_code == 4, result.output
    for part in (str(model), "artifact.metadata", "modules.json", "config_sentence_transformers.json", needle,
                 "colbert-ai reads"):
        assert part in result.stderr, (part, result.stderr)
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_a_jina_checkpoint_with_a_disagreeing_module_tree_is_refused(alone, tmp_path):
    from tokembed.errors import ModelError

    model = with_module_tree(alone, tmp_path, "jina", document_length=180)  # artifact.metadata: doc_maxlen 300
    with pytest.raises(ModelError, match="doc_maxlen reads as 300.*document_length as 180"):
        Embedder.load(str(model), EncodeFlags(kind="document"))


@pytest.fixture(scope="module")
def native_tree(alone, tmp_path_factory):
    """What ``MultiVectorEncoder(stanford).save()`` writes (modules 0, 1_Dense, 2_MultiVectorMask, 3_Normalize,
    ``prompts`` {"query": "[unused0] ", ...}, the tokenizer with the markers registered), saved once."""
    from sentence_transformers import MultiVectorEncoder

    saved = tmp_path_factory.mktemp("native-tree")
    MultiVectorEncoder(str(alone["stanford"]), device="cpu", local_files_only=True).save(str(saved))
    return saved


def with_native_module_tree(alone, native_tree, tmp_path, prompts=None, backbone=None, stanford_tokenizer=False):
    """The Stanford folder with the native tree beside it (its own config.json and model.safetensors kept);
    ``prompts`` / ``backbone`` override keys of config_sentence_transformers.json / sentence_bert_config.json."""
    import json

    path = tmp_path / "stanford-native"
    shutil.copytree(alone["stanford"], path)
    for item in native_tree.iterdir():
        if item.name in ("config.json", "model.safetensors"):
            continue
        if stanford_tokenizer and item.name.startswith("tokenizer"):
            continue  # the Stanford root's tokenizer, its markers not registered
        copy = shutil.copytree if item.is_dir() else shutil.copy
        copy(item, path / item.name)
    for name, overrides in (("config_sentence_transformers.json", {"prompts": prompts}),
                            ("sentence_bert_config.json", backbone or {})):
        config = json.loads((path / name).read_text())
        config.update({key: value for key, value in overrides.items() if value is not None})
        (path / name).write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("kind", ["query", "document"])
def test_an_agreeing_native_module_tree_loads_as_the_stanford_folder(alone, native_tree, tmp_path, kind):
    """Its prompts are text that keeps its space ("[unused0] "), no PyLate marker token: they agree with
    query_token_id where the saved tokenizer reads them as colbert-ai's insertion."""
    from sentence_transformers import MultiVectorEncoder

    model = with_native_module_tree(alone, native_tree, tmp_path)
    expected, family = embedded(alone["stanford"], kind)
    got, got_family = embedded(model, kind)
    assert got_family == family
    reference = MultiVectorEncoder(str(model), device="cpu", local_files_only=True)
    want = (reference.encode_query if kind == "query" else reference.encode_document)(TEXTS)
    for (vectors, ids), (want_vectors, want_ids), reference_vectors in zip(got, expected, want):
        assert np.array_equal(ids, want_ids)
        assert np.array_equal(vectors, want_vectors)
        assert np.allclose(vectors, np.asarray(reference_vectors), atol=1e-6)


NATIVE_DISAGREEMENTS = {
    "query prompt": ({"prompts": {"query": "[unused1] ", "document": "[unused1] "}},
                     ("query_token_id reads as '[unused0]'", "prompts query as '[unused1] '")),
    "document prompt": ({"prompts": {"query": "[unused0] ", "document": "passage: "}},
                        ("doc_token_id reads as '[unused1]'", "prompts document as 'passage: '")),
    "query length": ({"backbone": {"query_expansion": {"strategy": "fixed", "attend": False, "token": None,
                                                       "length": 7}}},
                     ("query_maxlen reads as 16", "sentence_bert_config.json query_expansion length as 7")),
    "document length": ({"backbone": {"document_length": 12}},
                        ("doc_maxlen reads as 40", "sentence_bert_config.json document_length as 12")),
    "markers read as text": ({"stanford_tokenizer": True},
                             ("prompts query '[unused0] ' is text", "query_token_id '[unused0]'")),
}


@pytest.mark.parametrize("what", list(NATIVE_DISAGREEMENTS))
def test_a_disagreeing_native_module_tree_is_refused(cli, alone, native_tree, tmp_path, what):
    settings, needles = NATIVE_DISAGREEMENTS[what]
    model = with_native_module_tree(alone, native_tree, tmp_path, **settings)
    corpus = write_parquet(tmp_path / "docs.parquet", [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)])
    result = cli("encode", corpus, "-o", tmp_path / "index", "--model", model, "--quiet")
    assert result.exit_code == 4, result.output
    for part in (str(model), "artifact.metadata", "modules.json", *needles, "colbert-ai reads"):
        assert part in result.stderr, (part, result.stderr)
    assert "query_prefix" not in result.stderr and "document_prefix" not in result.stderr  # keys the tree lacks
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_native_prompts_the_saved_tokenizer_reads_as_text_give_other_vectors(alone, native_tree, tmp_path):
    """Why "markers read as text" is refused: MultiVectorEncoder reads that tree's "[unused0] " as word pieces."""
    from sentence_transformers import MultiVectorEncoder

    model = with_native_module_tree(alone, native_tree, tmp_path, stanford_tokenizer=True)
    tree = MultiVectorEncoder(str(model), device="cpu", local_files_only=True).encode_query(TEXTS[:1])
    stanford = MultiVectorEncoder(str(alone["stanford"]), device="cpu", local_files_only=True).encode_query(TEXTS[:1])
    assert np.asarray(tree[0]).shape != np.asarray(stanford[0]).shape or not np.allclose(tree[0], stanford[0])
