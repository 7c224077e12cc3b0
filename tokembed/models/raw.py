"""Any other encoder (``AutoModel``) or decoder (``*ForCausalLM``): raw mode only, as vLLM's ``token_embed``.

The backbone is loaded with ``AutoModel`` in both cases, so a decoder yields its last hidden state after
the final norm (no LM head). A sentence-transformers folder without ColBERT settings (such as the demo
all-MiniLM-L6-v2) loads its ``Transformer`` module; its ``Dense`` modules, if any, are the projection,
as vLLM applies them. Pooling and sentence-level Normalize are not token-level and are ignored.
"""

from __future__ import annotations

from pathlib import Path

from tokembed.models.base import LoadOptions, TokenModel, hidden_size_of, load_backbone, model_max_length, position_limit
from tokembed.models.st_layout import apply_lowercase, load_dense_stack, read_modules, transformer_folder, transformer_settings


class _RawFamily:
    key = ""

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> TokenModel:
        modules = read_modules(path)
        backbone, tokenizer, config = load_backbone(transformer_folder(path, modules), options)
        settings = transformer_settings(path, modules)
        if settings.get("do_lower_case"):
            apply_lowercase(tokenizer)
        return TokenModel(
            family=cls.key,
            path=path,
            architecture=(getattr(config, "architectures", None) or [type(backbone).__name__])[0],
            tokenizer=tokenizer,
            backbone=backbone,
            projection=load_dense_stack(path, modules, options.trust_remote_code),
            colbert=None,
            max_length=model_max_length(tokenizer, config, settings.get("max_seq_length")),
            hidden_size=hidden_size_of(config),
            position_limit=position_limit(config),
        )


class RawEncoder(_RawFamily):
    key = "encoder"
    detected_by = "config.json that AutoModel loads (BERT, RoBERTa, ModernBERT, ...), no ColBERT settings"
    needs = "raw mode only; sentence-transformers Dense modules are applied as the projection"


class RawDecoder(_RawFamily):
    key = "causal-lm"
    detected_by = 'config.json "architectures": ["*ForCausalLM"]'
    needs = "raw mode only; last hidden state after the final norm (no LM head)"
