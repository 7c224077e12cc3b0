"""Nemotron ColEmbed (``nvidia/nemotron-colembed-vl-4b-v2``/``-8b-v2``, ``Qwen3VLNemotronEmbedModel``), natively.

Config ``model_type: qwen3_vl_nemotron_embed``; tensors ``model.visual.*``, ``model.language_model.*`` and
``lm_head.*`` (never run). No projection: a vector is the text model's last-layer output **before** the final norm,
with **bidirectional** attention, x attention mask, then L2-normalized (NVIDIA's published model code:
``Qwen3VLNemotronEmbedTextModel`` and ``EmbeddingMixin._extract_embeddings``). vLLM keeps the final norm and causal
attention here; NVIDIA's code is the reference.

Prompts of NVIDIA's ``Qwen3VLNemotronEmbedProcessor``, rendered with the checkpoint's chat template:
queries ``process_queries``: user text ``Query: {query_prefix} {query}`` (``query_prefix`` "query:"), generation
prompt added, truncated at ``q_max_length`` (512); documents ``process_documents([{image, text: ""}])`` (what its
``forward_images`` does): user content = the image, then ``{passage_prefix} `` ("passage: "), truncated at
``p_max_length`` - the image's tokens - ``reserve_tokens_for_images``. Settings saved in ``processor_config.json`` win,
null ones as NVIDIA's ``__init__`` keeps them (None): a null prefix is no prefix, a null ``q_max_length`` truncates at
the tokenizer's ``model_max_length``, and a null ``p_max_length`` / ``reserve_tokens_for_images`` (every document
fails there) is refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from tokembed.errors import ModelError
from tokembed.models.base import LoadOptions, read_json
from tokembed.models.qwen3_vl_retrieval import (
    Qwen3VLLayout,
    Qwen3VLRetriever,
    build_processor,
    load_qwen3_vl,
    load_tokenizer,
    make_bidirectional,
    processor_settings,
    skip_final_norm,
)
from tokembed.models.qwen_vl_processor import IMAGE_TOKEN, QwenVLProcessor, QwenVLPrompts
from tokembed.models.vision import VisionModel
from tokembed.models.vision_inputs import qwen_image_tokens

LAYOUT = Qwen3VLLayout(backbone="model", projection=None, ignore_unused=(r"lm_head\.",))
DEFAULTS = {"q_max_length": 512, "p_max_length": 4096, "query_prefix": "query:", "passage_prefix": "passage:", "reserve_tokens_for_images": 100}


def nemotron_head(hidden: torch.Tensor, mask: torch.Tensor, _model: Qwen3VLRetriever) -> torch.Tensor:
    """Pre-norm hidden states [B, T, H] -> masked, then L2-normalized (zero rows stay zero)."""
    return torch.nn.functional.normalize(hidden * mask.unsqueeze(-1).to(hidden.dtype), dim=-1)


def image_tokens(image: Any, image_processor: Any) -> int:
    """``Qwen3VLNemotronEmbedProcessor.calculate_image_tokens``: the placeholders an image becomes."""
    patch, merge = int(image_processor.patch_size), int(image_processor.merge_size)
    min_pixels, max_pixels = image_processor.size["shortest_edge"], image_processor.size["longest_edge"]
    width, height = image.size
    factor = patch * merge
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return (h_bar // patch) * (w_bar // patch) // merge**2


_SLOT = "\x00query\x00"  # stands for the query while the chat template is rendered once


class NemotronProcessor(QwenVLProcessor):
    """``Qwen3VLNemotronEmbedProcessor``'s limits around the shared processor: queries truncated at ``q_max_length``
    tokens, documents refused where its ``p_max_length`` would truncate them (image placeholders would be cut)."""

    settings: dict = DEFAULTS
    _prompt_tokens: int | None = None  # the image prompt's tokens, its placeholder once (image_refusal)

    def process_queries(self, texts: list[str]):
        batch = super().process_queries(texts)
        limit = self.settings["q_max_length"]
        if limit is None:
            return batch
        limit = int(limit)
        return {key: value[:, :limit] for key, value in batch.items()}  # one unpadded item: truncation = the first ids

    def process_images(self, images: list):
        batch = super().process_images(images)
        refusal = self._length_refusal(images[0], batch["input_ids"].shape[1])
        if refusal is not None:
            raise ValueError(refusal)  # processed() words it as the processor's refusal of this image
        return batch

    def image_refusal(self, image) -> str | None:
        """``process_images``' refusals from the image's size: its sequence is the image prompt's tokens with the
        one placeholder expanded to the image's tokens."""
        refusal = super().image_refusal(image)
        if refusal is not None:
            return refusal
        if self._prompt_tokens is None:
            self._prompt_tokens = int(self._tokenize([self.prompts.image])["input_ids"].shape[1])
        placeholders = qwen_image_tokens(image.size, self.image_processor)
        return self._length_refusal(image, self._prompt_tokens - 1 + placeholders)

    def _length_refusal(self, image: Any, sequence_tokens: int) -> str | None:
        """Where a document of ``sequence_tokens`` tokens would be truncated into its image placeholders."""
        settings = self.settings
        needed = image_tokens(image, self.image_processor) + int(settings["reserve_tokens_for_images"])
        available = int(settings["p_max_length"]) - needed
        if available <= 0 or sequence_tokens > available:
            return (f"the image takes {needed - int(settings['reserve_tokens_for_images'])} tokens: more than the model's "
                    f"p_max_length {settings['p_max_length']} allows with its reserve ({settings['reserve_tokens_for_images']})")
        return None


def saved_settings(path: Path, tokenizer: Any) -> dict:
    """DEFAULTS with what ``processor_config.json`` saves, a null value read as NVIDIA's processor reads it."""
    saved = {key: value for key, value in processor_settings(path).items() if key in DEFAULTS}
    for key in ("p_max_length", "reserve_tokens_for_images"):
        if key in saved and saved[key] is None:
            raise ModelError(f"{path / 'processor_config.json'}: {key} is null; Qwen3VLNemotronEmbedProcessor takes "
                             f"its default ({DEFAULTS[key]}) only where the key is absent, and fails on every document "
                             "with a null one", hint=f"set {key} to a number, or remove it for the default")
    if "q_max_length" in saved and saved["q_max_length"] is None:
        saved["q_max_length"] = _tokenizer_limit(tokenizer)
    return {**DEFAULTS, **saved}


def _tokenizer_limit(tokenizer: Any) -> int | None:
    """Where a tokenizer called with ``truncation=True, max_length=None`` truncates (what a null ``q_max_length``
    passes): its ``model_max_length``, unless that is transformers' "no limit" value."""
    from transformers.tokenization_utils_base import LARGE_INTEGER

    limit = getattr(tokenizer, "model_max_length", None)
    return None if limit is None or limit > LARGE_INTEGER else int(limit)


def nemotron_processor(path: Path) -> NemotronProcessor:
    tokenizer = load_tokenizer(path)
    settings = saved_settings(path, tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{path}: the tokenizer has no chat template (Nemotron ColEmbed prompts are chat messages)")

    def chat(content: list[dict]) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)

    prefix = settings["query_prefix"]
    query = chat([{"type": "text", "text": f"Query: {prefix} {_SLOT}" if prefix else f"Query: {_SLOT}"}])
    passage = f"{settings['passage_prefix']} " if settings["passage_prefix"] else ""
    image = chat([{"type": "image"}, {"type": "text", "text": passage}])
    if query.count(_SLOT) != 1 or image.count(IMAGE_TOKEN) != 1:
        raise ModelError(f"{path}: the chat template does not render a text part and one image as Qwen3-VL's does")
    query_prefix, query_suffix = query.split(_SLOT)
    processor = build_processor(path, QwenVLPrompts(image=image, query_prefix=query_prefix, query_suffix=query_suffix), NemotronProcessor)
    processor.settings = settings
    return processor


def _adapt(model: Qwen3VLRetriever) -> None:
    make_bidirectional(model)
    skip_final_norm(model)


class NemotronColEmbed:
    key = "Qwen3VLNemotronEmbedModel"
    detected_by = 'config.json "model_type": "qwen3_vl_nemotron_embed" (its auto_map is not used)'
    needs = "tokenizer with its chat template + preprocessor_config.json (PIL backend); no --trust-remote-code"
    modes = "vision"
    reference = "nvidia/nemotron-colembed-vl-4b-v2: its modeling / processing code (not vLLM's: norm, causal)"

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        raw = read_json(path / "config.json")
        if raw is None:
            raise ModelError(f"{path}: no config.json")
        return load_qwen3_vl(
            cls.key, path, options, raw, LAYOUT, nemotron_head, nemotron_processor(options.processor_path or path),
            embedding_dim=lambda config, _proj: int(config.text_config.hidden_size),
            adapt=_adapt,
            # --no-normalize stores the pre-norm hidden state: the final norm's output with skip_final_norm's hook.
            output_submodule="model.language_model.norm",
        )
