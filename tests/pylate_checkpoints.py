"""PyLate-layout checkpoints: sentence-transformers' ``modules.json`` with a ``Transformer`` and PyLate ``Dense``
layers, ``config_sentence_transformers.json`` of the PyLate era each imitates, query/document prefix tokens
added to the vocabulary. One builder per backbone (BERT, ModernBERT, XLM-R, LFM2); same conventions as
``checkpoints.py``."""

from __future__ import annotations

import pathlib
from typing import Any

import torch
from safetensors.torch import save_file

from raw_checkpoints import _bert_config
from text_tokenizers import (
    PUNCTUATION,
    _bert_tokenizer,
    _lfm2_tokenizer,
    _modernbert_tokenizer,
    _prepare,
    _write_json,
    _xlmr_tokenizer,
)

QUERY_LENGTH = 16
DOCUMENT_LENGTH = 40
XLMR_SKIPLIST = [".", ",", "?", "!"]

# Version stamps written into config_sentence_transformers.json, as the respective PyLate eras did.
_ST4_VERSION = {"sentence_transformers": "4.0.2", "transformers": "4.48.2", "pytorch": "2.5.1+cu124"}
_ST5_VERSION = {"sentence_transformers": "5.1.1", "transformers": "4.56.2", "pytorch": "2.8.0+cu128"}

_PYLATE_DENSE_TYPE = "pylate.models.Dense.Dense"
_ST_TRANSFORMER_TYPE = "sentence_transformers.models.Transformer"


def _add_pylate_prefix_tokens(tokenizer, model, prefixes: tuple[str, str] = ("[Q] ", "[D] ")) -> None:
    """Mirror PyLate's ColBERT.__init__: resize to len(tokenizer), ``add_tokens`` the raw prefixes
    (trailing space included, non-special, normalized=True) and resize the embeddings again."""
    model.resize_token_embeddings(len(tokenizer))
    tokenizer.add_tokens(list(prefixes))
    model.resize_token_embeddings(len(tokenizer))


def _save_dense(
    folder: pathlib.Path,
    in_features: int,
    out_features: int,
    bias: bool,
    activation_function: str,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Write ``<folder>/config.json`` + ``<folder>/model.safetensors`` like PyLate 1.x's Dense.save
    (only the four PyLate 1.x config keys; no module IO names, so the loader must default to tokens)."""
    torch.manual_seed(seed)
    linear = torch.nn.Linear(in_features, out_features, bias=bias)
    config: dict[str, Any] = {
        "in_features": in_features,
        "out_features": out_features,
        "bias": bias,
        "activation_function": activation_function,
    }
    _write_json(folder / "config.json", config)
    state = {f"linear.{key}": value.detach().clone().contiguous() for key, value in linear.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return state


def _pylate_modules_json(num_dense: int) -> list[dict[str, Any]]:
    modules = [{"idx": 0, "name": "0", "path": "", "type": _ST_TRANSFORMER_TYPE}]
    for i in range(1, num_dense + 1):
        modules.append({"idx": i, "name": str(i), "path": f"{i}_Dense", "type": _PYLATE_DENSE_TYPE})
    return modules


def _pylate_st_config(
    *,
    skiplist_words: list[str],
    attend: bool,
    with_model_type: bool,
    version: dict[str, str],
) -> dict[str, Any]:
    """config_sentence_transformers.json as PyLate writes it (ST base keys + PyLate knobs)."""
    config: dict[str, Any] = {}
    if with_model_type:
        # sentence-transformers >= 5.0 stamps the saving class name; PyLate's class is ``ColBERT``.
        config["model_type"] = "ColBERT"
    config.update(
        {
            "__version__": dict(version),
            "prompts": {"query": "", "document": ""} if with_model_type else {},
            "default_prompt_name": None,
            "similarity_fn_name": "MaxSim",
            "query_prefix": "[Q] ",
            "document_prefix": "[D] ",
            "query_length": QUERY_LENGTH,
            "document_length": DOCUMENT_LENGTH,
            "attend_to_expansion_tokens": attend,
            "skiplist_words": list(skiplist_words),
            "do_query_expansion": True,
        }
    )
    return config


def _write_pylate_common(
    path: pathlib.Path,
    model,
    tokenizer,
    *,
    denses: list[tuple[int, int, bool, str]],
    skiplist_words: list[str],
    attend: bool,
    with_model_type: bool,
    seed: int,
) -> None:
    """Save backbone + tokenizer at the root and the PyLate sidecar files."""
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    # PyLate sets max_seq_length = length - 1 before every tokenize call (the prefix token is inserted
    # afterwards), so a save made after encoding documents records document_length - 1.
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": DOCUMENT_LENGTH - 1, "do_lower_case": False})
    _write_json(path / "modules.json", _pylate_modules_json(len(denses)))
    for index, (in_f, out_f, bias, activation) in enumerate(denses, start=1):
        _save_dense(path / f"{index}_Dense", in_f, out_f, bias, activation, seed=seed + 100 * index)
    _write_json(
        path / "config_sentence_transformers.json",
        _pylate_st_config(
            skiplist_words=skiplist_words,
            attend=attend,
            with_model_type=with_model_type,
            version=_ST5_VERSION if with_model_type else _ST4_VERSION,
        ),
    )


_IDENTITY = "torch.nn.modules.linear.Identity"
_TANH = "torch.nn.modules.activation.Tanh"


def build_pylate_bert(path: pathlib.Path) -> pathlib.Path:
    """PyLate 1.x checkpoint saved with sentence-transformers 4.x, BERT backbone.

    config_sentence_transformers.json has *no* ``model_type`` (pre-ST-5 save), so the reference library
    routes it through its SentenceTransformer-conversion path. One Dense 32 -> 24, no bias, identity.
    """
    from transformers import BertModel

    path = _prepare(path)
    tokenizer = _bert_tokenizer(path)
    torch.manual_seed(2)
    model = BertModel(_bert_config(len(tokenizer))).eval()
    _add_pylate_prefix_tokens(tokenizer, model)
    _write_pylate_common(
        path,
        model,
        tokenizer,
        denses=[(32, 24, False, _IDENTITY)],
        skiplist_words=PUNCTUATION,
        attend=False,
        with_model_type=False,
        seed=2,
    )
    return path


def build_pylate_modernbert(path: pathlib.Path) -> pathlib.Path:
    """PyLate checkpoint (ST 5.x era, ``model_type: ColBERT``), ModernBERT backbone with alternating
    global / sliding-window (window 16) attention and TWO Dense layers: 48 -> 64 (bias, Tanh) and
    64 -> 16 (no bias, identity)."""
    from transformers import ModernBertConfig, ModernBertModel

    path = _prepare(path)
    tokenizer = _modernbert_tokenizer()
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        layer_types=["full_attention", "sliding_attention"],
        local_attention=16,
        initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        cls_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        sep_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(3)
    model = ModernBertModel(config).eval()
    _add_pylate_prefix_tokens(tokenizer, model)
    _write_pylate_common(
        path,
        model,
        tokenizer,
        denses=[(48, 64, True, _TANH), (64, 16, False, _IDENTITY)],
        skiplist_words=PUNCTUATION,
        attend=False,
        with_model_type=True,
        seed=3,
    )
    return path


def build_pylate_xlmr(path: pathlib.Path) -> pathlib.Path:
    """PyLate checkpoint (``model_type: ColBERT``), XLM-RoBERTa backbone, Unigram/Metaspace tokenizer,
    ``attend_to_expansion_tokens: true``, custom skiplist [".", ",", "?", "!"], one Dense 32 -> 20 with
    bias (identity)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    path = _prepare(path)
    tokenizer = _xlmr_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=130,
        type_vocab_size=1,
        initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(4)
    model = XLMRobertaModel(config).eval()
    _add_pylate_prefix_tokens(tokenizer, model)
    _write_pylate_common(
        path,
        model,
        tokenizer,
        denses=[(32, 20, True, _IDENTITY)],
        skiplist_words=XLMR_SKIPLIST,
        attend=True,
        with_model_type=True,
        seed=4,
    )
    return path


def build_pylate_lfm2(path: pathlib.Path) -> pathlib.Path:
    """PyLate checkpoint (``model_type: ColBERT``), LFM2 backbone (one short-conv layer + one attention
    layer). The tokenizer has no mask token, so query expansion pads with EOS (<|im_end|>)."""
    from transformers import Lfm2Config, Lfm2Model

    path = _prepare(path)
    tokenizer = _lfm2_tokenizer()
    config = Lfm2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        layer_types=["conv", "full_attention"],
        full_attn_idxs=[1],
        conv_L_cache=3,
        conv_bias=False,
        block_auto_adjust_ff_dim=False,
        initializer_range=0.1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        use_cache=False,
    )
    torch.manual_seed(5)
    model = Lfm2Model(config).eval()
    _add_pylate_prefix_tokens(tokenizer, model)
    _write_pylate_common(
        path,
        model,
        tokenizer,
        denses=[(32, 12, False, _IDENTITY)],
        skiplist_words=PUNCTUATION,
        attend=False,
        with_model_type=True,
        seed=5,
    )
    return path


def add_pylate_module_tree(path: pathlib.Path, **settings: Any) -> pathlib.Path:
    """Give a Stanford ``HF_ColBERT`` folder (``build_stanford``, ``build_jina_colbert``) the module tree a PyLate
    conversion adds beside colbert-ai's files: ``modules.json`` (Transformer at the root, one PyLate Dense),
    ``1_Dense`` holding the root's ``linear.weight``, and ``config_sentence_transformers.json`` with the settings
    ``artifact.metadata`` holds. ``settings`` overrides keys of the latter; ``dense_weight`` replaces 1_Dense's."""
    import json

    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as weights:
        weight = weights.get_tensor("linear.weight")
    weight = settings.pop("dense_weight", weight)
    metadata = json.loads((path / "artifact.metadata").read_text())
    _write_json(path / "modules.json", _pylate_modules_json(1))
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": metadata["doc_maxlen"] - 1, "do_lower_case": False})
    (path / "1_Dense").mkdir(exist_ok=True)
    _write_json(path / "1_Dense" / "config.json", {"in_features": weight.shape[1], "out_features": weight.shape[0],
                                                   "bias": False, "activation_function": _IDENTITY})
    save_file({"linear.weight": weight.contiguous()}, str(path / "1_Dense" / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "__version__": dict(_ST4_VERSION),
        "query_prefix": metadata["query_token_id"],
        "document_prefix": metadata["doc_token_id"],
        "query_length": metadata["query_maxlen"],
        "document_length": metadata["doc_maxlen"],
        "attend_to_expansion_tokens": metadata["attend_to_mask_tokens"],
        "skiplist_words": list(PUNCTUATION) if metadata["mask_punctuation"] else [],
        "do_query_expansion": True,
    }
    _write_json(path / "config_sentence_transformers.json", {**config, **settings})
    return path
