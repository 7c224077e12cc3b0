"""PyLate / sentence-transformers ColBERT checkpoints (BERT, ModernBERT, XLM-RoBERTa, LFM2, any AutoModel).

Layout: ``modules.json`` = ``Transformer`` then one or more ``Dense`` (``N_Dense/``), and in native
sentence-transformers saves a ``MultiVectorMask`` and a token-level ``Normalize``. ColBERT settings come
from ``config_sentence_transformers.json`` (PyLate keys: ``query_prefix``, ``document_prefix``,
``query_length``, ``document_length``, ``attend_to_expansion_tokens``, ``skiplist_words``,
``do_query_expansion``, ``prompts``) or, in native saves, from the Transformer's ``query_expansion`` and the
``MultiVectorMask`` config (``skiplist_words``, ``skiplist_tasks``, ``keep_only_token_ids``); a native save
without a ``Normalize`` or ``MultiVectorMask`` module goes without what it does. The resolution mirrors
``sentence_transformers.MultiVectorEncoder``, which reproduces PyLate exactly.
"""

from __future__ import annotations

import string
from dataclasses import replace
from pathlib import Path

from tokembed.errors import ModelError
from tokembed.models.base import LoadOptions, TokenModel, read_json
from tokembed.models.st_layout import (
    load_st_folder, module_config, modules_of_type, read_modules, transformer_folder, transformer_settings,
)
from tokembed.models.st_settings import PYLATE_MARKERS, TransformerLengths, read_lengths
from tokembed.settings import ColbertConfig

def has_colbert_settings(path: Path) -> bool:
    """``config_sentence_transformers.json`` holds ColBERT settings (PyLate's keys, or a multi-vector model type)."""
    st_config = read_json(path / "config_sentence_transformers.json") or {}
    return st_config.get("model_type") in ("ColBERT", "MultiVectorEncoder") or any(key in st_config for key in PYLATE_MARKERS)


def incomplete_st_colbert(path: Path) -> str | None:
    """Why a folder that is half a PyLate checkpoint cannot be read as one (None: it is not half of one). Read as
    a plain encoder it would lose its projection or its ColBERT settings without a word."""
    modules = read_modules(path)
    settings = has_colbert_settings(path)
    if settings and not modules:
        return (f"{path}: ColBERT settings in config_sentence_transformers.json but no modules.json, which names "
                "its pipeline (the backbone's folder, the Dense projection)")
    if not settings and any(module.get("type", "").startswith("pylate.") for module in modules):
        return f"{path}: modules.json names PyLate modules but config_sentence_transformers.json holds no ColBERT settings"
    return None


def is_st_colbert(path: Path) -> bool:
    """A sentence-transformers folder that carries ColBERT settings (PyLate save or native multi-vector save)."""
    modules = read_modules(path)
    return bool(modules) and (bool(modules_of_type(modules, "MultiVectorMask")) or has_colbert_settings(path))


class STColBERT:
    key = "st-colbert"
    detected_by = "modules.json + ColBERT settings in config_sentence_transformers.json (PyLate) or a MultiVectorMask module"
    needs = "Transformer backbone (BERT, ModernBERT, XLM-RoBERTa, LFM2, any AutoModel) + N_Dense/ projection(s)"
    reference = ("sentence-transformers 6.2 MultiVectorEncoder (bit for bit on text); PyLate 1.6 ColBERT alike, "
                 "but for a few hand-edited settings the README lists")

    @staticmethod
    def colbert_config(path: Path) -> ColbertConfig:
        return _settings(path)[0]

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> TokenModel:
        colbert, lengths = _settings(path)
        model = load_st_folder(cls.key, path, options, colbert=colbert)
        # PyLate and MultiVectorEncoder pad every query to the expansion width, even where colbert_config drops an
        # unscored expansion (steps.refuse_queries_past_positions)
        model.query_width_setting = lengths.width_setting
        if colbert.expand_queries:
            refuse_unknown_expansion_token(model.tokenizer, colbert.expansion_token, lengths.expansion_file)
        if getattr(model.tokenizer, "padding_side", "right") == "left" and _is_native(path):
            model.colbert = _expanded_on_the_left(colbert, lengths)
        return model


def _settings(path: Path) -> tuple[ColbertConfig, TransformerLengths]:
    modules = read_modules(path)
    st_config = read_json(path / "config_sentence_transformers.json") or {}
    lengths = read_lengths(st_config, path / "config_sentence_transformers.json", transformer_settings(path, modules),
                           transformer_folder(path, modules) / "sentence_bert_config.json")
    query_prefix, document_prefix, legacy = _prefixes(st_config)
    expansion = lengths.expansion
    # A native save runs modules.json as written; PyLate and converted saves get a MultiVectorMask and a
    # token-level Normalize appended by MultiVectorEncoder.
    native = st_config.get("model_type") == "MultiVectorEncoder"
    mask = module_config(path, modules, "MultiVectorMask")
    if native and mask is None and expansion is not None and not expansion.get("attend"):
        # No mask scores the unattended expansion positions: the output is the real tokens, which never saw
        # them (the same vectors as a query cut at the expansion length and not expanded).
        expansion = None
    colbert = ColbertConfig(
        query_prefix=query_prefix,
        document_prefix=document_prefix,
        query_length=lengths.query_length,
        document_length=lengths.document_length,
        expand_queries=expansion is not None,
        attend_to_expansion_tokens=bool(expansion and expansion.get("attend")),
        expansion_token=expansion.get("token") if expansion else None,
        skiplist_words=tuple(_skiplist(mask, native, st_config, legacy)),
        skiplist_tasks=_skiplist_tasks(path, modules, mask),
        keep_only_token_ids=_keep_only_token_ids(path, modules, mask),
        normalize=not native or _pipeline_normalizes(path, modules),
        register_prefix_tokens=legacy,
    )
    return colbert, lengths


def _is_native(path: Path) -> bool:
    return (read_json(path / "config_sentence_transformers.json") or {}).get("model_type") == "MultiVectorEncoder"


def _expanded_on_the_left(colbert: ColbertConfig, lengths: TransformerLengths) -> ColbertConfig:
    """A native save whose tokenizer pads on the left: MultiVectorEncoder, its one reference, writes the expansion
    tokens over the pad positions, before the query (PyLate and Stanford layouts are refused:
    ``steps.refuse_left_expansion``)."""
    if colbert.expand_queries:
        return replace(colbert, expansion_side="left")
    if lengths.expansion is not None:
        # _settings dropped the unattended expansion for want of a MultiVectorMask: on the right it changes nothing;
        # on the left it moves the query's positions, which tokembed does not reproduce.
        raise ModelError(f"{lengths.expansion_file}: unattended query_expansion with a left-padding tokenizer and no "
                         "MultiVectorMask module (the query tokens would sit after unscored expansion positions)",
                         hint='set "attend": true, add a MultiVectorMask module, or pad on the right')
    return colbert


def refuse_unknown_expansion_token(tokenizer, token: str | None, source: Path) -> None:
    """An explicit expansion token the vocabulary lacks maps to the unknown token (or no id): queries would be
    expanded with [UNK]. sentence-transformers' Transformer refuses it at load (``_validate_query_expansion_token``)."""
    if token is None:
        return
    token_id = tokenizer.convert_tokens_to_ids(token)
    unknown = token_id is None or (token_id == getattr(tokenizer, "unk_token_id", None)
                                   and token != getattr(tokenizer, "unk_token", None))
    if unknown:
        raise ModelError(f"{source}: query_expansion token {token!r} is not in the tokenizer's vocabulary (queries "
                         "would be expanded with the unknown token)",
                         hint="name a token of the vocabulary, or null for the mask token (else the EOS token)")


def _prefixes(st_config: dict) -> tuple[str, str, bool]:
    """PyLate stores markers as ``query_prefix``/``document_prefix``; native saves use ``prompts``."""
    prompts = st_config.get("prompts") or {}
    legacy = "query_prefix" in st_config or "document_prefix" in st_config
    resolved = []
    for prefix_key, prompt_key in (("query_prefix", "query"), ("document_prefix", "document")):
        prompt = prompts.get(prompt_key) or ""
        prefix = st_config.get(prefix_key) or ""
        resolved.append(prefix + prompt.removeprefix(prefix) if prefix_key in st_config else prompt)
    return resolved[0], resolved[1], legacy


def _skiplist(mask_config: dict | None, native: bool, st_config: dict, legacy: bool) -> list[str]:
    if mask_config is not None:
        return list(mask_config.get("skiplist_words") or [])
    if native:
        return []  # no MultiVectorMask in the pipeline: nothing is skipped
    words = st_config.get("skiplist_words")
    if words is not None:
        return list(words)
    # PyLate applied a punctuation skiplist by default; native saves without a mask module have none.
    if legacy or st_config.get("model_type") == "ColBERT":
        return list(string.punctuation)
    return []


def _mask_file(path: Path, modules: list[dict]) -> Path:
    return path / modules_of_type(modules, "MultiVectorMask")[0].get("path", "") / "config.json"


def _skiplist_tasks(path: Path, modules: list[dict], mask_config: dict | None) -> tuple[str, ...]:
    """MultiVectorMask's ``skiplist_tasks``: a list of kinds, or one kind as a string; unset means documents."""
    tasks = (mask_config or {}).get("skiplist_tasks")
    if tasks is None:
        return ("document",)
    tasks = [tasks] if isinstance(tasks, str) else tasks
    if not isinstance(tasks, list) or not all(isinstance(task, str) for task in tasks):
        raise ModelError(f"{_mask_file(path, modules)}: skiplist_tasks {tasks!r} is not a list of task names")
    return tuple(tasks)


def _keep_only_token_ids(path: Path, modules: list[dict], mask_config: dict | None) -> tuple[int, ...] | None:
    """MultiVectorMask's ``keep_only_token_ids``: documents keep only these ids (empty or unset: no allowlist)."""
    ids = (mask_config or {}).get("keep_only_token_ids")
    if not ids:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ModelError(f"{_mask_file(path, modules)}: keep_only_token_ids {ids!r} is not a list of token ids")
    return tuple(ids)


def _pipeline_normalizes(path: Path, modules: list[dict]) -> bool:
    """Whether a native pipeline L2-normalizes the token vectors: a ``Normalize`` that reads and writes
    ``token_embeddings`` (its default is the sentence embedding, which a multi-vector pipeline does not have)."""
    last_dense = max((modules.index(module) for module in modules_of_type(modules, "Dense")), default=-1)
    normalizes = False
    for module in modules_of_type(modules, "Normalize"):
        config = read_json(path / module.get("path", "") / "config.json") or {}
        source = config.get("module_input_name", "sentence_embedding")
        if source != "token_embeddings" or (config.get("module_output_name") or source) != "token_embeddings":
            continue
        if modules.index(module) < last_dense:
            raise ModelError(f"{path / 'modules.json'}: a token-level Normalize before a Dense projection; tokembed "
                             "normalizes the projected vectors only")
        normalizes = True
    return normalizes
