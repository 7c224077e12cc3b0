"""Model families behind one registry: detect the checkpoint layout, load tokenizer + backbone + projection."""

from tokembed.models.base import LoadOptions, TokenModel
from tokembed.models.registry import FAMILIES, describe_families, detect, load_model
from tokembed.models.resolve import ResolvedModel, model_fingerprint, resolve_model

__all__ = [
    "FAMILIES",
    "LoadOptions",
    "ResolvedModel",
    "TokenModel",
    "describe_families",
    "detect",
    "load_model",
    "model_fingerprint",
    "resolve_model",
]
