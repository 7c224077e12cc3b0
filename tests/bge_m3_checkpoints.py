"""A tiny BGE-M3 checkpoint (family ``bge-m3``) in the published ``BAAI/bge-m3`` layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch

HIDDEN = 32


def build_bge_m3(path: Path) -> Path:
    """A tiny random XLM-RoBERTa in the published bge-m3 layout: weights without prefix, colbert_linear.pt,
    sparse_linear.pt, and the sentence-transformers CLS dense-embedding files (no Dense)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from text_tokenizers import _xlmr_tokenizer

    path.mkdir(parents=True)
    tokenizer = _xlmr_tokenizer()
    tokenizer.model_max_length = 8192
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=8194, type_vocab_size=1, initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        architectures=["XLMRobertaModel"],
    )
    torch.manual_seed(11)
    XLMRobertaModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    torch.save(torch.nn.Linear(HIDDEN, HIDDEN).state_dict(), path / "colbert_linear.pt")
    torch.save(torch.nn.Linear(HIDDEN, 1).state_dict(), path / "sparse_linear.pt")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": True}
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (path / "config_sentence_transformers.json").write_text(json.dumps({"__version__": {"sentence_transformers": "2.2.2"}}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 8192, "do_lower_case": False}))
    return path
