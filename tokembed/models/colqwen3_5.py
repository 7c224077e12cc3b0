"""ColQwen3.5 (colpali-engine 0.3.18 ``ColQwen3_5``, e.g. ``athrael-soju/colqwen3.5-4.5B-v3``), loaded natively.

Stage: models. In: images or videos (documents), strings (queries). Out: one ``dim``-sized unit vector per
attended position.

Checkpoint (colpali-engine's save format): ``config.json`` ``architectures ["ColQwen3_5"]``, ``model_type
qwen3_5``, top-level ``dim`` (320 in the published checkpoint); weights ``visual.*`` and ``language_model.*``
(a ``Qwen3_5Model``: hybrid Gated-DeltaNet / full-attention text stack with M-RoPE), ``custom_text_proj.weight``
and ``.bias``, and the base model's multi-token-prediction head ``mtp.*``, which retrieval never runs (ignored,
as transformers' ``Qwen3_5PreTrainedModel`` ignores it). Anything else missing or left over: exit 4.

Semantics, exact to colpali-engine 0.3.18 (``ColQwen3_5.forward`` + ``ColQwen3_5Processor``):

* documents: ``<|im_start|>user\\n<|vision_start|>`` + ``<|image_pad|>`` x (t*h*w / merge²) +
  ``<|vision_end|>Describe the image.<|im_end|><|endoftext|>``;
* queries: ``{query}`` + ``<|endoftext|>`` x 10, no prefix, no trailing newline, every token attended and kept;
* vectors: the text model's final (normed) hidden state -> ``custom_text_proj`` (with its bias) -> L2 -> x mask.

Attention direction: taken from the checkpoint's config, ``is_causal`` on ``text_config`` or at the top level
(propagated to the text model, where transformers' mask builder reads it); where neither is present,
transformers' default for Qwen3.5, causal. colpali-engine 0.3.18's ``ColQwen3_5`` sets no such key, so its
checkpoints run causal, as in colpali-engine. (The linear-attention layers are recurrent, hence causal either
way.) The direction a load used is ``VisionModel.extra["attention"]``; ``tokembed models`` states the rule.
Observed: the tiny checkpoints of the tests only (with and without ``is_causal``); the published checkpoint's
config.json could not be read from where this was written (no hub access), so which branch it takes is unverified.

Videos (vLLM lists video for this family; colpali-engine has no video prompt): the document prompt with the
image block replaced by Qwen3-VL's video layout, ``<{t} seconds><|vision_start|>`` + ``<|video_pad|>`` x
(h*w / merge²) + ``<|vision_end|>`` per pair of sampled frames (what ``Qwen3VLProcessor`` and vLLM build), and
``Describe the video.``; frames sampled as ``Qwen3VLVideoProcessor.sample_frames`` does (``fps``, ``min_frames``,
``max_frames`` of the checkpoint's video processor settings). The resize is PIL bicubic, not torchvision's
(which transformers' video processor requires and which does not load here): see ``qwen_vl_processor``.
"""

from __future__ import annotations

import functools
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from tokembed.models.base import LoadOptions, configured_size, read_json
from tokembed.models.qwen_vl_processor import QwenVLPrompts
from tokembed.models.vision import Prepared, VisionEncoder, VisionModel

PROMPTS = QwenVLPrompts(
    image="<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>",
    query_prefix="",
    query_suffix="<|endoftext|>" * 10,
    video="<|im_start|>user\n<|video_pad|>Describe the video.<|im_end|><|endoftext|>",
)
IGNORED = (r"mtp\.",)  # multi-token-prediction head of the Qwen3.5 base: never run for retrieval
# Model inputs of one kind of document, and the empty value an item of the other kind gets (mixed batches).
_IMAGE_KEYS = ("pixel_values", "image_grid_thw")
_VIDEO_KEYS = ("pixel_values_videos", "video_grid_thw")


class ColQwen3_5:  # noqa: N801 (the architecture's own name)
    key = "ColQwen3_5"
    detected_by = 'config.json "architectures": ["ColQwen3_5"] (model_type qwen3_5, top-level "dim")'
    needs = (
        "tokenizer + image/video processor settings (preprocessor_config.json or processor_config.json); "
        "weights visual.*, language_model.*, custom_text_proj.{weight,bias} (mtp.* ignored); "
        "attention: config is_causal if present, else causal (transformers' default; colpali-engine 0.3.18 sets none); "
        "videos (.mp4/.webm) need PyAV: pip install 'tokembed[video]'"
    )
    modes = "vision (images, videos)"
    reference = "colpali-engine 0.3.18 ColQwen3_5 + ColQwen3_5Processor (transformers Qwen3_5Model)"

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        from tokembed.models.qwen_vl_processor import QwenVLProcessor
        from tokembed.models.vision import load_vision_model

        config = read_json(path / "config.json") or {}
        if "dim" in config:  # missing: colpali-engine's default, 128
            configured_size(path / "config.json", "dim", config["dim"])
        processor = QwenVLProcessor.from_pretrained(options.processor_path or path, PROMPTS)
        model = load_vision_model(
            cls.key, path, options, retrieval_class(), projection=("custom_text_proj",), ignore_unused=IGNORED, processor=processor
        )
        model.extra["attention"] = attention_direction(config)
        return ColQwen3_5Model(**{f.name: getattr(model, f.name) for f in fields(model)})


class ColQwen3_5Model(VisionModel):  # noqa: N801
    """A ``VisionModel`` whose documents may also be videos."""

    def make_encoder(self, settings) -> "ColQwen3_5Encoder":
        return ColQwen3_5Encoder(self, settings)


class ColQwen3_5Encoder(VisionEncoder):
    """``VisionEncoder`` plus videos, and batches that mix images and videos (each item carries both kinds of
    model inputs, the other kind empty; the module drops the empty ones)."""

    takes_videos = True

    def input_problem(self, value: Any) -> str | None:
        """A video is asked of the processor's ``video_input_refusal`` (its frame count, rate and size), so that one
        the processor refuses is a bad row under ``--on-error`` (found where rows are planned, not mid-encode)."""
        from tokembed.models.vision_inputs import refusal_of
        from tokembed.sources.video import Video

        refusal = getattr(self.processor, "video_input_refusal", None)
        if self.settings.kind == "document" and refusal is not None and isinstance(value, Video):
            reason = refusal(value)
            if reason is not None:
                return refusal_of(value, reason, self.model.architecture)
        return super().input_problem(value)

    def _prepare(self, value: Any) -> Prepared:
        from tokembed.models.vision import prepared_from
        from tokembed.models.vision_inputs import processed
        from tokembed.sources.video import is_video

        if self.settings.kind == "document" and is_video(value):
            videos = processed(self.processor.process_videos, value, self.model.architecture)
            return _complete(prepared_from(videos), self.model)
        prepared = super()._prepare(value)
        return _complete(prepared, self.model) if self.settings.kind == "document" else prepared


def _complete(prepared: Prepared, model: VisionModel) -> Prepared:
    """Give an image item empty video inputs and a video item empty image inputs."""
    payload = dict(prepared.payload)
    width = _patch_width(model)
    for pixels, grid in (_IMAGE_KEYS, _VIDEO_KEYS):
        if pixels not in payload:
            payload[pixels] = torch.zeros((0, width), dtype=torch.float32)
            payload[grid] = torch.zeros(3, dtype=torch.long)
    return Prepared(prepared.ids, prepared.n_attend, payload)


def _patch_width(model: VisionModel) -> int:
    vision = model.model.config.vision_config
    patch, temporal = vision.patch_size, vision.temporal_patch_size
    return int(vision.in_channels * temporal * patch * patch)


def attention_direction(config: dict) -> str:
    """"bidirectional" or "causal", from ``is_causal`` on the text config or the top level (see module doc)."""
    text = config.get("text_config") or {}
    value = text.get("is_causal", config.get("is_causal"))
    return "causal" if value is None or bool(value) else "bidirectional"


@functools.cache
def retrieval_class():
    """colpali-engine's ``ColQwen3_5``, composed from transformers' ``Qwen3_5Model`` (built on first use so that
    importing this family does not import transformers)."""
    from torch import nn
    from transformers import Qwen3_5Model

    class ColQwen3_5Retrieval(Qwen3_5Model):  # noqa: N801
        """``Qwen3_5Model`` + ``custom_text_proj`` (Linear(hidden, dim) with bias); state dict names as saved."""

        def __init__(self, config) -> None:
            top = getattr(config, "is_causal", None)
            if top is not None and getattr(config.text_config, "is_causal", None) is None:
                config.text_config.is_causal = bool(top)  # the text model's mask reads its own config
            super().__init__(config)
            self.dim = int(getattr(config, "dim", 128))
            self.custom_text_proj = nn.Linear(config.text_config.hidden_size, self.dim)
            self.post_init()

        def forward(self, input_ids, attention_mask, **inputs) -> torch.Tensor:
            """[B, T] ids (+ per-item zero-padded patches and grids) -> [B, T, dim] vectors, x mask."""
            _unpad(inputs, *_IMAGE_KEYS)
            _unpad(inputs, *_VIDEO_KEYS)
            self.rope_deltas = None  # positions are never carried over from an earlier batch
            hidden = super().forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **inputs)
            proj = self.custom_text_proj(hidden.last_hidden_state)  # [B, T, dim]
            proj = proj / proj.norm(dim=-1, keepdim=True)
            return proj * attention_mask.unsqueeze(-1)

    return ColQwen3_5Retrieval


def _unpad(inputs: dict, pixels_key: str, grid_key: str) -> None:
    """Per-item zero-padded patches [B, N, P] -> the concatenated patches of the items that have any, with their
    grids (colpali-engine's ``forward`` does the same for images); drops both keys when no item has any."""
    pixels, grid = inputs.get(pixels_key), inputs.get(grid_key)
    if pixels is None or grid is None:
        return
    present = grid.prod(dim=-1) > 0
    if not bool(present.any()):
        del inputs[pixels_key], inputs[grid_key]
        return
    rows = [item[: int(thw.prod())] for item, thw in zip(pixels, grid) if int(thw.prod()) > 0]
    inputs[pixels_key] = torch.cat(rows, dim=0)
    inputs[grid_key] = grid[present]


