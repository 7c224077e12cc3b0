"""What ``tokembed serve`` runs with: its options, and the profiles (ways of reading the checkpoint: raw, ColBERT
query or document, an index's queries) that each own a view of the loaded model and an encoder."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from tokembed.errors import UsageError
from tokembed.settings import DEFAULT_BATCH_TOKENS, EncodeFlags

MAX_BATCH_WINDOW_MS = 60_000.0


@dataclass(frozen=True)
class ServeOptions:
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS  # padded tokens per forward pass
    batch_window_ms: float = 5.0  # how long a request may wait for others before its batch starts
    max_model_len: int | None = None  # raw-mode token limit per input; default: the checkpoint's
    max_inputs: int = 1024  # inputs per request (score/rerank: queries + documents)
    served_model_name: str | None = None  # the name clients send as "model"; default: --model as given
    dtype: str = "auto"  # compute dtype (auto: float32 on CPU, bfloat16 on CUDA)
    lora_modules: tuple[tuple[str, str], ...] = ()  # (name, adapter folder or hub id): vLLM's --lora-modules

    def check(self) -> None:
        for name, value, low in (("--max-batch-tokens", self.max_batch_tokens, 1), ("--max-inputs", self.max_inputs, 1)):
            if value < low:
                raise UsageError(f"{name} must be at least {low}, got {value}")
        if not (math.isfinite(self.batch_window_ms) and 0 <= self.batch_window_ms <= MAX_BATCH_WINDOW_MS):
            raise UsageError(f"--batch-window-ms must be a number from 0 to {MAX_BATCH_WINDOW_MS:.0f}, got {self.batch_window_ms}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise UsageError(f"--max-model-len must be at least 2, got {self.max_model_len}")


def check_api_key(api_key: str | None) -> None:
    """Refuse a key that no request could match: HTTP trims header values and cannot carry control characters."""
    if api_key is None:
        return
    if not api_key:
        raise UsageError("--api-key is empty: every client sending 'Authorization: Bearer' would pass",
                         hint="pass a key, or leave --api-key (and TOKEMBED_API_KEY) unset to serve without one")
    if api_key != api_key.strip():
        raise UsageError("--api-key starts or ends with whitespace, which HTTP trims from the header: no request could match it",
                         hint="remove the spaces (a line break read from a file, say) around the key")
    if any((ord(char) < 32 and char != "\t") or ord(char) == 127 for char in api_key):
        raise UsageError("--api-key holds a control character, which an HTTP header cannot carry: no request could match it")


@dataclass
class Profile:
    """One way of reading the checkpoint: its settings, a model view (own tokenizer for ColBERT) and encoder."""

    key: str  # "raw" | "query" | "document"
    flags: EncodeFlags
    view: object  # TokenModel sharing the loaded weights
    encoder: object  # TextEncoder with the profile's default lengths (collate/finish of its batches)


def own_tokenizer_view(model):
    """A view of ``model`` sharing its weights, with a tokenizer of its own: a profile's prefix registration
    stays out of the other profiles'."""
    if hasattr(model, "make_encoder"):  # a vision model: its processor adds no prefix tokens, so it is shared
        return model
    view = copy.copy(model)
    view.tokenizer = copy.deepcopy(model.tokenizer)
    return view


def profile_flags(mode: str, kind: str | None, dtype: str) -> EncodeFlags:
    """Flags every profile computes with: float32 out, unnormalized, full dimension (applied per request)."""
    return EncodeFlags(mode=mode, kind=kind or "document", normalize=False, dtype=dtype, store_dtype="float32")
