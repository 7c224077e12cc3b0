"""Tiny, random, offline jina-colbert-v2 checkpoints in the real repository's layout.

``build_jina_colbert(path)`` writes what ``jinaai/jina-colbert-v2`` ships, scaled down: ``config.json``
(``architectures: ["HF_ColBERT"]``, ``auto_map`` into ``jinaai/xlm-roberta-flash-implementation``, the
``XLMRobertaFlashConfig`` keys: ``position_embedding_type: rotary``, ``rotary_emb_base``, ``layer_norm_eps``,
8,194 positions, ...), ``model.safetensors`` in Jina's fused names under ``roberta.`` plus ``linear.weight``,
``artifact.metadata`` (``[QueryMarker]`` / ``[DocumentMarker]``, query 32, doc 300, ``attend_to_mask_tokens``)
and an XLM-R Unigram/Metaspace tokenizer with the two marker tokens.

The weights are a random transformers ``XLMRobertaModel`` renamed the way Jina's
``convert_roberta_weights_to_flash.py`` renames them (q, k, v fused into ``mixer.Wqkv``; ``emb_ln``,
``norm1`` / ``norm2``, ``mlp.fc1`` / ``fc2``; the absolute position table dropped: the model is rotary).
``to_transformers_state`` maps them back, for a reference built from transformers' own XLM-R layers.
"""

from __future__ import annotations

import json
import pathlib
import re

import torch
from safetensors.torch import save_file

from text_tokenizers import _prepare, _write_json, _xlmr_tokenizer

__all__ = ["DIM", "MARKERS", "ROTARY_BASE", "build_jina_colbert", "to_transformers_state"]

DIM = 20
ROTARY_BASE = 20000.0
LAYER_NORM_EPS = 1e-5
MARKERS = ("[QueryMarker]", "[DocumentMarker]")
_FLASH = "jinaai/xlm-roberta-flash-implementation--"

# transformers XLM-R name (after "roberta.") -> Jina's flash name, as convert_roberta_weights_to_flash.py maps.
_TO_JINA = [
    (r"^embeddings\.LayerNorm\.", "emb_ln."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"encoder.layers.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"encoder.layers.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layers.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.\1.mixer.out_proj."),
]


def _config(vocab_size: int, pad_id: int) -> dict:
    """jina-colbert-v2's config.json keys, with tiny sizes."""
    return {
        "_name_or_path": "jinaai/jina-colbert-v2",
        "architectures": ["HF_ColBERT"],
        "auto_map": {
            "AutoConfig": _FLASH + "configuration_xlm_roberta.XLMRobertaFlashConfig",
            "AutoModel": _FLASH + "modeling_xlm_roberta.XLMRobertaModel",
            "AutoModelForMaskedLM": _FLASH + "modeling_xlm_roberta.XLMRobertaForMaskedLM",
        },
        "attention_probs_dropout_prob": 0.1,
        "bos_token_id": 0,
        "classifier_dropout": None,
        "emb_pooler": None,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "layer_norm_eps": LAYER_NORM_EPS,
        "load_trained_adapters": False,
        "lora_adaptations": None,
        "lora_alpha": 1,
        "lora_dropout_p": 0.0,
        "lora_main_params_trainable": False,
        "lora_rank": 4,
        "matryoshka_dimensions": None,
        "max_position_embeddings": 8194,
        "model_type": "xlm-roberta",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "output_past": True,
        "pad_token_id": pad_id,
        "position_embedding_type": "rotary",
        "rotary_emb_base": ROTARY_BASE,
        "torch_dtype": "float32",
        "truncate_dim": None,
        "type_vocab_size": 1,
        "use_cache": False,
        "use_flash_attn": True,
        "vocab_size": vocab_size,
    }


def _metadata() -> dict:
    return {
        "query_token_id": MARKERS[0],
        "doc_token_id": MARKERS[1],
        "query_token": "[QueryMarker]",
        "doc_token": "[DocumentMarker]",
        "query_maxlen": 32,
        "doc_maxlen": 300,
        "attend_to_mask_tokens": True,
        "mask_punctuation": True,
        "dim": DIM,
        "similarity": "cosine",
        "interaction": "colbert",
        "checkpoint": "jinaai/jina-colbert-v2",
    }


def _random_backbone(vocab_size: int, pad_id: int):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    config = XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=8194, type_vocab_size=1, initializer_range=0.1, pad_token_id=pad_id,
        layer_norm_eps=LAYER_NORM_EPS,
    )
    torch.manual_seed(12)
    model = XLMRobertaModel(config, add_pooling_layer=True).eval()
    with torch.no_grad():  # LayerNorms away from (1, 0), so their parameters and eps matter
        for name, param in model.named_parameters():
            if "LayerNorm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    return model


def to_jina_state(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """A transformers XLM-R state (no prefix) -> Jina's flash names under ``roberta.``."""
    state = {k: v for k, v in state.items() if not k.startswith("embeddings.position_embeddings")}
    out = {}
    for layer in range(num_layers):
        attn = f"encoder.layer.{layer}.attention.self."
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{attn}{name}.{kind}") for name in ("query", "key", "value")]
            out[f"roberta.encoder.layers.{layer}.mixer.Wqkv.{kind}"] = torch.cat(parts, dim=0)
    for name, tensor in state.items():
        for pattern, target in _TO_JINA:
            name = re.sub(pattern, target, name)
        out[f"roberta.{name}"] = tensor
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def to_transformers_state(jina: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Jina's flash names -> a transformers ``XLMRobertaModel`` state (q, k, v split; no position table)."""
    out = {}
    for name, tensor in jina.items():
        if not name.startswith("roberta.") or name.startswith("roberta.pooler."):
            continue
        name = name[len("roberta."):]
        fused = re.match(r"encoder\.layers\.(\d+)\.mixer\.Wqkv\.(weight|bias)", name)
        if fused:
            layer, kind = fused.groups()
            for part, chunk in zip(("query", "key", "value"), tensor.chunk(3, dim=0)):
                out[f"encoder.layer.{layer}.attention.self.{part}.{kind}"] = chunk
            continue
        for pattern, target in _FROM_JINA:
            name = re.sub(pattern, target, name)
        out[name] = tensor
    return out


_FROM_JINA = [
    (r"^emb_ln\.", "embeddings.LayerNorm."),
    (r"^encoder\.layers\.(\d+)\.norm1\.", r"encoder.layer.\1.attention.output.LayerNorm."),
    (r"^encoder\.layers\.(\d+)\.norm2\.", r"encoder.layer.\1.output.LayerNorm."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^encoder\.layers\.(\d+)\.mixer\.out_proj\.", r"encoder.layer.\1.attention.output.dense."),
]


def build_jina_colbert(path: pathlib.Path, auto_map: bool = True) -> pathlib.Path:
    """jina-colbert-v2 layout (see module doc); ``auto_map=False`` leaves only the weight names to detect it."""
    from transformers import AddedToken

    path = _prepare(path)
    tokenizer = _xlmr_tokenizer()
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(m, normalized=False, special=True) for m in MARKERS]}
    )
    tokenizer.model_max_length = 8194
    backbone = _random_backbone(len(tokenizer), tokenizer.pad_token_id)
    state = to_jina_state(backbone.state_dict(), backbone.config.num_hidden_layers)
    torch.manual_seed(13)
    state["linear.weight"] = torch.randn(DIM, 32) * 0.3
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = _config(len(tokenizer), tokenizer.pad_token_id)
    if not auto_map:
        config.pop("auto_map")
    _write_json(path / "config.json", config)
    tokenizer.save_pretrained(str(path))
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "XLMRobertaTokenizer"  # what the real repository names
    _write_json(path / "tokenizer_config.json", tokenizer_config)
    _write_json(path / "artifact.metadata", _metadata())
    return path
