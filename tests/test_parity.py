"""Parity with the references on the same tiny checkpoint, for every layout tokembed reads.

colbert mode vs ``sentence_transformers.MultiVectorEncoder`` (which reproduces PyLate exactly): identical
token ids and counts, max |delta| <= 1e-5 per vector in float32. raw mode vs transformers'
``last_hidden_state`` (+ projection), normalized.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from checkpoints import CHECKPOINT_SPECS
from tokembed.embedder import Embedder
from tokembed.settings import EncodeFlags

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "!!! ... ??? ;;; ---",
    "emoji 🎉 and cjk 漢字 mixed, in one line!",
    "the cat sat on the mat, and the dog barked at the cat. " * 12,  # longer than document_length
    "what is the capital of france?",
]


def reference_outputs(path, texts, kind):
    from sentence_transformers import MultiVectorEncoder

    model = MultiVectorEncoder(str(path), device="cpu", local_files_only=True)
    encode = model.encode_query if kind == "query" else model.encode_document
    features = encode(texts, output_value=None, batch_size=4)
    vectors = encode(texts, batch_size=4)
    results = []
    for feature, vecs in zip(features, vectors):
        mask = feature["attention_mask"].bool()
        results.append((feature["input_ids"][mask].numpy(), vecs.float().numpy()))
    return results


@pytest.mark.parametrize("kind", ["document", "query"])
@pytest.mark.parametrize("layout", list(CHECKPOINT_SPECS))
def test_colbert_mode_matches_multivector_encoder(checkpoint_store, layout, kind):
    path = checkpoint_store(layout)
    expected = reference_outputs(path, TEXTS, kind)
    embedder = Embedder.load(str(path), EncodeFlags(kind=kind, store_dtype="float32"))
    assert embedder.settings.mode == "colbert"
    got = embedder.embed(TEXTS, batch_tokens=64)
    spec = CHECKPOINT_SPECS[layout]
    for text, (ref_ids, ref_vecs), (vecs, ids) in zip(TEXTS, expected, got):
        assert ids.tolist() == ref_ids.tolist(), (layout, kind, text)
        assert vecs.shape == ref_vecs.shape == (len(ids), spec["dim"])
        assert np.abs(vecs - ref_vecs).max() <= 1e-5, (layout, kind, text)
        if kind == "query":
            assert len(ids) == spec["query_length"]
        else:
            assert len(ids) <= spec["document_length"]


def test_punctuation_is_skipped_only_in_documents(checkpoint_store):
    path = checkpoint_store("pylate_bert")
    doc = Embedder.load(str(path), EncodeFlags(kind="document")).embed(["a , b ."])[0][1]
    query = Embedder.load(str(path), EncodeFlags(kind="query")).embed(["a , b ."])[0][1]
    embedder = Embedder.load(str(path), EncodeFlags(kind="document"))
    comma, dot = embedder.model.tokenizer.convert_tokens_to_ids([",", "."])
    assert comma not in doc and dot not in doc
    assert comma in query and dot in query


def raw_reference(path, texts, projection=None, max_length=None):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    results = []
    for text in texts:
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
        if encoded["input_ids"].shape[1] == 0:  # a decoder tokenizer adds no special tokens: nothing to run
            results.append((np.zeros(0, dtype=np.int64), np.zeros((0, model.config.hidden_size), np.float32)))
            continue
        with torch.no_grad():
            hidden = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).last_hidden_state[0]
            if projection is not None:
                hidden = projection(hidden)
        results.append((encoded["input_ids"][0].numpy(), torch.nn.functional.normalize(hidden, dim=-1).numpy()))
    return results


@pytest.mark.parametrize("layout", ["raw_encoder", "raw_decoder"])
def test_raw_mode_matches_last_hidden_state(checkpoint_store, layout):
    path = checkpoint_store(layout)
    embedder = Embedder.load(str(path), EncodeFlags(store_dtype="float32"))
    assert embedder.settings.mode == "raw"
    assert_raw_parity(path, embedder)


def assert_raw_parity(path, embedder) -> None:
    """The embedder's vectors of TEXTS are transformers' last hidden state of the same folder (``raw_reference``)."""
    got = embedder.embed(TEXTS, batch_tokens=64)
    for (ref_ids, ref_vecs), (vecs, ids) in zip(raw_reference(path, TEXTS, max_length=embedder.settings.max_length), got):
        assert ids.tolist() == ref_ids.tolist()
        assert vecs.shape == ref_vecs.shape
        assert vecs.size == 0 or np.abs(vecs - ref_vecs).max() <= 1e-5


def test_raw_mode_applies_sentence_transformers_dense(checkpoint_store):
    from safetensors.torch import load_file

    path = checkpoint_store("raw_projection")
    weights = load_file(str(path / "2_Dense" / "model.safetensors"))
    linear = torch.nn.Linear(*reversed(weights["linear.weight"].shape))
    linear.load_state_dict({"weight": weights["linear.weight"], "bias": weights["linear.bias"]})

    def project(hidden):
        return torch.tanh(linear(hidden))

    embedder = Embedder.load(str(path), EncodeFlags(store_dtype="float32"))
    got = embedder.embed(TEXTS)
    for (ref_ids, ref_vecs), (vecs, ids) in zip(raw_reference(path, TEXTS, project, embedder.settings.max_length), got):
        assert ids.tolist() == ref_ids.tolist()
        assert vecs.shape[1] == weights["linear.weight"].shape[0]
        assert np.abs(vecs - ref_vecs).max() <= 1e-5


def test_raw_mode_on_a_colbert_checkpoint_uses_no_colbert_processing(checkpoint_store):
    path = checkpoint_store("stanford")
    embedder = Embedder.load(str(path), EncodeFlags(mode="raw", kind="query"))
    (vecs, ids), = embedder.embed(["hello world"])
    tokenizer = embedder.model.tokenizer
    assert ids.tolist() == tokenizer("hello world")["input_ids"]  # no marker, no [MASK] expansion
    assert vecs.shape[1] == 24  # the projection still applies


def test_bfloat16_is_close_to_float32(checkpoint_store):
    path = checkpoint_store("pylate_bert")
    exact = Embedder.load(str(path), EncodeFlags(store_dtype="float32")).embed(TEXTS)
    fast = Embedder.load(str(path), EncodeFlags(store_dtype="float32", dtype="bfloat16")).embed(TEXTS)
    for (a, ids_a), (b, ids_b) in zip(exact, fast):
        assert ids_a.tolist() == ids_b.tolist()
        cosine = (a * b).sum(axis=1)
        assert cosine.min() >= 0.99
