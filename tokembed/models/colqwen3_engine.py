"""colpali-engine's own ColQwen3 (colpali-engine 0.3.18 ``colpali_engine.models.ColQwen3``), loaded natively.

Not Tomoro's ColQwen3 (``model_type colqwen3``, ``colqwen3.py``), which shares the architecture name.

Stage: models. In: images (documents), strings (queries). Out: one 320-d unit vector per attended position.

Checkpoint: ``config.json`` ``architectures ["ColQwen3"]``, ``model_type qwen3_vl`` (``ColQwen3`` subclasses
transformers' ``Qwen3VLModel`` and takes its ``Qwen3VLConfig``: ``save_pretrained`` writes that config under the
class's name); tensors ``visual.*``, ``language_model.*`` and ``custom_text_proj.{weight,bias}`` (320 x hidden,
fixed by ``ColQwen3.__init__``), saved unprefixed or under ``model.`` (what 0.3.18 + transformers 5 write:
colpali-engine registers ``^model\\.`` -> "" for ``qwen3_vl``, which ``save_pretrained`` reverses), with the escaped
and PEFT-prefixed spellings ``engine_layout.TensorNames`` reads; ``lm_head.*`` ignorable. Anything else missing or
left over: exit 4.

Semantics, exact to 0.3.18 (``ColQwen3.forward`` + ``ColQwen3Processor``, the same prompts as ColQwen3.5's):

* documents: ``<|im_start|>user\\n<|vision_start|>`` + ``<|image_pad|>`` x (t*h*w / merge²) +
  ``<|vision_end|>Describe the image.<|im_end|><|endoftext|>``; images sized by the saved image processor settings
  (``max_num_visual_tokens`` applies only where a caller passes it to ``from_pretrained``);
* queries: ``{query}`` + ``<|endoftext|>`` x 10, no prefix, no trailing newline;
* vectors: the text model's final (normed) hidden state -> ``custom_text_proj`` -> L2 -> x mask, M-RoPE positions.

The processor is ``qwen_vl_processor.QwenVLProcessor`` (PIL image processor: transformers will not build a
``Qwen3VLProcessor`` without torchvision); PEFT adapters apply through the layout's ``TensorNames`` (``adapters.py``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tokembed.models.base import LoadOptions
from tokembed.models.colqwen3_5 import PROMPTS as COLQWEN3_5_PROMPTS
from tokembed.models.vision import VisionModel

PROMPTS = replace(COLQWEN3_5_PROMPTS, video=None)  # ColQwen3Processor's prompts are ColQwen3_5Processor's


def engine_tensor_names():
    from tokembed.models.engine_layout import TensorNames

    # ColQwen3._checkpoint_conversion_mapping (the visual / language_model entries are special cases of the last)
    return TensorNames(renamings=((r"^model\.", ""),))


class ColQwen3Engine:
    key = "ColQwen3Engine"
    detected_by = 'config.json "architectures": ["ColQwen3"] with model_type qwen3_vl (colpali-engine layout)'
    needs = ("Qwen3-VL image processor settings + tokenizer; weights visual.*, language_model.*, "
             "custom_text_proj.{weight,bias} (320-d), unprefixed or under model.; lm_head.* ignored")
    modes = "vision"
    reference = ("colpali-engine 0.3.18 ColQwen3 + ColQwen3Processor (transformers Qwen3VLModel): queries 'query' + "
                 "10 <|endoftext|> (no prefix, no newline); documents 'Describe the image.'; M-RoPE positions")

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        from tokembed.models.engine_layout import load_engine_model
        from tokembed.models.engine_modules import EngineColQwen3
        from tokembed.models.qwen_vl_processor import QwenVLProcessor

        processor = QwenVLProcessor.from_pretrained(options.processor_path or path, PROMPTS)
        names = engine_tensor_names()
        return load_engine_model(cls.key, path, options, EngineColQwen3, names, processor, "custom_text_proj")
