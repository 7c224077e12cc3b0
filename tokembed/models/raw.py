"""Any other encoder (``AutoModel``) or decoder (``*ForCausalLM``): raw mode only, as vLLM's ``token_embed``.

The backbone is loaded with ``AutoModel`` in both cases, so a decoder yields its last hidden state after
the final norm (no LM head). A sentence-transformers folder without ColBERT settings (such as the demo
all-MiniLM-L6-v2) loads its ``Transformer`` module; its ``Dense`` modules, if any, are the projection,
as vLLM applies them. Pooling and sentence-level Normalize are not token-level and are ignored.
"""

from __future__ import annotations

from pathlib import Path

from tokembed.models.base import LoadOptions, TokenModel
from tokembed.models.st_layout import load_st_folder


class _RawFamily:
    key = ""

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> TokenModel:
        return load_st_folder(cls.key, path, options, colbert=None)


class RawEncoder(_RawFamily):
    key = "encoder"
    detected_by = "config.json that AutoModel loads (BERT, RoBERTa, ModernBERT, ...), no ColBERT settings"
    needs = "raw mode only; sentence-transformers Dense modules are applied as the projection"
    reference = "vLLM token_embed pooling (last hidden state, Dense projection, L2); transformers AutoModel"


class RawDecoder(_RawFamily):
    key = "causal-lm"
    detected_by = 'config.json "architectures": ["*ForCausalLM"]'
    needs = "raw mode only; last hidden state after the final norm (no LM head)"
    reference = "vLLM token_embed pooling on a decoder; transformers AutoModel"
