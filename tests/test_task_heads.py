"""Encoders saved with their task head (answerdotai/ModernBERT-base is ``ModernBertForMaskedLM``,
distilbert-base-uncased ``DistilBertForMaskedLM``, ELECTRA discriminators ``ElectraForPreTraining``) load in raw
mode as transformers' ``AutoModel`` loads them: the head's tensors (outside the base model's prefix) are left out.
They used to be exit 4 ("checkpoint tensors were not used"). A tensor the base model lacks is still refused, and so
is a head's tensor where ``architectures`` names the base class itself, and one outside the prefix that the head
class does not have (a ColBERT projection ``linear.weight`` next to ``Qwen2ForCausalLM``'s ``lm_head``)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import write_parquet
from raw_checkpoints import build_encoder_with_head, build_raw_decoder
from test_load_check import TEXTS as DOCS, encode_then_break
from test_parity import assert_raw_parity
from tokembed.embedder import Embedder
from tokembed.settings import EncodeFlags

HEADS = ["ModernBertForMaskedLM", "DistilBertForMaskedLM", "ElectraForPreTraining", "BertForSequenceClassification"]
PREFIX = {"ModernBert": "model.", "DistilBert": "distilbert.", "Electra": "electra.", "Bert": "bert."}


@pytest.fixture
def corpus(tmp_path):
    return write_parquet(tmp_path / "docs.parquet", [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)])


def _prefix(head: str) -> str:
    return next(prefix for model, prefix in PREFIX.items() if head.startswith(model + "For"))


@pytest.mark.parametrize("head, native", [(head, "1") for head in HEADS] + [("BertForSequenceClassification", "0")])
def test_raw_mode_on_an_encoder_with_its_head_matches_automodel(tmp_path, monkeypatch, caplog, head, native):
    """BERT on tokembed's native path and on transformers' (``TOKEMBED_NATIVE=0``) alike; the others on transformers'.
    The head's tensors are named in an info log line."""
    monkeypatch.setenv("TOKEMBED_NATIVE", native)
    path = build_encoder_with_head(tmp_path / "ckpt", head)
    with caplog.at_level(logging.INFO, logger="tokembed"):
        embedder = Embedder.load(str(path), EncodeFlags(store_dtype="float32"))
    heads = sorted(name for name in load_file(str(path / "model.safetensors")) if not name.startswith(_prefix(head)))
    assert f"of the {head} head are not used" in caplog.text and heads[0] in caplog.text
    assert (embedder.model.family, embedder.settings.mode) == ("encoder", "raw")
    assert (type(embedder.model.backbone).__name__ == "BertBackbone") == (head.startswith("Bert") and native == "1")
    assert_raw_parity(path, embedder)


def _tensors_edited(change):
    def breakage(folder):
        weights = folder / "model.safetensors"
        tensors = load_file(str(weights))
        change(tensors)
        save_file(tensors, str(weights), metadata={"format": "pt"})
    return breakage


@pytest.mark.parametrize("head", HEADS[:3])
def test_a_base_tensor_missing_is_still_refused(cli, corpus, tmp_path, head):
    path = build_encoder_with_head(tmp_path / "ckpt", head)
    layer_norm = sorted(name for name in load_file(str(path / "model.safetensors"))
                        if name.startswith(_prefix(head)) and "norm" in name.lower())[0]
    encode_then_break(cli, path, corpus, tmp_path, _tensors_edited(lambda tensors: tensors.pop(layer_norm)),
                      needles=("not in the checkpoint", layer_norm.removeprefix(_prefix(head))))


def test_a_stray_tensor_under_the_base_prefix_is_still_refused(cli, corpus, tmp_path):
    path = build_encoder_with_head(tmp_path / "ckpt", "ModernBertForMaskedLM")
    stray = "model.layers.0.attn.rel_scale"
    encode_then_break(cli, path, corpus, tmp_path, _tensors_edited(lambda tensors: tensors.update({stray: torch.ones(4)})),
                      needles=("were not used", "rel_scale"))


def test_head_tensors_of_a_base_class_save_are_still_refused(cli, corpus, tmp_path):
    """``architectures`` naming the base class (``ModernBertModel``): nothing says the extra tensors are a head."""
    path = build_encoder_with_head(tmp_path / "ckpt", "ModernBertForMaskedLM")

    def as_base_class(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "architectures": ["ModernBertModel"]}))

    encode_then_break(cli, path, corpus, tmp_path, as_base_class, file="model.safetensors",
                      needles=("were not used", "head.dense.weight"))


def _decoder_with_head(path, head):
    """The raw decoder saved with its head class's own tensors outside ``model.``: ``Qwen2ForCausalLM`` with an
    untied ``lm_head``, ``Qwen2ForSequenceClassification`` with its ``score``."""
    path = build_raw_decoder(path)
    config = json.loads((path / "config.json").read_text())
    tensors = load_file(str(path / "model.safetensors"))
    if head == "Qwen2ForCausalLM":
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"] * 2
        config["tie_word_embeddings"] = False
    else:
        tensors["score.weight"] = torch.randn(2, config["hidden_size"])  # num_labels 2, transformers' default
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({**config, "architectures": [head]}))
    return path


@pytest.mark.parametrize("head, native, strays", [
    ("Qwen2ForCausalLM", "1", ("linear.weight",)),
    ("Qwen2ForCausalLM", "1", ("linear.weight", "score.weight")),
    ("Qwen2ForSequenceClassification", "1", ("linear.weight",)),
    ("BertForMaskedLM", "1", ("linear.weight",)),
    ("BertForMaskedLM", "0", ("linear.weight",)),
    ("BertForSequenceClassification", "1", ("linear.weight",)),
])
def test_a_tensor_the_head_class_lacks_is_refused(cli, corpus, tmp_path, monkeypatch, head, native, strays):
    """A ColBERT projection (``linear.weight``) saved outside the base prefix is no tensor of the head class: it used
    to be ignored with the head's, and raw hidden states were indexed (exit 0). The head's own tensors
    (``lm_head``, ``score``, ``cls.predictions``, ``classifier``) still load: the first, healthy encode passes."""
    monkeypatch.setenv("TOKEMBED_NATIVE", native)
    if head.startswith("Qwen2"):
        path = _decoder_with_head(tmp_path / "ckpt", head)
    else:
        path = build_encoder_with_head(tmp_path / "ckpt", head)
    hidden = json.loads((path / "config.json").read_text())["hidden_size"]
    added = {name: torch.randn(16 if name == "linear.weight" else 3, hidden) for name in strays}
    encode_then_break(cli, path, corpus, tmp_path, _tensors_edited(lambda tensors: tensors.update(added)),
                      needles=("were not used", *strays))
