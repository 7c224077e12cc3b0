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


# colpali-engine's own layout (``architectures`` ColQwen2 / ColQwen2_5, model_type qwen2_vl / qwen2_5_vl), as
# vidore/colqwen2-base and the merged adapters save it. Prompts and forward: colpali-engine 0.3.18.
ENGINE_VISUAL_PROMPT = (
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>"
)


def engine_tensor_names():
    from tokembed.models.engine_layout import TensorNames

    # Published bases (transformers < 4.52): model.layers/embed_tokens/norm, visual.*, custom_text_proj.
    return TensorNames(renamings=((r"^model\.", "language_model."),))


class ColQwen2Engine:
    key = "ColQwen2"
    detected_by = 'config.json "architectures": ["ColQwen2"] (colpali-engine layout, model_type qwen2_vl)'
    needs = "Qwen2-VL processor files + tokenizer; custom_text_proj (128-d, bias) next to the backbone"
    modes = "vision"
    reference = (
        "colpali-engine 0.3.18 ColQwen2 + ColQwen2Processor: queries are 'query' + 10 <|endoftext|> (no 'Query: ' "
        "prefix, no newline, unlike the -hf port); convert('RGB') on the image it gets (tokembed's image reader composites transparency on white first, as for every family); "
        "M-RoPE positions for images (the -hf port numbers 0..T-1)"
    )
    backbone = "EngineColQwen2"

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        from tokembed.models import engine_modules
        from tokembed.models.engine_layout import EngineProcessor, load_engine_model, load_processor, qwen2vl_processor_class

        processor = EngineProcessor(
            load_processor(options.processor_path or path, qwen2vl_processor_class()), ENGINE_VISUAL_PROMPT, "<|endoftext|>",
            split_pixels=True,
        )
        model_class = getattr(engine_modules, cls.backbone)
        return load_engine_model(cls.key, path, options, model_class, engine_tensor_names(), processor, "custom_text_proj")


class ColQwen2_5Engine(ColQwen2Engine):  # noqa: N801
    key = "ColQwen2_5"
    detected_by = 'config.json "architectures": ["ColQwen2_5"] (colpali-engine layout, model_type qwen2_5_vl)'
    needs = "Qwen2.5-VL processor files + tokenizer; custom_text_proj (128-d, bias) next to the backbone"
    reference = ColQwen2Engine.reference.replace("ColQwen2 + ColQwen2Processor", "ColQwen2_5 + ColQwen2_5_Processor")
    backbone = "EngineColQwen2_5"
