"""A Stanford ``HF_ColBERT`` folder that also carries a PyLate module tree (``modules.json``, ``1_Dense``,
``config_sentence_transformers.json``), as PyLate conversions of colbert-ai checkpoints do: colbert-ai reads the
first, PyLate 1.6 the second. Where they say the same, the folder loads as the Stanford folder alone; where they
disagree (the projection, a length, a marker), the load is refused (exit 4) naming both layouts."""

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
