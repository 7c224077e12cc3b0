"""Builders for tiny, random, fully offline checkpoints in every layout tokembed reads.

Every ``build_*`` function has the signature ``build_xxx(path: pathlib.Path) -> pathlib.Path``: it
writes one checkpoint folder at ``path`` (created if missing) and returns ``path``. Builds are
deterministic (fixed ``torch.manual_seed`` per builder, hand-written or deterministically trained
tokenizers), need no network and take well under a second each.

Layouts (see ``tests/test_checkpoints.py`` for the proof that the reference library loads them):

* ``build_stanford``           Stanford colbert-ai ``HF_ColBERT`` (BERT, ``bert.``-prefixed weights +
                               root ``linear.weight``, ``artifact.metadata``).
* ``build_pylate_bert``        PyLate 1.x on sentence-transformers 4.x (no ``model_type`` key), BERT.
* ``build_pylate_modernbert``  PyLate on sentence-transformers 5.x (``model_type: ColBERT``), ModernBERT,
                               two Dense layers (``1_Dense`` Tanh + bias, ``2_Dense`` identity).
* ``build_pylate_xlmr``        PyLate, XLM-RoBERTa (Unigram/Metaspace tokenizer), Dense with bias,
                               ``attend_to_expansion_tokens: true``, custom short skiplist.
* ``build_pylate_lfm2``        PyLate, LFM2 backbone (no mask token: queries expand with EOS).
* ``build_st_native``          ``MultiVectorEncoder.save`` (sentence-transformers 6 native layout).
* ``build_raw_encoder``        Plain ``BertModel`` + tokenizer, no ColBERT files.
* ``build_raw_decoder``        Plain ``Qwen2ForCausalLM`` + byte-level BPE tokenizer.
* ``build_raw_projection``     Single-vector SentenceTransformer: Transformer + Pooling + Dense(Tanh).
* ``build_unknown_layout``     ``config.json`` with a ``model_type`` transformers does not know, no weights.

``CHECKPOINT_SPECS`` records, per ColBERT builder, the settings a test (or tokembed) should expect.

This module holds the Stanford and sentence-transformers-native builders and the registry; the PyLate
builders are in ``pylate_checkpoints.py``, the raw ones in ``raw_checkpoints.py`` and the tokenizers they
share in ``text_tokenizers.py`` (all re-exported here).
"""

from __future__ import annotations

import pathlib
import tempfile
from typing import Any

import torch
from safetensors.torch import save_file

from pylate_checkpoints import (
    DOCUMENT_LENGTH,
    QUERY_LENGTH,
    XLMR_SKIPLIST,
    build_pylate_bert,
    build_pylate_lfm2,
    build_pylate_modernbert,
    build_pylate_xlmr,
)
from raw_checkpoints import (
    _bert_config,
    build_raw_decoder,
    build_raw_encoder,
    build_raw_projection,
    build_unknown_layout,
)
from text_tokenizers import PUNCTUATION, _bert_tokenizer, _prepare, _write_json

__all__ = [
    "BUILDERS",
    "CHECKPOINT_SPECS",
    "COLBERT_BUILDERS",
    "RAW_BUILDERS",
    "build_pylate_bert",
    "build_pylate_lfm2",
    "build_pylate_modernbert",
    "build_pylate_xlmr",
    "build_raw_decoder",
    "build_raw_encoder",
    "build_raw_projection",
    "build_st_native",
    "build_stanford",
    "build_unknown_layout",
]

# --------------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------


def build_stanford(path: pathlib.Path) -> pathlib.Path:
    """Stanford colbert-ai ``HF_ColBERT`` checkpoint (colbert-ir/colbertv2.0 layout).

    Files: config.json (``architectures: ["HF_ColBERT"]``, model_type bert), model.safetensors (every
    BERT weight under ``bert.`` incl. the pooler, plus ``linear.weight`` [24, 32], no bias),
    artifact.metadata (flat ColBERTConfig dump), tokenizer.json, tokenizer_config.json, vocab.txt.
    """
    from transformers import BertModel

    path = _prepare(path)
    tokenizer = _bert_tokenizer(path)
    config = _bert_config(len(tokenizer))
    config.architectures = ["HF_ColBERT"]
    torch.manual_seed(1)
    bert = BertModel(config, add_pooling_layer=True).eval()
    linear = torch.nn.Linear(config.hidden_size, 24, bias=False)

    state = {f"bert.{key}": value.detach().clone().contiguous() for key, value in bert.state_dict().items()}
    state["linear.weight"] = linear.weight.detach().clone().contiguous()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))

    metadata = {
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_token": "[Q]",
        "doc_token": "[D]",
        "ncells": None,
        "centroid_score_threshold": None,
        "ndocs": None,
        "load_index_with_mmap": False,
        "index_path": None,
        "index_bsize": 64,
        "nbits": 2,
        "kmeans_niters": 4,
        "resume": False,
        "pool_factor": 1,
        "clustering_mode": "hierarchical",
        "protected_tokens": 0,
        "similarity": "cosine",
        "bsize": 32,
        "accumsteps": 1,
        "lr": 1e-05,
        "maxsteps": 400000,
        "save_every": None,
        "warmup": 20000,
        "warmup_bert": None,
        "relu": False,
        "nway": 64,
        "use_ib_negatives": True,
        "reranker": False,
        "distillation_alpha": 1.0,
        "ignore_scores": False,
        "model_name": None,
        "query_maxlen": QUERY_LENGTH,
        "attend_to_mask_tokens": False,
        "interaction": "colbert",
        "dim": 24,
        "doc_maxlen": DOCUMENT_LENGTH,
        "mask_punctuation": True,
        "checkpoint": "colbert-ir/colbertv1.9",
        "triples": "/future/u/okhattab/root/unit/experiments/2021.10/downstream.distillation.round2.2_score/round2.nway6.cosine.ib/examples.64.json",
        "collection": "/future/u/okhattab/data/MSMARCO/collection.tsv",
        "queries": "/future/u/okhattab/data/MSMARCO/queries.train.tsv",
        "index_name": None,
        "overwrite": False,
        "root": "/future/u/okhattab/root/unit/experiments",
        "experiment": "2021.10",
        "index_root": None,
        "name": "kldR2.nway64.ib",
        "rank": 0,
        "nranks": 4,
        "amp": True,
        "gpus": 8,
        "avoid_fork_if_possible": False,
        "meta": {
            "hostname": "tiny-random",
            "git_branch": "main",
            "git_hash": "0000000000000000000000000000000000000000",
            "git_commit_datetime": "2021-10-01 00:00:00-07:00",
            "current_datetime": "Oct 01, 2021 ; 12:00AM PDT (-0700)",
            "cmd": "tests/checkpoints.py build_stanford",
            "version": "colbert-v0.4",
        },
    }
    _write_json(path / "artifact.metadata", metadata)
    return path


def build_st_native(path: pathlib.Path) -> pathlib.Path:
    """Checkpoint written by ``MultiVectorEncoder(modules=...).save(path)`` (sentence-transformers 6
    native layout): Transformer (query_expansion fixed/16, attend False; document_length 40) ->
    Dense 32 -> 24 (bias, identity, token-level) -> MultiVectorMask (string.punctuation) ->
    Normalize, with plain-text prompts {"query": "query: ", "document": "document: "}."""
    from sentence_transformers import MultiVectorEncoder
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    path = _prepare(path)
    with tempfile.TemporaryDirectory() as backbone_dir:
        backbone = pathlib.Path(backbone_dir) / "backbone"
        backbone.mkdir()
        tokenizer = _bert_tokenizer(backbone)
        torch.manual_seed(8)
        from transformers import BertModel

        BertModel(_bert_config(len(tokenizer))).eval().save_pretrained(str(backbone))
        tokenizer.save_pretrained(str(backbone))

        transformer = Transformer(
            str(backbone),
            document_length=DOCUMENT_LENGTH,
            query_expansion={"strategy": "fixed", "attend": False, "length": QUERY_LENGTH},
            model_kwargs={"local_files_only": True},
            processor_kwargs={"local_files_only": True},
            config_kwargs={"local_files_only": True},
        )
        torch.manual_seed(80)
        dense = Dense(
            in_features=32,
            out_features=24,
            bias=True,
            activation_function=torch.nn.Identity(),
            module_input_name="token_embeddings",
        )
        model = MultiVectorEncoder(
            modules=[
                transformer,
                dense,
                MultiVectorMask(skiplist_words=PUNCTUATION),
                Normalize(module_input_name="token_embeddings"),
            ],
            prompts={"query": "query: ", "document": "document: "},
            similarity_fn_name="maxsim",
            device="cpu",
        )
        model.save(str(path), create_model_card=False)
    return path


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

# What a correct reader must derive from each ColBERT checkpoint.
CHECKPOINT_SPECS: dict[str, dict[str, Any]] = {
    "stanford": {
        "builder": build_stanford,
        "backbone": "bert",
        "hidden_size": 32,
        "dim": 24,
        "dense": [{"in": 32, "out": 24, "bias": False, "activation": "identity"}],
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "query_prefix": "[unused0] ",
        "document_prefix": "[unused1] ",
        "skiplist_words": PUNCTUATION,
        "attend_to_expansion_tokens": False,
        "expansion_token": "[MASK]",
        "weights_prefix": "bert.",
    },
    "pylate_bert": {
        "builder": build_pylate_bert,
        "backbone": "bert",
        "hidden_size": 32,
        "dim": 24,
        "dense": [{"in": 32, "out": 24, "bias": False, "activation": "identity"}],
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "skiplist_words": PUNCTUATION,
        "attend_to_expansion_tokens": False,
        "expansion_token": "[MASK]",
        "weights_prefix": "",
    },
    "pylate_modernbert": {
        "builder": build_pylate_modernbert,
        "backbone": "modernbert",
        "hidden_size": 48,
        "dim": 16,
        "dense": [
            {"in": 48, "out": 64, "bias": True, "activation": "tanh"},
            {"in": 64, "out": 16, "bias": False, "activation": "identity"},
        ],
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "skiplist_words": PUNCTUATION,
        "attend_to_expansion_tokens": False,
        "expansion_token": "[MASK]",
        "weights_prefix": "",
    },
    "pylate_xlmr": {
        "builder": build_pylate_xlmr,
        "backbone": "xlm-roberta",
        "hidden_size": 32,
        "dim": 20,
        "dense": [{"in": 32, "out": 20, "bias": True, "activation": "identity"}],
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "skiplist_words": XLMR_SKIPLIST,
        "attend_to_expansion_tokens": True,
        "expansion_token": "<mask>",
        "weights_prefix": "",
    },
    "pylate_lfm2": {
        "builder": build_pylate_lfm2,
        "backbone": "lfm2",
        "hidden_size": 32,
        "dim": 12,
        "dense": [{"in": 32, "out": 12, "bias": False, "activation": "identity"}],
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "query_prefix": "[Q] ",
        "document_prefix": "[D] ",
        "skiplist_words": PUNCTUATION,
        "attend_to_expansion_tokens": False,
        "expansion_token": "<|im_end|>",
        "weights_prefix": "",
    },
    "st_native": {
        "builder": build_st_native,
        "backbone": "bert",
        "hidden_size": 32,
        "dim": 24,
        "dense": [{"in": 32, "out": 24, "bias": True, "activation": "identity"}],
        "query_length": QUERY_LENGTH,
        "document_length": DOCUMENT_LENGTH,
        "query_prefix": "query: ",
        "document_prefix": "document: ",
        "skiplist_words": PUNCTUATION,
        "attend_to_expansion_tokens": False,
        "expansion_token": "[MASK]",
        "weights_prefix": "",
    },
}

COLBERT_BUILDERS = {name: spec["builder"] for name, spec in CHECKPOINT_SPECS.items()}
RAW_BUILDERS = {
    "raw_encoder": build_raw_encoder,
    "raw_decoder": build_raw_decoder,
    "raw_projection": build_raw_projection,
}
BUILDERS = {**COLBERT_BUILDERS, **RAW_BUILDERS, "unknown_layout": build_unknown_layout}
