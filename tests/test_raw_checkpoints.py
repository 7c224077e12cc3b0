"""The raw layouts of ``tests/raw_checkpoints.py`` load in the reference libraries (transformers' Auto* classes,
sentence-transformers) with their saved weights; a folder with an unknown ``model_type`` does not."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file


def test_raw_encoder_loads_with_automodel(checkpoint_store):
    from transformers import AutoModel, AutoTokenizer, BertModel

    path = checkpoint_store("raw_encoder")
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    assert isinstance(model, BertModel)
    saved = load_file(path / "model.safetensors")
    live = model.state_dict()
    assert set(live) == set(saved)
    assert all(torch.equal(live[key], saved[key]) for key in live)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    encoded = tokenizer(["Paris is the capital of France."], return_tensors="pt")
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0].tolist())[-2:] == [".", "[SEP]"]
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state
    assert hidden.shape[-1] == 32 and torch.isfinite(hidden).all()


def test_raw_decoder_loads_with_automodel_for_causal_lm(checkpoint_store):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

    path = checkpoint_store("raw_decoder")
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    assert isinstance(model, Qwen2ForCausalLM)
    assert hasattr(model.model, "norm")
    saved = load_file(path / "model.safetensors")
    live = model.model.state_dict()
    assert all(torch.equal(live[key], saved[f"model.{key}"]) for key in live)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    encoded = tokenizer(["Paris is the capital of France."], return_tensors="pt")
    with torch.no_grad():
        out = model(**encoded, output_hidden_states=True)
    assert out.logits.shape[-1] == model.config.vocab_size
    assert torch.isfinite(out.hidden_states[-1]).all()


def test_raw_projection_loads_as_sentence_transformer_and_converts(checkpoint_store):
    from sentence_transformers import MultiVectorEncoder, SentenceTransformer
    from sentence_transformers.base.modules import Dense

    path = checkpoint_store("raw_projection")
    dense_weights = load_file(path / "2_Dense" / "model.safetensors")

    st_model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    sentence = st_model.encode(["Paris is the capital of France."], convert_to_tensor=True)
    assert sentence.shape == (1, 16) and torch.isfinite(sentence).all()

    # The reference multi-vector loader drops the Pooling and redirects the Dense to token level.
    mve = MultiVectorEncoder(str(path), device="cpu", local_files_only=True)
    dense = next(module for module in mve if isinstance(module, Dense))
    assert dense.module_input_name == "token_embeddings"
    assert torch.equal(dense.linear.weight.cpu(), dense_weights["linear.weight"])
    tokens = mve.encode_document(["Paris is the capital of France."])[0]
    assert tokens.shape[1] == 16 and torch.isfinite(tokens).all()


def test_unknown_layout_is_rejected(checkpoint_store):
    from transformers import AutoConfig

    path = checkpoint_store("unknown_layout")
    with pytest.raises((ValueError, KeyError)):
        AutoConfig.from_pretrained(str(path), local_files_only=True)
