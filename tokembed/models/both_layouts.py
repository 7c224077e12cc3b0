"""A Stanford ``HF_ColBERT`` folder (``artifact.metadata``, ``linear.weight``) that also carries a module tree
(``modules.json``, ``N_Dense/``, ``config_sentence_transformers.json``): PyLate's, as PyLate conversions of colbert-ai
checkpoints on the hub do, or sentence-transformers' native one (``MultiVectorEncoder.save``, markers as ``prompts``).
colbert-ai reads the Stanford files; PyLate 1.6 and MultiVectorEncoder read the module tree (their Stanford branch
runs only without ``modules.json``). tokembed loads the Stanford files (``HF_ColBERT`` / ``jina-colbert``) after
checking that the module tree says the same: the same projection, bit for bit, and the same ColBERT settings, each
read the way its reference reads it. Where they disagree the references do, and the load is refused."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import torch
from torch import nn

from tokembed.errors import ModelError
from tokembed.models.base import read_json
from tokembed.models.st_layout import check_module_types, load_dense_stack, read_modules, transformer_folder, transformer_settings
from tokembed.models.steps import reads_as_inserted
from tokembed.settings import ColbertConfig

_STANFORD = "artifact.metadata + linear.weight"
_MODULE_TREE = "modules.json + config_sentence_transformers.json"
_HINT = ("colbert-ai reads artifact.metadata and linear.weight, PyLate and sentence-transformers the module tree "
         "(modules.json, its Dense folders, config_sentence_transformers.json): keep the layout the model was trained "
         "with (remove modules.json and its module folders for colbert-ai's reading)")
_ST_CONFIG = "config_sentence_transformers.json"

# What each ColbertConfig field is called on each side: (artifact.metadata, the module tree), for a PyLate tree (its
# flat keys in config_sentence_transformers.json) and a native one (prompts, the Transformer's query_expansion).
_PYLATE_NAMES = {
    "query_prefix": ("query_token_id", f"{_ST_CONFIG} query_prefix"),
    "document_prefix": ("doc_token_id", f"{_ST_CONFIG} document_prefix"),
    "query_length": ("query_maxlen", f"{_ST_CONFIG} query_length"),
    "document_length": ("doc_maxlen", f"{_ST_CONFIG} document_length"),
    "expand_queries": ("query expansion (always)", f"{_ST_CONFIG} do_query_expansion"),
    "attend_to_expansion_tokens": ("attend_to_mask_tokens", f"{_ST_CONFIG} attend_to_expansion_tokens"),
    "expansion_token": ("expansion token (the mask token)", f"{_ST_CONFIG} query_expansion token"),
    "skiplist_words": ("mask_punctuation", f"{_ST_CONFIG} skiplist_words"),
    "skiplist_tasks": ("skiplist applied to documents", "MultiVectorMask skiplist_tasks"),
    "keep_only_token_ids": ("no token allowlist", "MultiVectorMask keep_only_token_ids"),
    "normalize": ("L2 per token", "token-level Normalize"),
    "register_prefix_tokens": ("markers inserted as one token", f"{_ST_CONFIG} query_prefix / document_prefix keys"),
}
_NATIVE_NAMES = {  # prompts and register_prefix_tokens: _prompt_disagreement
    "query_length": ("query_maxlen", "sentence_bert_config.json query_expansion length"),
    "document_length": ("doc_maxlen", "sentence_bert_config.json document_length"),
    "expand_queries": ("query expansion (always)", "sentence_bert_config.json query_expansion"),
    "attend_to_expansion_tokens": ("attend_to_mask_tokens", "sentence_bert_config.json query_expansion attend"),
    "expansion_token": ("expansion token (the mask token)", "sentence_bert_config.json query_expansion token"),
    "skiplist_words": ("mask_punctuation", "MultiVectorMask skiplist_words"),
    "skiplist_tasks": ("skiplist applied to documents", "MultiVectorMask skiplist_tasks"),
    "keep_only_token_ids": ("no token allowlist", "MultiVectorMask keep_only_token_ids"),
    "normalize": ("L2 per token", "token-level Normalize"),
}
_PROMPTS = {"query_prefix": ("query_token_id", f"{_ST_CONFIG} prompts query"),
            "document_prefix": ("doc_token_id", f"{_ST_CONFIG} prompts document")}
_SET_OF = ("skiplist_words",)  # order does not matter to a skiplist


def refuse_disagreeing_module_tree(path: Path, weight: torch.Tensor, colbert: ColbertConfig, tokenizer,
                                   trust_remote_code: bool) -> None:
    """Nothing to check without ``modules.json``: PyLate then reads the Stanford files too. ``tokenizer`` is the
    root's as saved (nothing registered yet), the one the module tree's Transformer reads its prompts with."""
    modules = read_modules(path)
    if not modules:
        return
    disagreement = _backbone_disagreement(path, modules) or _projection_disagreement(
        path, modules, weight, trust_remote_code) or _settings_disagreement(path, colbert, tokenizer)
    if disagreement:
        raise ModelError(f"{path}: a Stanford HF_ColBERT checkpoint ({_STANFORD}) and a module tree "
                         f"({_MODULE_TREE}) that disagree: {disagreement}", hint=_HINT)


def _backbone_disagreement(path: Path, modules: list[dict]) -> str | None:
    check_module_types(path, modules)
    folder = transformer_folder(path, modules)
    if folder.resolve() != Path(path).resolve():
        return f"modules.json runs the backbone in {folder}, colbert-ai the one at the checkpoint's root"
    if transformer_settings(path, modules).get("do_lower_case"):
        return (f"{folder / 'sentence_bert_config.json'} lowercases the text (do_lower_case), colbert-ai reads it "
                "as the tokenizer does")
    return None


def _projection_disagreement(path: Path, modules: list[dict], weight: torch.Tensor,
                             trust_remote_code: bool) -> str | None:
    """The module tree's ``Dense`` stack must be ``linear.weight`` alone: one layer, no bias, no activation, the
    same values (PyLate adds an untrained ``Dense`` to a tree without one)."""
    layers = list(load_dense_stack(path, modules, trust_remote_code, multi_vector=True))
    if len(layers) != 1:
        return f"modules.json lists {len(layers)} Dense modules, colbert-ai projects with linear.weight alone"
    layer = layers[0]
    folder = path / next(m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Dense"))
    if layer.linear.bias is not None or not isinstance(layer.activation, nn.Identity):
        return (f"{folder} has a bias or an activation ({type(layer.activation).__name__}), colbert-ai's "
                "linear.weight neither")
    dense = layer.linear.weight.detach()
    if dense.shape != weight.shape or not torch.equal(dense.float(), weight.detach().float()):
        return (f"{folder}'s linear.weight {list(dense.shape)} is not the root's linear.weight "
                f"{list(weight.shape)} value for value")
    return None


def _settings_disagreement(path: Path, colbert: ColbertConfig, tokenizer) -> str | None:
    from tokembed.models.st_colbert import STColBERT  # st_colbert imports st_layout, as this module does

    tree = STColBERT.colbert_config(path)
    if _names_pylate_markers(path):
        return _field_disagreement(_stanford_markers(colbert), tree, _PYLATE_NAMES)
    return _prompt_disagreement(colbert, tree, tokenizer) or _field_disagreement(colbert, tree, _NATIVE_NAMES)


def _names_pylate_markers(path: Path) -> bool:
    """PyLate's keys name a marker token (registered as one); a native save's ``prompts`` are text."""
    st_config = read_json(path / _ST_CONFIG) or {}
    return "query_prefix" in st_config or "document_prefix" in st_config


def _field_disagreement(stanford: ColbertConfig, tree: ColbertConfig, names: dict) -> str | None:
    for field in fields(ColbertConfig):
        if field.name not in names:
            continue
        ours, theirs = getattr(stanford, field.name), getattr(tree, field.name)
        if field.name in _SET_OF:
            ours, theirs = set(ours), set(theirs)
        if ours != theirs:
            stanford_name, tree_name = names[field.name]
            return f"artifact.metadata {stanford_name} reads as {_shown(ours)}, {tree_name} as {_shown(theirs)}"
    return None


def _prompt_disagreement(colbert: ColbertConfig, tree: ColbertConfig, tokenizer) -> str | None:
    """A native save prepends its prompts as text, read by the tokenizer as saved (MultiVectorEncoder registers
    nothing for it): they agree where the prompt is the marker and that text reads as colbert-ai's insertion (as the
    tokenizer MultiVectorEncoder saves from a Stanford checkpoint, its markers registered, reads ``"[unused0] "``)."""
    for field, (stanford_name, tree_name) in _PROMPTS.items():
        marker, prompt = getattr(colbert, field).strip(), getattr(tree, field)
        if prompt.strip() != marker:
            return f"artifact.metadata {stanford_name} reads as {marker!r}, {tree_name} as {prompt!r}"
        if not reads_as_inserted(tokenizer, prompt):
            return (f"{tree_name} {prompt!r} is text that the saved {type(tokenizer).__name__} does not read as "
                    f"colbert-ai's inserted {stanford_name} {marker!r} (the text's own tokens after the marker's one)")
    return None


def _stanford_markers(colbert: ColbertConfig) -> ColbertConfig:
    """colbert-ai inserts the token ``query_token_id`` names, PyLate the token its prefix names (a PyLate ``"[Q] "``
    is a token of its own, space included); tokembed's Stanford prefix is that token and a space."""
    return replace(colbert, query_prefix=colbert.query_prefix.removesuffix(" "),
                   document_prefix=colbert.document_prefix.removesuffix(" "))


def _shown(value) -> str:
    return repr(sorted(value) if isinstance(value, set) else value)
