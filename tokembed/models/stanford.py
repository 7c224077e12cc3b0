"""Stanford / colbert-ai ``HF_ColBERT`` checkpoints (colbert-ir/colbertv2.0 and its fine-tunes).

Layout: ``config.json`` with ``architectures: ["HF_ColBERT"]``; BERT weights and the projection
``linear.weight`` ([dim, hidden], no bias) in the same weight file; ColBERT settings in
``artifact.metadata`` (``query_token_id``, ``doc_token_id``, ``query_maxlen``, ``doc_maxlen``,
``attend_to_mask_tokens``, ``mask_punctuation``). Defaults follow colbert-ai's ``ColBERTConfig``:
markers ``[unused0]``/``[unused1]``, queries expanded with ``[MASK]`` to 32, documents cut at 180,
punctuation masked. A module tree beside these files (``modules.json``, ``1_Dense``; PyLate's or a native
sentence-transformers save) is what PyLate and MultiVectorEncoder read instead: it must say the same (``both_layouts``).

Markers follow colbert-ai's current ``QueryTokenizer`` / ``DocTokenizer`` (as PyLate's and vLLM's ColBERT encoders
do): the text is tokenized alone and the marker's id inserted after its first token (colbert-ai before
``_insert_prefix_token`` tokenized ``". " + text`` and overwrote position 1: the same ids on WordPiece). tokembed
prepends the marker as text (long texts are read in windows of text), in the form whose ids are that insertion:
``"[unused0] "`` on WordPiece, ``"[unused0]"`` on a byte-level BPE (whose space would make ``Ġthe`` of ``the``).
"""

from __future__ import annotations

import copy
import string
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from tokembed.errors import ModelError
from tokembed.models.base import (
    DenseLayer,
    LoadOptions,
    TokenModel,
    hidden_size_of,
    load_backbone,
    model_max_length,
    position_limit,
    read_json,
)
from tokembed.models.both_layouts import refuse_disagreeing_module_tree
from tokembed.models.steps import marker_forms, prefix_tokens_to_register, reads_as_inserted
from tokembed.models.weights import load_tensors
from tokembed.settings import ColbertConfig


class StanfordColBERT:
    key = "HF_ColBERT"
    detected_by = 'config.json "architectures": ["HF_ColBERT"]'
    needs = "BERT weights + linear.weight in the same file; artifact.metadata (optional)"
    reference = "colbert-ai (ColBERT checkpoint encoding); PyLate / sentence-transformers MultiVectorEncoder"

    @staticmethod
    def colbert_config(path: Path) -> ColbertConfig:
        meta = read_json(path / "artifact.metadata") or {}
        return ColbertConfig(
            query_prefix=(meta.get("query_token_id") or "[unused0]") + " ",
            document_prefix=(meta.get("doc_token_id") or "[unused1]") + " ",
            query_length=meta.get("query_maxlen") or 32,
            document_length=meta.get("doc_maxlen") or 180,
            expand_queries=True,
            attend_to_expansion_tokens=bool(meta.get("attend_to_mask_tokens")),
            skiplist_words=tuple(string.punctuation) if meta.get("mask_punctuation", True) else (),
            register_prefix_tokens=True,
        )

    @staticmethod
    def query_width_setting(path: Path) -> tuple[Path, str]:
        """colbert-ai pads every query to ``query_maxlen`` (``steps.refuse_queries_past_positions``)."""
        return path / "artifact.metadata", "query_maxlen"

    @staticmethod
    def check_dim(path: Path, weight: torch.Tensor) -> None:
        """colbert-ai builds the projection with ``artifact.metadata``'s ``dim`` rows and refuses a weight of
        another shape: so does tokembed (it used to take the width from the tensor)."""
        stated = (read_json(path / "artifact.metadata") or {}).get("dim")
        if stated is not None and stated != weight.shape[0]:
            raise ModelError(f"{path}: artifact.metadata says dim {stated}, linear.weight is {list(weight.shape)}")

    @staticmethod
    def with_marker_forms(colbert: ColbertConfig, tokenizer) -> ColbertConfig:
        """The markers in the text form whose ids are colbert-ai's (``steps.marker_forms``); unchanged where no form
        is (``steps.refuse_marker_forms`` refuses it in colbert mode) or the marker is unknown (refused too)."""
        to_register = prefix_tokens_to_register(tokenizer, (colbert.query_prefix, colbert.document_prefix))
        probe = tokenizer
        if to_register:  # on a copy: registering them would change raw mode's reading of a text (a copy of jina's
            probe = copy.deepcopy(tokenizer)  # 250k vocabulary, whose markers need none, took ~0.3 s of every start)
            probe.add_special_tokens({"additional_special_tokens": to_register})
        chosen = {}
        for setting in ("query_prefix", "document_prefix"):
            value = getattr(colbert, setting)
            chosen[setting] = next((form for form in marker_forms(value) if reads_as_inserted(probe, form)), value)
        return replace(colbert, **chosen)

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> TokenModel:
        backbone, tokenizer, config = load_backbone(path, options, ignore_unused=(r"linear\.weight$",))
        weight = load_tensors(path, {"linear.weight"}, required={"linear.weight"})["linear.weight"]
        cls.check_dim(path, weight)
        colbert = cls.colbert_config(path)
        # the settings as saved, the tokenizer as saved (nothing registered yet)
        refuse_disagreeing_module_tree(path, weight, colbert, tokenizer, options.trust_remote_code)
        colbert = cls.with_marker_forms(colbert, tokenizer)
        projection = nn.Sequential(DenseLayer(weight, None, nn.Identity()))
        return TokenModel(
            family=cls.key,
            path=path,
            architecture="HF_ColBERT",
            tokenizer=tokenizer,
            backbone=backbone,
            projection=projection.to(torch.float32),
            colbert=colbert,
            max_length=model_max_length(tokenizer, config),
            hidden_size=hidden_size_of(config),
            position_limit=position_limit(config),
            query_width_setting=cls.query_width_setting(path),
        )
