"""What every model family hands to the engine: a tokenizer, a backbone and its projection.

A family file (``stanford.py``, ``st_colbert.py``, ``raw.py``) only finds the pieces of its layout and
builds a ``TokenModel``; the shared steps (tokenize, forward, project, mask, normalize) live in
``steps.py`` and ``base.py`` and are never re-implemented per family.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tokembed.errors import ModelError
from tokembed.settings import ColbertConfig

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


@dataclass
class LoadOptions:
    trust_remote_code: bool = False
    dtype: str = "float32"  # compute dtype of the backbone; projections always run in float32
    device: str = "cpu"
    processor_path: Path | None = None  # processor/tokenizer files from elsewhere (a PEFT adapter's folder)


class DenseLayer(nn.Module):
    """One sentence-transformers / PyLate ``Dense`` module: linear (bias as stored) then activation."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, activation: nn.Module) -> None:
        super().__init__()
        out_features, in_features = weight.shape
        self.linear = nn.Linear(in_features, out_features, bias=bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            if bias is not None:
                self.linear.bias.copy_(bias)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, in] -> [B, T, out]
        return self.activation(self.linear(x))


@dataclass
class TokenModel:
    """A loaded checkpoint, ready to embed token batches."""

    family: str
    path: Path
    architecture: str
    tokenizer: Any
    backbone: nn.Module
    projection: nn.Sequential
    colbert: ColbertConfig | None
    max_length: int  # default token limit: max_seq_length, else the tokenizer's, capped by positions
    hidden_size: int
    position_limit: int = 1 << 20  # what the position embeddings allow; caps explicit ColBERT lengths
    extra: dict = field(default_factory=dict)
    reading: tuple[str, ...] = ()  # readings of its files earlier releases did not make (models.readings)
    first_token_dropped: int | None = None  # no vector for this id in an input's first position (BGE-M3's <s>)
    # (file, key) setting the width every colbert query is padded to (query expansion); None: queries are not padded
    query_width_setting: tuple[Path, str] | None = None

    def __post_init__(self) -> None:
        """Each projection layer must take what the one before gives (the first: the backbone's hidden size);
        else the first forward would fail with a bare shape error."""
        width, source = self.hidden_size, f"the backbone's hidden size {self.hidden_size}"
        for number, layer in enumerate(self.projection):
            linear = getattr(layer, "linear", None)
            if linear is None:
                continue
            if linear.in_features != width:
                raise ModelError(f"{self.path}: projection layer {number + 1} takes {linear.in_features} inputs, "
                                 f"but {source} reaches it")
            width, source = linear.out_features, f"layer {number + 1}'s {linear.out_features} outputs"

    @property
    def output_dim(self) -> int:
        for layer in reversed(list(self.projection)):
            return layer.linear.out_features
        return self.hidden_size

    def to(self, device: str) -> "TokenModel":
        self.backbone.to(device)
        self.projection.to(device)
        return self

    @torch.inference_mode()
    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] token ids -> [B, T, D] float32 vectors (backbone in its dtype, projection in float32)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.projection(hidden.float())


def read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from exc


def configured_size(file: Path, key: str, value: Any, at_most: int | None = None) -> int:
    """An output width a config states (``dims``, ``embed_dim``, ``dim``): a positive whole number, at most
    ``at_most`` (the projection's outputs). The reference code builds a layer or slices with it, which fails on
    anything else; ``int()`` would truncate a float and ``x[..., :0]`` / ``x[..., :-4]`` would keep other columns."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{file}: {key} is {value!r}, not a positive whole number (the vectors' width)")
    if at_most is not None and value > at_most:
        raise ModelError(f"{file}: {key} {value} is larger than the projection's {at_most} outputs")
    return value


def load_backbone(path: Path, options: LoadOptions, ignore_unused: tuple[str, ...] = ()) -> tuple[nn.Module, Any, Any]:
    """Load tokenizer, config and the bare backbone (``AutoModel``: last hidden state after the final norm).

    Every backbone parameter must come from the checkpoint and every checkpoint tensor must land, but for
    heads a backbone never runs (``loading.HEAD_NAMES``; a task head ``AutoModel`` leaves out,
    ``loading.task_head_tensors``) and ``ignore_unused`` (the family's own tensors,
    such as a Stanford projection, which it loads itself). A sentence pooler is not part of the token
    vectors: it is dropped, loaded or not.
    """
    native = _load_native(path, options, ignore_unused)
    if native is not None:
        return native
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from tokembed.models.loading import (
        HEAD_NAMES, UNUSED_PARTS, from_pretrained_checked, missing_package_error, task_head_tensors,
    )

    hf_logging.disable_progress_bar()
    kwargs = {"trust_remote_code": options.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        heads = task_head_tensors(path)
        model = from_pretrained_checked(
            AutoModel, path, ignore_unused=HEAD_NAMES + heads + tuple(ignore_unused), ignore_missing=UNUSED_PARTS,
            config=config, dtype=torch_dtype(options.dtype), **kwargs,
        )
    except ImportError as exc:
        raise missing_package_error(path, exc) from exc
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # SafetensorError: a truncated or garbled file
        raise ModelError(f"{path}: cannot load the backbone: {exc}") from exc
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # never reaches the last hidden state; may not have been in the checkpoint
    model.eval()
    return model, tokenizer, config


def _load_native(path: Path, options: LoadOptions, ignore_unused: tuple[str, ...]) -> tuple[nn.Module, Any, Any] | None:
    """A BERT checkpoint in plain torch and ``tokenizers`` (``bert.py``), or None where that is not exact."""
    from tokembed.models.bert import load_native_bert, read_bert_config
    from tokembed.models.bert_tokenizer import BertTokenizer, is_native_bert_tokenizer

    config = read_bert_config(path)
    if config is None or not is_native_bert_tokenizer(path):
        return None
    return load_native_bert(path, config, torch_dtype(options.dtype), ignore_unused), BertTokenizer(path), config


def model_max_length(tokenizer: Any, config: Any, max_seq_length: int | None = None) -> int:
    """The token limit sentence-transformers applies: max_seq_length, else the tokenizer's, capped by positions."""
    limit = max_seq_length or getattr(tokenizer, "model_max_length", None) or 512
    return int(min(limit, position_limit(config)))


# Position tables that start after the padding index (RoBERTa numbers positions from pad_token_id + 1).
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer")


def position_limit(config: Any) -> int:
    """The most positions the model can embed (unbounded models: a large number)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not positions or positions <= 0:
        return 1 << 20
    if getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    return int(positions)


def hidden_size_of(config: Any) -> int:
    for name in ("hidden_size", "d_model", "n_embd"):
        value = getattr(config, name, None)
        if value:
            return int(value)
    text_config = getattr(config, "text_config", None)
    if text_config is not None:
        return hidden_size_of(text_config)
    raise ModelError(f"cannot tell the hidden size of {type(config).__name__}")


def activation_from_name(name: str | None, trust_remote_code: bool) -> nn.Module:
    """Instantiate a stored activation such as ``torch.nn.modules.linear.Identity`` (torch.nn classes only)."""
    import importlib

    if not name:
        return nn.Identity()
    module_name, _, class_name = name.rpartition(".")
    if not (name.startswith("torch.") or trust_remote_code):
        raise ModelError(f"Dense activation {name!r} is not a torch.nn class; pass --trust-remote-code to load it")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"unknown Dense activation {name!r}") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelError(f"Dense activation {name!r} is not a torch.nn.Module class")
    return cls()
