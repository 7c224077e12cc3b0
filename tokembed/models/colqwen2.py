"""ColQwen2 and ColQwen2.5 (transformers ``ColQwen2ForRetrieval`` over Qwen2-VL or Qwen2.5-VL).

Documents: ``<|im_start|>user\\n<|vision_start|>`` + ``<|image_pad|>`` x (t*h*w / merge_size^2) +
``<|vision_end|>Describe the image.<|im_end|><|endoftext|>``; the image keeps its aspect ratio
(``smart_resize`` between min_pixels and max_pixels), so the length varies per image and is read from
``image_grid_thw``. Queries: ``Query: {query}`` + 10 ``<|endoftext|>`` augmentation tokens + ``\\n``.
The forward feeds ``inputs_embeds`` to the language model, which then numbers positions 0..T-1 (no
M-RoPE): batches must be right-padded, as ``VisionEncoder.collate`` does.
"""

from __future__ import annotations

from pathlib import Path

from tokembed.models.base import LoadOptions
from tokembed.models.vision import VisionModel, load_vision_model


class ColQwen2:
    key = "ColQwen2ForRetrieval"
    detected_by = 'config.json "architectures": ["ColQwen2ForRetrieval"] (vlm_config qwen2_vl or qwen2_5_vl)'
    needs = "processor files (Qwen2-VL image processor, PIL backend works without torchvision) + tokenizer"
    modes = "vision"
    reference = "transformers ColQwen2ForRetrieval + ColQwen2Processor (colpali-engine semantics)"

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        from transformers import ColQwen2ForRetrieval

        return load_vision_model(cls.key, path, options, ColQwen2ForRetrieval)
