"""``truncate_prompt_tokens`` in ``tokembed serve``, and the length limit it lifts.

vLLM's field: N cuts each input to N tokens, -1 to the model's own limit; left out, an input longer than
``max_model_len`` is a 400. The raw profile (vLLM's ``token_embed``) follows it to the letter: its limit is
``max_model_len`` (``--max-model-len``, else the checkpoint's: ``max_seq_length`` where it has one, as vLLM reads it).
The ColBERT profiles (``input_type`` query or document, ``/score``, ``/rerank``, ``/search``) always cut to the
checkpoint's query / document length, as PyLate does, which may be longer than ``max_model_len`` (a PyLate
``document_length`` of 40 over a ``max_seq_length`` of 39): there N caps that length as ``encode --max-length`` does,
up to the longer of the two, and -1 is that length itself, the vectors ``encode`` gives, as sending no value.
"""

from __future__ import annotations

from tokembed.serve.schemas import APIError

MODEL_LIMIT = -1  # truncate_prompt_tokens: each input's own limit


def checked_truncation(value: int | None, max_model_len: int, own_lengths: list[int]) -> int | None:
    """``truncate_prompt_tokens``: None (inputs whole, over-long raw ones refused), ``MODEL_LIMIT`` or a cut.
    ``own_lengths``: the ColBERT lengths of the profiles the request reads its texts with (none for raw)."""
    if value is None or value == MODEL_LIMIT:
        return value
    if value < 2:
        raise APIError("truncate_prompt_tokens must be -1 or at least 2", param="truncate_prompt_tokens")
    limit = max([max_model_len, *own_lengths])
    if value > limit:
        named = (f"max_model_len={max_model_len}" if limit == max_model_len else
                 f"{limit}, the longest this request's ColBERT processing takes (max_model_len={max_model_len} is raw "
                 "inputs' limit)")
        raise APIError(f"truncate_prompt_tokens={value} cannot be greater than {named}. Please request a smaller "
                       "truncation size.", param="truncate_prompt_tokens")
    return value


def raw_length(truncate: int | None, max_model_len: int) -> int:
    """The tokens a raw text is read to: the cut, or ``max_model_len + 1`` without one (an over-long text is then
    refused by ``check_length``, never tokenized whole)."""
    if truncate is None:
        return max_model_len + 1
    return max_model_len if truncate == MODEL_LIMIT else truncate


def token_id_cut(truncate: int | None, max_model_len: int) -> int | None:
    """The length token-id inputs are cut to (None: sent whole, refused when over-long)."""
    return max_model_len if truncate == MODEL_LIMIT else truncate


def colbert_length(truncate: int | None, encoder, vision: bool) -> int | None:
    """The ColBERT length a profile's texts are cut to under ``truncate`` (None: the profile's own, ``encoder``'s).
    ``encode --max-length`` semantics: caps the length (queries: their expansion too)."""
    if truncate is None:
        return None
    if vision:
        raise APIError("truncate_prompt_tokens: a vision model's queries are processed whole (its processor's "
                       "own length)", param="truncate_prompt_tokens")
    if truncate == MODEL_LIMIT:
        return None
    if truncate < encoder.least_length:  # it would cut the ColBERT marker, as encode --max-length refuses
        raise APIError(f"truncate_prompt_tokens: a cut to {truncate} tokens cannot hold the {encoder.least_length} "
                       f"tokens every {encoder.settings.kind} has whatever its text (the special tokens and the prefix "
                       f"{encoder.settings.prefix!r})", param="truncate_prompt_tokens")
    return min(truncate, encoder.settings.max_length)


def check_length(count: int, max_model_len: int, operation: str, counted: bool = True) -> None:
    """vLLM's 400 for a raw input over ``max_model_len`` tokens. ``counted``: ``count`` is the input's length (token
    ids), not the limit + 1 tokens a text is read to."""
    if count > max_model_len:
        requested = f"{count}" if counted else f"more than {max_model_len}"
        raise APIError(
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{requested} tokens in the input for {operation}. Please reduce the length of the input, or set "
            "truncate_prompt_tokens.", param="input_tokens",
        )
