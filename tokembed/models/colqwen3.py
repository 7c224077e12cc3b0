"""Tomoro ColQwen3 and Ops-ColQwen3: Qwen3-VL + a linear projection, loaded natively (no remote code).

* ``TomoroColQwen3`` (``TomoroAI/tomoro-colqwen3-embed-4b``/``-8b``; config ``model_type: colqwen3``, ``embed_dim``).
  Tensors ``vlm.model.visual.*``, ``vlm.model.language_model.*``, ``vlm.lm_head.*`` (never run) and
  ``embedding_proj_layer`` = Linear(hidden, embed_dim) with bias. Vectors: the final (normed) hidden state ->
  projection -> divided by its norm (clamped at the dtype's eps) -> x attention mask, as Tomoro's
  ``modeling_colqwen3.ColQwen3.forward``. Prompts of Tomoro's ``processing_colqwen3.ColQwen3Processor``:
  documents (``process_images``) ``<|im_start|>user\\n<|vision_start|>`` + image placeholders +
  ``<|vision_end|>Describe the image.<|im_end|><|endoftext|>``; queries (``process_texts``) ``query_prefix`` (empty) +
  the stripped text + 10 x the pad token (``<|endoftext|>``); images capped at 1280 visual tokens
  (``from_pretrained(max_num_visual_tokens=1280)``). Prompts saved in ``processor_config.json`` win.
* ``OpsColQwen3`` (``OpenSearch-AI/Ops-Colqwen3-4B``; ``model_type: ops_colqwen3``, ``dims``). Tensors unprefixed
  ``visual.*``, ``language_model.*`` (a ``Qwen3VLModel`` subclass) and ``custom_text_proj`` (Linear with bias,
  hidden -> hidden in the published code). Vectors: final hidden state -> projection -> first ``dims`` dimensions ->
  divided by its norm -> x mask (``OpsColQwen3.forward``). Documents: ``<|im_start|>user\\n<|vision_start|>`` +
  placeholders + ``<|vision_end|>Describe the image.<|im_end|><|im_start|>assistant\\n<|endoftext|>``; queries
  ``Query: `` + text + 10 x ``<|endoftext|>`` (``OpsColQwen3Processor`` attributes, colpali-engine's
  ``process_queries``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from tokembed.errors import ModelError
from tokembed.models.base import LoadOptions, configured_size, read_json
from tokembed.models.qwen3_vl_retrieval import (
    CutLinear,
    Qwen3VLLayout,
    Qwen3VLRetriever,
    build_processor,
    load_qwen3_vl,
    processor_settings,
)
from tokembed.models.qwen_vl_processor import QwenVLProcessor, QwenVLPrompts, read_processor_settings
from tokembed.models.vision import VisionModel

_IMAGE = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image."
TOMORO_LAYOUT = Qwen3VLLayout(backbone="vlm.model", projection="embedding_proj_layer", ignore_unused=(r"vlm\.lm_head\.",))
OPS_LAYOUT = Qwen3VLLayout(backbone="", projection="custom_text_proj", ignore_unused=(r"lm_head\.",))
TOMORO_MAX_VISUAL_TOKENS = 1280  # ColQwen3Processor.from_pretrained's default cap


def _config(path: Path) -> dict:
    raw = read_json(path / "config.json")
    if raw is None:
        raise ModelError(f"{path}: no config.json")
    return raw


def _hidden_size(config: Any) -> int:
    return int(config.text_config.hidden_size)


# -- Tomoro ----------------------------------------------------------------------------------------------------


def tomoro_head(hidden: torch.Tensor, mask: torch.Tensor, model: Qwen3VLRetriever) -> torch.Tensor:
    projection = model.projection
    vectors = projection(hidden.to(projection.weight.dtype))  # [B, T, embed_dim]
    denom = vectors.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(vectors.dtype).eps)
    return vectors / denom * mask.unsqueeze(-1).to(vectors.dtype)


class TomoroProcessor(QwenVLProcessor):
    """Tomoro's ``ColQwen3Processor.process_texts``: the query text is stripped before its prefix and suffix."""

    def process_queries(self, texts: list[str]):
        return super().process_queries([(text or "").strip() for text in texts])


def tomoro_processor(path: Path) -> TomoroProcessor:
    saved = processor_settings(path)
    image = _saved(saved, "visual_prompt_prefix", _IMAGE) + _saved(saved, "visual_prompt_suffix", "<|im_end|><|endoftext|>")
    settings, _video = read_processor_settings(path)
    tile = int((settings or {}).get("patch_size", 16)) * int((settings or {}).get("merge_size", 2))
    cap = TOMORO_MAX_VISUAL_TOKENS * tile * tile
    size = {**((settings or {}).get("size") or {}), "longest_edge": cap}
    prompts = QwenVLPrompts(image=image, query_prefix=_saved(saved, "query_prefix", ""))
    processor = build_processor(path, prompts, TomoroProcessor, image_settings={"max_pixels": cap, "size": size})
    # ColQwen3Processor.query_augmentation_token is the tokenizer's pad token, 10 of them after every query.
    processor.prompts = replace(prompts, query_suffix=str(processor.tokenizer.pad_token) * 10)
    return processor


def _saved(saved: dict, key: str, default: str) -> str:
    """A prompt saved in ``processor_config.json``; ColQwen3Processor takes its default only for None ("" stays)."""
    value = saved.get(key)
    return default if value is None else value


class TomoroColQwen3:
    key = "ColQwen3"
    detected_by = 'config.json "model_type": "colqwen3" (Tomoro ColQwen3; its auto_map is not used)'
    needs = "tokenizer + preprocessor_config.json (Qwen-VL image processor, PIL backend); no --trust-remote-code"
    modes = "vision"
    reference = "TomoroAI/tomoro-colqwen3-embed-4b: its modeling_colqwen3.py / processing_colqwen3.py"

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        raw = _config(path)
        if raw.get("embed_dim") is None:
            raise ModelError(f"{path}/config.json: no embed_dim (the Tomoro ColQwen3 projection size)")
        embed_dim = configured_size(path / "config.json", "embed_dim", raw["embed_dim"])

        def projection(config: Any, _state: dict) -> CutLinear:
            return CutLinear(_hidden_size(config), embed_dim, bias=True)

        return load_qwen3_vl(
            cls.key, path, options, raw, TOMORO_LAYOUT, tomoro_head, tomoro_processor(options.processor_path or path),
            embedding_dim=lambda _config, _proj: embed_dim, projection=projection,
        )


# -- Ops -------------------------------------------------------------------------------------------------------


def ops_head(hidden: torch.Tensor, mask: torch.Tensor, model: Qwen3VLRetriever) -> torch.Tensor:
    projection = model.projection
    vectors = projection(hidden.to(projection.weight.dtype))  # [B, T, dims]: CutLinear keeps the first dims
    return vectors / vectors.norm(dim=-1, keepdim=True) * mask.unsqueeze(-1).to(vectors.dtype)


def ops_processor(path: Path) -> QwenVLProcessor:
    # Queries: OpsColQwen3Processor's query_prefix / query_augmentation_token through colpali-engine's
    # process_queries, as ports validated against the checkpoint's processor use them. (The copy of the processor
    # vendored in mteb once overrode process_queries to tokenize the bare text; the checkpoint's own code is not
    # reachable offline to settle it.)
    image = _IMAGE + "<|im_end|><|im_start|>assistant\n<|endoftext|>"
    return build_processor(path, QwenVLPrompts(image=image, query_prefix="Query: ", query_suffix="<|endoftext|>" * 10))


class OpsColQwen3:
    key = "OpsColQwen3Model"
    detected_by = 'config.json "model_type": "ops_colqwen3" (Ops-ColQwen3; its auto_map is not used)'
    needs = "tokenizer + preprocessor_config.json (Qwen-VL image processor, PIL backend); no --trust-remote-code"
    modes = "vision"
    reference = "OpenSearch-AI/Ops-Colqwen3-4B: OpsColQwen3 / OpsColQwen3Processor (as published in mteb)"

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        raw = _config(path)
        if raw.get("mask_non_image_embeddings"):
            raise ModelError(
                f"{path}/config.json: mask_non_image_embeddings is true; tokembed keeps every attended position "
                "(the published Ops-ColQwen3 checkpoints set it false)"
            )

        def projection(config: Any, state: dict) -> CutLinear:
            weight = state.get(f"{OPS_LAYOUT.projection}.weight")
            out = int(weight.shape[0]) if weight is not None else _hidden_size(config)
            layer = CutLinear(_hidden_size(config), out, bias=True)
            dims = out if raw.get("dims") is None else configured_size(path / "config.json", "dims", raw["dims"], out)
            layer.keep = dims if dims < out else None
            return layer

        return load_qwen3_vl(
            cls.key, path, options, raw, OPS_LAYOUT, ops_head, ops_processor(options.processor_path or path),
            embedding_dim=lambda _config, proj: int(proj.keep or proj.out_features), projection=projection,
        )
