"""BGE-M3's multi-vector ("colbert") output: ``BAAI/bge-m3`` and the fine-tunes FlagEmbedding saves.

Layout: an XLM-RoBERTa checkpoint (``config.json`` architectures ``XLMRobertaModel``, or ``BgeM3EmbeddingModel``,
the name vLLM serves it under; weights without prefix) with ``colbert_linear.pt`` beside it, a torch state dict
``{"weight": [H, H], "bias": [H]}`` (``H`` the hidden size, as FlagEmbedding and vLLM build the layer).
``sparse_linear.pt`` (the sparse head) and the sentence-transformers layout of the dense embedding
(``modules.json``: Transformer, CLS ``Pooling``, ``Normalize``) are not token-level: never read.

Vectors, as FlagEmbedding 1.4's ``M3Embedder`` returns ``colbert_vecs``: L2(colbert_linear(last hidden state))
for every token after the first (the ``<s>``; the final ``</s>`` is kept), their ids the input ids from position 1
on. No prefix, no marker, no query expansion, no skiplist: queries and documents are encoded alike, each cut at
512 tokens (its ``query_max_length`` and ``passage_max_length``). vLLM's ``token_embed`` for
``BgeM3EmbeddingModel`` (its ``colbert_linear`` projector, L2, the BOS vector filtered) gives the same vectors:
that is raw mode, cut at the model's limit instead (8,192 tokens for bge-m3).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from tokembed.errors import ModelError, UnsupportedModelError
from tokembed.models.base import DenseLayer, LoadOptions, TokenModel
from tokembed.models.st_layout import load_st_folder, modules_of_type, read_modules
from tokembed.settings import ColbertConfig

COLBERT_HEAD = "colbert_linear.pt"
SPARSE_HEAD = "sparse_linear.pt"
ARCHITECTURES = ("XLMRobertaModel", "BgeM3EmbeddingModel")
MAX_LENGTH = 512  # M3Embedder's query_max_length and passage_max_length


def is_bge_m3(path: Path, architectures: list[str]) -> bool:
    """A BGE-M3 checkpoint: vLLM's architecture name, or an XLM-RoBERTa with BGE-M3's heads beside it. The heads
    beside another architecture are refused: read as a plain encoder, its ColBERT head would be lost."""
    heads = [name for name in (COLBERT_HEAD, SPARSE_HEAD) if (Path(path) / name).is_file()]
    if "BgeM3EmbeddingModel" in architectures or (heads and "XLMRobertaModel" in architectures):
        return True
    if heads:
        raise UnsupportedModelError(
            f"{path}: {heads[0]} (a BGE-M3 head) beside a checkpoint of architectures {architectures or 'none'}; "
            f"tokembed reads BGE-M3's heads over {' or '.join(ARCHITECTURES)} only (as vLLM's BgeM3EmbeddingModel)",
            hint="tokembed models lists the layouts it reads",
        )
    return False


class BgeM3:
    key = "bge-m3"
    detected_by = (f"{COLBERT_HEAD} (or {SPARSE_HEAD}) beside a config.json of architectures XLMRobertaModel, or "
                   "architectures BgeM3EmbeddingModel (vLLM's name)")
    needs = (f"XLM-RoBERTa weights + {COLBERT_HEAD} {{weight [H, H], bias [H]}}; {SPARSE_HEAD} (the sparse head) "
             "and the dense embedding's Pooling / Normalize are not read")
    modes = "colbert, raw"
    reference = ("FlagEmbedding 1.4 M3Embedder colbert_vecs (queries and documents at 512 tokens); "
                 "vLLM BgeM3EmbeddingModel token_embed (raw)")

    @staticmethod
    def colbert_config() -> ColbertConfig:
        return ColbertConfig(query_prefix="", document_prefix="", query_length=MAX_LENGTH,
                             document_length=MAX_LENGTH, expand_queries=False)

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> TokenModel:
        refuse_dense_modules(path)
        model = load_st_folder(cls.key, path, options, colbert=cls.colbert_config())
        weight, bias = read_colbert_head(path / COLBERT_HEAD, model.hidden_size)
        return replace(
            model,
            projection=nn.Sequential(DenseLayer(weight, bias, nn.Identity())).to(torch.float32),
            first_token_dropped=leading_token(path, model.tokenizer, model.backbone.config),
        )


def refuse_dense_modules(path: Path) -> None:
    """A ``Dense`` in ``modules.json`` is no part of BGE-M3's token vectors (vLLM's ``BgeM3EmbeddingModel`` applies
    ``colbert_linear`` alone): not the published layout, refused rather than left unread."""
    if modules_of_type(read_modules(path), "Dense"):
        raise ModelError(f"{path / 'modules.json'}: a Dense module in a BGE-M3 checkpoint; its token vectors come "
                         f"from {COLBERT_HEAD} alone, and this Dense would not be applied")


def read_colbert_head(file: Path, hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``colbert_linear.pt``: exactly those two floating-point tensors, ``[hidden, hidden]`` and
    ``[hidden]``; anything else is a model error naming the file."""
    expected = {"weight": (hidden, hidden), "bias": (hidden,)}
    if not file.is_file():
        raise ModelError(f"{file}: missing; BGE-M3's ColBERT head (a torch state dict: weight [{hidden}, {hidden}], "
                         f"bias [{hidden}]) must be beside the checkpoint",
                         hint="copy colbert_linear.pt from the model's repository into the folder")
    state = _load_state_dict(file)
    missing, unused = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or unused:
        raise ModelError(f"{file}: the ColBERT head holds tensors {sorted(state)}, not weight and bias"
                         + (f" (missing: {', '.join(missing)})" if missing else "")
                         + (f" (not used: {', '.join(unused)})" if unused else ""))
    for name, shape in expected.items():
        tensor = state[name]
        if tuple(tensor.shape) != shape or not tensor.is_floating_point():
            raise ModelError(f"{file}: {name} is {tensor.dtype} {list(tensor.shape)}, not a floating-point "
                             f"{list(shape)} (a Linear over the backbone's hidden size {hidden})")
    return state["weight"], state["bias"]


def _load_state_dict(file: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbled or pickling more than tensors: torch raises several kinds
        raise ModelError(f"{file}: not readable as a torch state dict ({type(exc).__name__}: {str(exc)[:300]})") from exc
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ModelError(f"{file}: not a state dict of tensors (a {type(state).__name__})")
    return state


def leading_token(path: Path, tokenizer, config) -> int:
    """The BOS id, whose vector in first position is left out. FlagEmbedding drops the first position whatever it
    holds, vLLM only a BOS there: a tokenizer that does not start its inputs with the config's BOS is refused."""
    bos = getattr(config, "bos_token_id", None)
    first = tokenizer("a")["input_ids"][:1]
    if bos is None or first != [bos]:
        raise ModelError(f"{path}: the tokenizer starts an input with {first or 'nothing'}, not config.json's "
                         f"bos_token_id {bos}; FlagEmbedding and vLLM would drop different vectors")
    return int(bos)
