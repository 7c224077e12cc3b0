"""jina-colbert-v2 (``jinaai/jina-colbert-v2``): a Stanford-style ``HF_ColBERT`` over Jina's rotary XLM-RoBERTa,
loaded natively (no remote code).

Layout: ``config.json`` with ``architectures: ["HF_ColBERT"]`` and an ``auto_map`` into Jina's "flash"
XLM-RoBERTa (``jinaai/xlm-roberta-flash-implementation``); weights under ``roberta.`` in that code's names
(``embeddings.word_embeddings`` / ``token_type_embeddings``, ``emb_ln``, ``encoder.layers.N.mixer.Wqkv`` (q, k, v
fused), ``mixer.out_proj``, ``norm1``, ``mlp.fc1`` / ``fc2``, ``norm2``; a ``pooler`` the token vectors never use)
and the projection ``linear.weight`` ([dim, hidden], no bias); ColBERT settings in ``artifact.metadata``
(``[QueryMarker]`` / ``[DocumentMarker]``, queries 32, documents 300, ``attend_to_mask_tokens: true``).

The backbone reproduces Jina's ``modeling_xlm_roberta.py`` (its non-flash path, which the flash path equals):
word + token-type embeddings (no position table: ``position_embedding_type: rotary``), ``emb_ln``; then per
layer, post-norm: ``norm1(x + out_proj(attn(rotary(q), rotary(k), v)))``, ``norm2(x + fc2(gelu(fc1(x))))``.
Rotary: flash-attn's non-interleaved (GPT-NeoX) form over ``rotary_emb_dim`` (default the head size), base
``rotary_emb_base``, positions 0..T-1 in float32; LayerNorm eps ``layer_norm_eps``; GELU exact for
``hidden_act: gelu``, tanh-approximate for ``gelu_new`` / ``gelu_fast`` / ``gelu_pytorch_tanh``. No final norm.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tokembed.errors import ModelError
from tokembed.models.base import DenseLayer, LoadOptions, TokenModel, read_json, torch_dtype

# Tensors of the checkpoint that never reach the token vectors (the sentence pooler).
IGNORED = (r"roberta\.pooler\.",)
_FUSED_NAME = ".mixer.Wqkv."
_FLASH_CODE = ("xlm-roberta-flash", "xlmrobertaflash")
_TANH_GELU = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")


class JinaColBERT:
    key = "jina-colbert"
    detected_by = (
        'config.json "architectures": ["HF_ColBERT"] whose weights carry mixer.Wqkv names '
        "or whose auto_map names Jina's flash XLM-RoBERTa"
    )
    needs = "roberta.* weights in Jina's fused names + linear.weight; tokenizer; artifact.metadata (optional)"
    modes = "colbert, raw"
    reference = (
        "jinaai/xlm-roberta-flash-implementation (modeling_xlm_roberta.py) + colbert-ai / PyLate ColBERT encoding"
    )

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> TokenModel:
        from tokembed.models.both_layouts import refuse_disagreeing_module_tree
        from tokembed.models.stanford import StanfordColBERT

        config = JinaConfig.read(path)
        tokenizer = _tokenizer(path)
        model = JinaColBERTModule(config, _projection_dim(path))
        _load_weights(model, path)
        model.eval()
        backbone = model.roberta.to(torch_dtype(options.dtype))
        StanfordColBERT.check_dim(path, model.linear.weight)
        projection = nn.Sequential(DenseLayer(model.linear.weight.detach(), None, nn.Identity()))
        colbert = StanfordColBERT.colbert_config(path)
        refuse_disagreeing_module_tree(path, model.linear.weight, colbert, tokenizer,
                                       options.trust_remote_code)  # as saved
        colbert = StanfordColBERT.with_marker_forms(colbert, tokenizer)
        limit = config.position_limit
        return TokenModel(
            family=cls.key,
            path=path,
            architecture="HF_ColBERT",
            tokenizer=tokenizer,
            backbone=backbone,
            projection=projection.to(torch.float32),
            colbert=colbert,
            max_length=int(min(getattr(tokenizer, "model_max_length", None) or limit, limit)),
            hidden_size=config.hidden_size,
            position_limit=limit,
            query_width_setting=StanfordColBERT.query_width_setting(path),
        )


def is_jina_colbert(path: Path, config: dict) -> bool:
    """An ``HF_ColBERT`` checkpoint in Jina's flash XLM-RoBERTa layout (see ``JinaColBERT.detected_by``)."""
    auto_map = json.dumps(config.get("auto_map") or {}).lower()
    if any(name in auto_map for name in _FLASH_CODE):
        return True
    from tokembed.models.weights import tensor_names

    return any(_FUSED_NAME in name for name in tensor_names(path))


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JinaConfig:
    """The ``config.json`` keys Jina's ``XLMRobertaFlashConfig`` / ``modeling_xlm_roberta.py`` read."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    type_vocab_size: int
    pad_token_id: int
    layer_norm_eps: float
    rotary_base: float
    rotary_dim: int
    gelu_approximate: str
    max_positions: int

    @classmethod
    def read(cls, path: Path) -> "JinaConfig":
        data = read_json(path / "config.json") or {}
        try:
            config = cls._from(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path / 'config.json'}: not a Jina XLM-RoBERTa config ({exc!r})") from exc
        _refuse_unsupported(path, data)
        return config

    @classmethod
    def _from(cls, data: dict) -> "JinaConfig":
        hidden, heads = int(data["hidden_size"]), int(data["num_attention_heads"])
        vocab = int(data["vocab_size"])
        multiple = int(data.get("pad_vocab_size_multiple", 1) or 1)  # Jina pads the vocab up to a multiple
        return cls(
            vocab_size=vocab + (-vocab % multiple),
            hidden_size=hidden,
            num_layers=int(data["num_hidden_layers"]),
            num_heads=heads,
            intermediate_size=int(data["intermediate_size"]),
            type_vocab_size=int(data.get("type_vocab_size", 1)),
            pad_token_id=int(data.get("pad_token_id", 1)),
            layer_norm_eps=float(data.get("layer_norm_eps", 1e-5)),
            rotary_base=float(data.get("rotary_emb_base", 10000.0)),
            rotary_dim=int(data.get("rotary_emb_dim") or hidden // heads),
            gelu_approximate="tanh" if data.get("hidden_act", "gelu") in _TANH_GELU else "none",
            max_positions=int(data.get("max_position_embeddings", 8194)),
        )

    @property
    def position_limit(self) -> int:
        # Jina keeps XLM-R's numbering (positions start after the padding index): 8194 -> 8192 tokens.
        return self.max_positions - (self.pad_token_id + 1)


def _refuse_unsupported(path: Path, data: dict) -> None:
    """Settings of Jina's code this module does not implement: refused rather than computed differently."""
    problems = []
    if data.get("position_embedding_type", "rotary") != "rotary":
        problems.append(f"position_embedding_type {data.get('position_embedding_type')!r}")
    if data.get("hidden_act", "gelu") not in ("gelu",) + _TANH_GELU:
        problems.append(f"hidden_act {data.get('hidden_act')!r}")
    if data.get("rotary_emb_interleaved") or data.get("rotary_emb_scale_base"):
        problems.append("interleaved or scaled rotary embeddings")
    if data.get("lora_adaptations") and data.get("load_trained_adapters"):
        problems.append("LoRA adapters (lora_adaptations)")
    if problems:
        raise ModelError(
            f"{path / 'config.json'}: tokembed's jina-colbert loader does not implement {', '.join(problems)}"
        )


# -- the module (parameter names are the checkpoint's) ------------------------------------------------


class JinaOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # [B, T, hidden]


class RotaryEmbedding(nn.Module):
    """flash-attn's ``RotaryEmbedding`` (non-interleaved), cos/sin computed in float32 from positions 0..T-1."""

    def __init__(self, dim: int, base: float) -> None:
        super().__init__()
        self.dim = dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # not a checkpoint tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, H, D] -> same
        positions = torch.arange(x.shape[1], device=x.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq.to(x.device))  # [T, dim/2]
        cos = freqs.cos().to(x.dtype)[None, :, None, :]
        sin = freqs.sin().to(x.dtype)[None, :, None, :]
        half = self.dim // 2
        x1, x2, rest = x[..., :half], x[..., half : self.dim], x[..., self.dim :]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


class JinaAttention(nn.Module):
    def __init__(self, config: JinaConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.rotary_emb = RotaryEmbedding(config.rotary_dim, config.rotary_base)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        qkv = self.Wqkv(x).view(batch, length, 3, self.num_heads, hidden // self.num_heads)  # q, k, v fused
        q, k, v = qkv.unbind(dim=2)  # [B, T, H, D] each
        q, k = self.rotary_emb(q), self.rotary_emb(k)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=keep)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, hidden))


class JinaMlp(nn.Module):
    def __init__(self, config: JinaConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.approximate = config.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class JinaBlock(nn.Module):
    """Post-norm block (Jina's ``Block(prenorm=False)``)."""

    def __init__(self, config: JinaConfig) -> None:
        super().__init__()
        self.mixer = JinaAttention(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = JinaMlp(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.mixer(x, keep))
        return self.norm2(x + self.mlp(x))


class JinaEmbeddings(nn.Module):
    def __init__(self, config: JinaConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids)
        if self.token_type_embeddings is not None:  # single segment: token type 0 everywhere
            embeddings = embeddings + self.token_type_embeddings.weight[0]
        return embeddings


class JinaEncoder(nn.Module):
    def __init__(self, config: JinaConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(JinaBlock(config) for _ in range(config.num_layers))


class JinaXLMRoberta(nn.Module):
    """Jina's rotary XLM-RoBERTa; ``forward(input_ids, attention_mask).last_hidden_state`` as transformers'."""

    base_model_prefix = "roberta"  # the checkpoint saves it as JinaColBERTModule.roberta (adapters name it so too)

    def __init__(self, config: JinaConfig) -> None:
        super().__init__()
        self.embeddings = JinaEmbeddings(config)
        self.emb_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = JinaEncoder(config)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> JinaOutput:
        hidden = self.emb_ln(self.embeddings(input_ids))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]: padded keys never attended
        for layer in self.encoder.layers:
            hidden = layer(hidden, keep)
        return JinaOutput(hidden)


class JinaColBERTModule(nn.Module):
    """What the checkpoint holds, under its own names: ``roberta.*`` and ``linear.weight``."""

    def __init__(self, config: JinaConfig, dim: int) -> None:
        super().__init__()
        self.roberta = JinaXLMRoberta(config)
        self.linear = nn.Linear(config.hidden_size, dim, bias=False)


# -- loading -------------------------------------------------------------------------------------------


def _projection_dim(path: Path) -> int:
    from tokembed.models.weights import find_tensors

    found = find_tensors(path, {"linear.weight"})
    if "linear.weight" not in found:
        from tokembed.models.loading import require_complete

        require_complete(path, ["linear.weight"], [])
    return int(found["linear.weight"].shape[0])


def _load_weights(model: JinaColBERTModule, path: Path) -> None:
    """Every parameter from the checkpoint with its shape, every checkpoint tensor used (but the pooler)."""
    from tokembed.models.loading import load_state_checked
    from tokembed.models.weights import find_tensors, tensor_names

    load_state_checked(model, find_tensors(path, tensor_names(path)), path, ignore_unused=IGNORED)


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: cannot load the tokenizer: {exc}") from exc
