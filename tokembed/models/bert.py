"""BERT backbones in plain torch, read straight from ``config.json`` and the weight files: no transformers import,
no random initialisation of weights that are then overwritten (together ~3-5 s of every cold start).

The module keeps transformers' ``BertModel`` parameter names, so the loading check (``loading``), PEFT adapters and
``serve``'s LoRA views see the same model, and computes what ``BertModel`` computes in eval mode (absolute
positions, token type 0, exact GELU, scaled-dot-product attention over the padding mask; no pooler): the tests hold
it to transformers' own forward. Checkpoints it does not cover (other position types, activations, remote code,
``TOKEMBED_NATIVE=0``) load through transformers as before.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


_DEFAULTS = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0,
    "hidden_act": "gelu", "position_embedding_type": "absolute",
}


# Modules are built with shapes only (no memory, no random init) and filled from the checkpoint. Passing the
# device to each constructor, not a ``with torch.device("meta")`` block, keeps torch from importing its compiler
# stack (~1.8 s) to run the init functions on meta tensors.
_META = torch.device("meta")


def native_wanted() -> bool:
    """``TOKEMBED_NATIVE``: unset, ``1``, ``true``, ``yes`` or ``on`` runs the native backbone; ``0``, ``false``,
    ``no`` or ``off`` (any case) transformers' own; anything else is refused (it was taken for "on", silently)."""
    from tokembed.errors import UsageError

    value = os.environ.get("TOKEMBED_NATIVE", "1").strip().lower()
    if value in ("", "1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"TOKEMBED_NATIVE={os.environ['TOKEMBED_NATIVE']!r}: expected 1 or 0 (true/false, yes/no, on/off)")


def read_bert_config(folder: Path) -> SimpleNamespace | None:
    """The checkpoint's config as attributes, if the native backbone computes exactly what transformers would."""
    from tokembed.models.base import read_json

    raw = read_json(folder / "config.json")
    if not raw or not native_wanted():
        return None
    config = SimpleNamespace(**{**_DEFAULTS, **raw})
    supported = (
        raw.get("model_type") == "bert"
        and not raw.get("auto_map")
        and not raw.get("is_decoder")
        and not raw.get("add_cross_attention")
        and config.hidden_act == "gelu"
        and config.position_embedding_type == "absolute"
        and config.hidden_size % config.num_attention_heads == 0
        and raw.get("vocab_size")
    )
    return config if supported else None


def _embedding(count: int, size: int, padding_idx: int | None = None) -> nn.Embedding:
    # a given weight skips Embedding's init (normal_ on meta tensors goes through torch's compiler stack)
    return nn.Embedding(count, size, padding_idx=padding_idx, _weight=torch.empty(count, size, device=_META))


class _Embeddings(nn.Module):
    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.word_embeddings = _embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = _embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = _embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, device=_META)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_embeddings.weight[: input_ids.shape[1]]
        hidden = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(hidden + positions)


class _SelfAttention(nn.Module):
    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        size = config.hidden_size
        self.heads = config.num_attention_heads
        self.query, self.key, self.value = (nn.Linear(size, size, device=_META) for _ in range(3))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, size = hidden.shape
        q, k, v = self._projected(hidden).view(batch, length, 3, self.heads, size // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return attended.transpose(1, 2).reshape(batch, length, size)

    def _projected(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T, 3 * H]: query, key and value in one matrix product (same floats as three, ~5% faster at
        MiniLM's size), unless an adapter wraps them (peft's unmerged LoRA in ``serve``): then one by one."""
        layers = (self.query, self.key, self.value)
        if all(type(layer) is nn.Linear for layer in layers):
            weight = torch.cat([layer.weight for layer in layers])
            bias = torch.cat([layer.bias for layer in layers])
            return F.linear(hidden, weight, bias)
        return torch.cat([layer(hidden) for layer in layers], dim=-1)


class _Output(nn.Module):
    """``dense`` -> add the residual -> ``LayerNorm`` (BERT's ``SelfOutput`` and ``Output``)."""

    def __init__(self, size_in: int, size_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(size_in, size_out, device=_META)
        self.LayerNorm = nn.LayerNorm(size_out, eps=eps, device=_META)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden) + residual)


class _Attention(nn.Module):
    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.self = _SelfAttention(config)
        self.output = _Output(config.hidden_size, config.hidden_size, config.layer_norm_eps)


class _Intermediate(nn.Module):
    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size, device=_META)


class _Layer(nn.Module):
    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.attention = _Attention(config)
        self.intermediate = _Intermediate(config)
        self.output = _Output(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.attention.output(self.attention.self(hidden, mask), hidden)
        return self.output(F.gelu(self.intermediate.dense(attended)), attended)


class _Encoder(nn.Module):
    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))


class BertBackbone(nn.Module):
    """``BertModel`` without its pooler: ``forward(input_ids, attention_mask).last_hidden_state``."""

    # BertModel's: a BertForMaskedLM / HF_ColBERT save holds it under ``bert.`` (as its adapters name its modules)
    base_model_prefix = "bert"

    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.settings = config  # not ``config``: peft takes a module's ``config`` for a transformers config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> SimpleNamespace:
        hidden = self.embeddings(input_ids)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]: keys each query may attend
        for layer in self.encoder.layer:
            hidden = layer(hidden, mask)
        return SimpleNamespace(last_hidden_state=hidden)


def legacy_name(name: str) -> str:
    """Old BERT saves (bert-base-uncased's own) call LayerNorm's parameters gamma and beta; transformers renames
    them on every load, and so does this loader."""
    return name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def load_native_bert(folder: Path, config: SimpleNamespace, dtype: torch.dtype, ignore_unused: tuple[str, ...]) -> BertBackbone:
    """Build the backbone on the meta device (no random init), then take every tensor from the checkpoint; the
    loading check refuses a missing, unused or wrongly shaped tensor exactly as for transformers' loaders."""
    from tokembed.models.loading import HEAD_NAMES, UNUSED_PARTS, load_state_checked, matches, refuse_aliases, task_head_tensors
    from tokembed.models.weights import read_state

    refuse_aliases(folder, legacy_name)
    state = {legacy_name(name): tensor for name, tensor in read_state(folder).items()}
    model = BertBackbone(config)  # on the meta device: shapes only; the checkpoint's tensors are assigned
    target, prefix = model, model.base_model_prefix + "."
    if any(name.startswith(prefix) for name in state):  # a BertForMaskedLM / HF_ColBERT save: errors name its keys
        target = nn.Module()
        setattr(target, model.base_model_prefix, model)
    ignore = tuple(rf"(?:{re.escape(prefix)})?{name}" for name in HEAD_NAMES + UNUSED_PARTS + (r"embeddings\.position_ids$",))
    ignore += tuple(ignore_unused)
    leftover = target is not model and any(not name.startswith(prefix) and not matches(name, ignore) for name in state)
    if leftover:  # only then (a BertForSequenceClassification save): transformers' import, for its head rule
        ignore += task_head_tensors(folder, state)
    load_state_checked(target, state, folder, ignore_unused=ignore, assign=True)
    return model.to(dtype).eval()

