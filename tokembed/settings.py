"""Encoding settings, resolved once: flags beat checkpoint values, which beat defaults.

``ColbertConfig`` is what a checkpoint says about ColBERT processing (prefixes, lengths, expansion,
skiplist); ``EncodeFlags`` is what the user asked for (``None`` = not set); ``resolve()`` joins the two
into a frozen ``EncodeSettings`` for one kind (query or document). The manifest stores the
``ColbertConfig`` and the flags whole, so ``score`` rebuilds the exact query-side settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import numbers
import os
import sys
from dataclasses import asdict, dataclass, replace

from tokembed.errors import UsageError

MODES = ("colbert", "raw")
KINDS = ("document", "query")
COMPUTE_DTYPES = ("auto", "float32", "float16", "bfloat16")
STORE_DTYPES = ("float16", "float32")
DEFAULT_BATCH_TOKENS = 16384


# Settings later releases added, at the values that mean "as before" (as ``to_json`` writes them).
_LATER_COLBERT_DEFAULTS = {"skiplist_tasks": ["document"], "keep_only_token_ids": None, "normalize": True,
                           "expansion_side": "right"}
_LATER_ENCODE_DEFAULTS = {"keep_only_ids": None, "reading": [], "expansion_side": "right"}


def _without_later_defaults(data: dict, defaults: dict) -> dict:
    """``data`` without the settings later releases added where they hold their "as before" value: the manifest
    reads, and the fingerprint hashes, as an earlier release wrote them (and such a release can still open it)."""
    for name, default in defaults.items():
        if data[name] == default:
            del data[name]
    return data


@dataclass(frozen=True)
class ColbertConfig:
    """ColBERT settings a checkpoint carries (PyLate / sentence-transformers / Stanford defaults)."""

    query_prefix: str = "[Q] "
    document_prefix: str = "[D] "
    query_length: int | None = 32  # None: queries are cut at the model's limit only (no expansion, no query_length)
    document_length: int | None = 180
    expand_queries: bool = True
    attend_to_expansion_tokens: bool = False
    expansion_token: str | None = None  # None: the tokenizer's mask token, else its EOS token
    expansion_side: str = "right"  # "left": before the query (a native save whose tokenizer pads on the left)
    skiplist_words: tuple[str, ...] = ()
    skiplist_tasks: tuple[str, ...] = ("document",)  # the kinds the skiplist applies to (MultiVectorMask's)
    keep_only_token_ids: tuple[int, ...] | None = None  # documents keep only these ids (MultiVectorMask's)
    normalize: bool = True  # False: the checkpoint's pipeline has no token-level Normalize (native saves)
    # Legacy checkpoints (PyLate <=1.x, Stanford) insert in-vocab markers such as ``[unused0]`` as one
    # token; they must be registered as special tokens so prepending them as text keeps them whole.
    register_prefix_tokens: bool = False

    def to_json(self) -> dict:
        data = asdict(self)
        for name in ("skiplist_words", "skiplist_tasks", "keep_only_token_ids"):
            data[name] = None if data[name] is None else list(data[name])
        return _without_later_defaults(data, _LATER_COLBERT_DEFAULTS)

    @classmethod
    def from_json(cls, data: dict) -> "ColbertConfig":
        data = dict(data)
        data["skiplist_words"] = tuple(data.get("skiplist_words") or ())
        data["skiplist_tasks"] = tuple(data.get("skiplist_tasks") or ("document",))
        keep_only = data.get("keep_only_token_ids")
        data["keep_only_token_ids"] = None if keep_only is None else tuple(keep_only)
        return cls(**data)


@dataclass(frozen=True)
class EncodeFlags:
    """What the user asked for on the command line or in the API; ``None`` means not set."""

    mode: str | None = None
    kind: str = "document"
    max_length: int | None = None
    dimensions: int | None = None
    normalize: bool = True
    dtype: str = "auto"
    store_dtype: str = "float16"
    # Where the model comes from (not how it encodes): hub revision, and a PEFT adapter's base and its revision.
    revision: str | None = None
    base_model: str | None = None
    base_revision: str | None = None
    # Documents: hierarchical token pooling to 1/N of the vectors (tokembed.models.pooling); 1 = none.
    pool_factor: int = 1

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "EncodeFlags":
        return cls(**data)


@dataclass(frozen=True)
class EncodeSettings:
    """Everything that decides the vectors of one kind of input. Written whole into the manifest."""

    mode: str
    kind: str
    max_length: int  # tokens per item after truncation, special and prefix tokens included
    prefix: str  # text prepended to every input ("" in raw mode)
    register_prefix_tokens: bool
    expand_to: int | None  # queries padded with the expansion token to this length (colbert queries)
    attend_to_expansion_tokens: bool
    expansion_token: str | None
    skiplist_words: tuple[str, ...]  # dropped from the output (colbert documents; queries where the model says)
    normalize: bool
    dimensions: int | None
    dtype: str  # compute dtype, resolved (never "auto")
    store_dtype: str
    pool_factor: int = 1  # documents only; 1 = no pooling
    keep_only_ids: tuple[int, ...] | None = None  # colbert documents: only these token ids reach the output
    runtime: str = "torch"  # what ran the backbone's forward on the CPU: "torch", or "openvino" (TOKEMBED_CPU_RUNTIME)
    # Readings of the checkpoint's files that earlier releases did not make (models.readings): an index they built
    # is encoded again; () for almost every checkpoint (and then not in the manifest or the fingerprint).
    reading: tuple[str, ...] = ()
    expansion_side: str = "right"  # queries: where the expansion tokens go ("left": before the query)

    def to_json(self) -> dict:
        data = asdict(self)
        for name in ("skiplist_words", "keep_only_ids", "reading"):
            data[name] = None if data[name] is None else list(data[name])
        return _without_later_defaults(data, _LATER_ENCODE_DEFAULTS)

    def fingerprint(self, model_fingerprint: str) -> str:
        """Hash of the model and every setting that changes the vectors (dtypes included)."""
        settings = self.to_json()
        if settings["pool_factor"] == 1:
            del settings["pool_factor"]  # no pooling hashes as before the flag existed: older indexes stay current
        if settings["runtime"] == "torch":
            del settings["runtime"]  # likewise: torch's indexes stay current; another runtime's vectors differ
        payload = json.dumps({"model": model_fingerprint, "settings": settings}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


def resolve_dtype(dtype: str, device_type: str) -> str:
    """``auto`` means float32 on CPU (exact parity with the references) and bfloat16 on CUDA.

    bfloat16 on a CPU with native bfloat16 instructions (AVX512-BF16 or AMX) is about 3x faster but only reaches per-token cosine ~0.999 against float32,
    so it is opt-in there (``--dtype bfloat16``); see the README's performance section.
    """
    if dtype == "bfloat16" and device_type == "cpu":
        _warn_if_bfloat16_is_emulated()
    if dtype != "auto":
        return dtype
    if device_type == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def resolve(
    flags: EncodeFlags,
    colbert: ColbertConfig | None,
    model_max_length: int,
    device_type: str = "cpu",
    position_limit: int | None = None,
) -> EncodeSettings:
    """Join the user's flags with the checkpoint's ColBERT settings into one kind's settings."""
    flags = checked_flags(flags)
    mode = flags.mode or ("colbert" if colbert is not None else "raw")
    if mode == "colbert" and colbert is None:
        raise UsageError(
            "--mode colbert needs a ColBERT checkpoint (Stanford HF_ColBERT or PyLate/sentence-transformers "
            "with ColBERT settings); this one carries none.",
            hint="use --mode raw, or point --model at a ColBERT checkpoint",
        )
    # An explicit length overrides max_seq_length and the tokenizer's limit (as sentence-transformers does);
    # only the positions the model can embed cap it, and past them it is refused, never silently cut.
    limit = position_limit or model_max_length
    if flags.max_length is not None and flags.max_length > limit:
        default = resolve(replace(flags, max_length=None), colbert, model_max_length, device_type, position_limit).max_length
        raise UsageError(
            f"--max-length {flags.max_length} is more than this model's {limit} positions",
            hint=f"use --max-length {limit} or less (the default is {default})",
        )

    base = EncodeSettings(
        mode=mode,
        kind=flags.kind,
        max_length=flags.max_length or min(model_max_length, limit),
        prefix="",
        register_prefix_tokens=False,
        expand_to=None,
        attend_to_expansion_tokens=False,
        expansion_token=None,
        skiplist_words=(),
        normalize=flags.normalize,
        dimensions=flags.dimensions,
        dtype=resolve_dtype(flags.dtype, device_type),
        store_dtype=flags.store_dtype,
        pool_factor=flags.pool_factor,
    )
    if mode == "raw":
        return base
    # Explicit ColBERT lengths override max_seq_length (as sentence-transformers does); only positions cap them.
    return _colbert_settings(base, flags, colbert, limit)


def _colbert_settings(base: EncodeSettings, flags: EncodeFlags, colbert: ColbertConfig, limit: int) -> EncodeSettings:
    base = replace(
        base,
        register_prefix_tokens=colbert.register_prefix_tokens,
        skiplist_words=colbert.skiplist_words if flags.kind in colbert.skiplist_tasks else (),
        normalize=base.normalize and colbert.normalize,
    )
    if flags.kind == "query":
        length = min(flags.max_length or colbert.query_length or base.max_length, limit)
        return replace(
            base,
            max_length=length,
            prefix=colbert.query_prefix,
            expand_to=length if colbert.expand_queries else None,
            attend_to_expansion_tokens=colbert.attend_to_expansion_tokens,
            expansion_token=colbert.expansion_token,
            expansion_side=colbert.expansion_side if colbert.expand_queries else "right",
        )
    if flags.pool_factor > 1 and not colbert.normalize:
        raise UsageError(
            "--pool-factor clusters unit vectors by cosine distance; this checkpoint's pipeline does not normalize "
            "its vectors (no Normalize module in modules.json)",
            hint="drop --pool-factor",
        )
    length = min(flags.max_length or colbert.document_length or base.max_length, limit)
    return replace(base, max_length=length, prefix=colbert.document_prefix, keep_only_ids=colbert.keep_only_token_ids)


# The flags that are counts: (field, flag, least value, None allowed: not set).
_COUNTS = (("max_length", "--max-length", 2, True), ("dimensions", "--dimensions", 1, True),
           ("pool_factor", "--pool-factor", 1, False))
# The flags that name a hub revision or a checkpoint (None: not set); a ``Path`` base model is taken as its folder.
_NAMES = (("revision", "--revision"), ("base_model", "--base-model"), ("base_revision", "--base-revision"))


def checked_flags(flags: EncodeFlags) -> EncodeFlags:
    """``flags`` with its counts Python ints and its names str, every field checked (the CLI's flags and a library
    caller's alike, before the model loads). The manifest records the flags whole and JSON takes no numpy integer: a
    field of the wrong type is a ``UsageError`` naming its flag, never a TypeError after the corpus was encoded."""
    if not isinstance(flags, EncodeFlags):
        raise UsageError(f"flags: expected an EncodeFlags, got {type(flags).__name__}")
    _check_choices(flags)
    if not isinstance(flags.normalize, bool):
        raise UsageError(f"normalize {flags.normalize!r} (--no-normalize): must be True or False")
    counts = {name: whole_count(flag, getattr(flags, name), least, optional) for name, flag, least, optional in _COUNTS}
    flags = replace(flags, **counts, **{name: _name(flag, getattr(flags, name)) for name, flag in _NAMES})
    _check_pool_factor(flags)
    return flags


def whole_count(flag: str, value, least: int, optional: bool = False) -> int | None:
    """``value`` of the count ``flag`` as a Python int of at least ``least`` (numpy integers taken; a bool, float or
    str refused naming the flag); None where ``optional`` and not set."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy integers are Integral
        raise UsageError(f"{flag} {value!r}: must be a whole number")
    if value < least:
        raise UsageError(f"{flag} must be at least {least}, got {value}")
    return int(value)


def _name(flag: str, value) -> str | None:
    if flag == "--base-model" and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is not None and not isinstance(value, str):
        raise UsageError(f"{flag} {value!r}: expected a str, got {type(value).__name__}")
    return value


def _check_pool_factor(flags: EncodeFlags) -> None:
    from importlib.util import find_spec

    if flags.pool_factor > 1 and find_spec("scipy") is None:
        raise UsageError("--pool-factor needs scipy, which is not installed", hint="pip install 'tokembed[pool]'")
    if flags.pool_factor > 1 and flags.kind == "query":
        raise UsageError(
            f"--pool-factor {flags.pool_factor} pools documents only; queries are never pooled",
            hint="drop --pool-factor, or encode with --kind document",
        )
    if flags.pool_factor > 1 and not flags.normalize:
        raise UsageError(
            "--pool-factor clusters unit vectors by cosine distance (as PyLate does); it cannot be used with --no-normalize",
            hint="drop --no-normalize or --pool-factor",
        )


def _check_choices(flags: EncodeFlags) -> None:
    for name, value, choices in (
        ("--mode", flags.mode, MODES + (None,)),
        ("--kind", flags.kind, KINDS),
        ("--dtype", flags.dtype, COMPUTE_DTYPES),
        ("--store-dtype", flags.store_dtype, STORE_DTYPES),
    ):
        if value not in choices:
            shown = ", ".join(c for c in choices if c)
            raise UsageError(f"{name} must be one of {shown}; got {value!r}")



@functools.cache
def _warn_if_bfloat16_is_emulated() -> None:
    """Without AVX512-BF16 or AMX a CPU emulates bfloat16 matrix products: ~6x slower than float32 (measured on an
    AVX2 AMD EPYC), the opposite of what ``--dtype bfloat16`` is asked for."""
    import torch

    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        print("tokembed: warning: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX): --dtype bfloat16 "
              "runs emulated, several times slower than float32", file=sys.stderr)


def known_keys(section: dict, settings_class, name: str) -> dict:
    """A manifest section whose keys this release knows; a key it does not (a flag a later release added) is
    refused (exit 6), never dropped: the queries would be encoded otherwise than the index's documents."""
    from dataclasses import fields

    from tokembed.errors import IndexCorruptError

    unknown = sorted(set(section) - {field.name for field in fields(settings_class)})
    if unknown:
        raise IndexCorruptError(
            f"the index's manifest.json records {name} {', '.join(map(repr, unknown))} that this tokembed does not know "
            "(written by a later release?)",
            hint="score it with the tokembed release that built it, or re-encode it with this one (encode --full)",
        )
    return section
