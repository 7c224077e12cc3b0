"""A Stanford ``HF_ColBERT`` folder (``artifact.metadata``, ``linear.weight``) that also carries a PyLate module tree
(``modules.json``, ``N_Dense/``, ``config_sentence_transformers.json``), as PyLate conversions of colbert-ai
checkpoints on the hub do. colbert-ai reads the Stanford files; PyLate 1.6 reads the module tree (its Stanford branch
runs only without ``modules.json``). tokembed loads the Stanford files (``HF_ColBERT`` / ``jina-colbert``) after
checking that the module tree says the same: the same projection, bit for bit, and the same ColBERT settings, each
read the way its reference reads it. Where they disagree the references do, and the load is refused."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import torch
from torch import nn

from tokembed.errors import ModelError
from tokembed.models.st_layout import check_module_types, load_dense_stack, read_modules, transformer_folder, transformer_settings
from tokembed.settings import ColbertConfig

_STANFORD = "artifact.metadata + linear.weight"
_MODULE_TREE = "modules.json + config_sentence_transformers.json"
_HINT = ("colbert-ai reads artifact.metadata and linear.weight, PyLate the module tree (modules.json, its Dense "
         "folders, config_sentence_transformers.json): keep the layout the model was trained with (remove modules.json "
         "and its module folders for colbert-ai's reading)")

# What each ColbertConfig field is called on each side: (artifact.metadata, config_sentence_transformers.json).
_NAMES = {
    "query_prefix": ("query_token_id", "query_prefix"),
    "document_prefix": ("doc_token_id", "document_prefix"),
    "query_length": ("query_maxlen", "query_length"),
    "document_length": ("doc_maxlen", "document_length"),
    "expand_queries": ("query expansion (always)", "do_query_expansion"),
    "attend_to_expansion_tokens": ("attend_to_mask_tokens", "attend_to_expansion_tokens"),
    "expansion_token": ("expansion token (the mask token)", "query_expansion token"),
    "skiplist_words": ("mask_punctuation", "skiplist_words"),
    "skiplist_tasks": ("skiplist applied to documents", "MultiVectorMask skiplist_tasks"),
    "keep_only_token_ids": ("no token allowlist", "MultiVectorMask keep_only_token_ids"),
    "normalize": ("L2 per token", "token-level Normalize"),
    "register_prefix_tokens": ("markers inserted as one token", "query_prefix / document_prefix keys (PyLate markers)"),
}
_SET_OF = ("skiplist_words",)  # order does not matter to a skiplist


def refuse_disagreeing_module_tree(path: Path, weight: torch.Tensor, colbert: ColbertConfig,
                                   trust_remote_code: bool) -> None:
    """Nothing to check without ``modules.json``: PyLate then reads the Stanford files too."""
    modules = read_modules(path)
    if not modules:
        return
    disagreement = _backbone_disagreement(path, modules) or _projection_disagreement(
        path, modules, weight, trust_remote_code) or _settings_disagreement(path, colbert)
    if disagreement:
        raise ModelError(f"{path}: a Stanford HF_ColBERT checkpoint ({_STANFORD}) and a PyLate module tree "
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


def _settings_disagreement(path: Path, colbert: ColbertConfig) -> str | None:
    from tokembed.models.st_colbert import STColBERT  # st_colbert imports st_layout, as this module does

    pylate = STColBERT.colbert_config(path)
    stanford = _stanford_markers(colbert)
    for field in fields(ColbertConfig):
        if field.name not in _NAMES:
            continue
        ours, theirs = getattr(stanford, field.name), getattr(pylate, field.name)
        if field.name in _SET_OF:
            ours, theirs = set(ours), set(theirs)
        if ours != theirs:
            stanford_name, pylate_name = _NAMES[field.name]
            return (f"artifact.metadata {stanford_name} reads as {_shown(ours)}, config_sentence_transformers.json "
                    f"{pylate_name} as {_shown(theirs)}")
    return None


def _stanford_markers(colbert: ColbertConfig) -> ColbertConfig:
    """colbert-ai inserts the token ``query_token_id`` names, PyLate the token its prefix names (a PyLate ``"[Q] "``
    is a token of its own, space included); tokembed's Stanford prefix is that token and a space."""
    return replace(colbert, query_prefix=colbert.query_prefix.removesuffix(" "),
                   document_prefix=colbert.document_prefix.removesuffix(" "))


def _shown(value) -> str:
    return repr(sorted(value) if isinstance(value, set) else value)
