"""ColIdefics3 (colpali-engine's own layout, e.g. the ColSmolVLM bases of vidore/colSmol-256M / -500M).

``architectures`` ``ColIdefics3``, model_type ``idefics3``: an ``Idefics3Model`` (SigLIP + a Llama-style text
model, pixel-shuffle connector) saved as ``model.*`` with a 128-d projection ``linear`` (with bias).

Documents (colpali-engine 0.3.18 ``ColIdefics3Processor.process_images``): the image is ``convert("RGB")``-ed
(a no-op on what tokembed's image reader hands over: transparency is composited on white there), then ``Idefics3Processor`` lays it out in the prompt
``<|im_start|>User:<image>Describe the image.<end_of_utterance>\\nAssistant:``: with image splitting on, a grid of
tiles (each ``<fake_token_around_image><row_i_col_j>`` + ``<image>`` x image_seq_len) and the global image, so
the length depends on the image size. Queries: ``query`` + 10 ``<end_of_utterance>`` through the processor.
The text model is causal; the processor's ``pixel_attention_mask`` goes to the forward.
"""

from __future__ import annotations

from pathlib import Path

from tokembed.models.base import LoadOptions
from tokembed.models.vision import VisionModel

VISUAL_PROMPT = "<|im_start|>User:<image>Describe the image.<end_of_utterance>\nAssistant:"


def engine_tensor_names():
    from tokembed.models.engine_layout import TensorNames

    return TensorNames(renamings=())  # model.{vision_model,connector,text_model}.*, linear.*: already the module names


class ColIdefics3:
    key = "ColIdefics3"
    detected_by = 'config.json "architectures": ["ColIdefics3"] (colpali-engine layout, model_type idefics3)'
    needs = "Idefics3 processor files (image splitting, PIL backend) + tokenizer with <row_i_col_j> tokens; linear (128-d, bias)"
    modes = "vision"
    reference = (
        "colpali-engine 0.3.18 ColIdefics3 + ColIdefics3Processor (prompt '<|im_start|>User:<image>Describe the "
        "image.<end_of_utterance>\\nAssistant:', queries + 10 <end_of_utterance>, convert('RGB') on the image it gets; transparency is composited on white by the image reader)"
    )

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        from transformers import Idefics3Processor

        from tokembed.models.engine_layout import EngineProcessor, load_engine_model, load_processor
        from tokembed.models.engine_modules import EngineColIdefics3

        processor = EngineProcessor(
            load_processor(options.processor_path or path, Idefics3Processor, {"image_seq_len": 64}), VISUAL_PROMPT, "<end_of_utterance>"
        )
        return load_engine_model(cls.key, path, options, EngineColIdefics3, engine_tensor_names(), processor, "linear")
