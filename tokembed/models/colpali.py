"""ColPali (transformers ``ColPaliForRetrieval``: PaliGemma = SigLIP + Gemma, e.g. vidore/colpali-v1.3-hf).

Documents: ``<image>`` x image_seq_length, ``<bos>``, the visual prompt ("Describe the image."), ``\\n``;
fixed length (1024 image tokens at 448 px). Queries: ``<bos>Question: {query}`` + 10 ``<pad>`` query
augmentation tokens + ``\\n``, all attended. Attention is bidirectional over the whole sequence
(``token_type_ids`` are 0: PaliGemma's prefix), so the processor's ``token_type_ids`` go to the forward.
The projection ``embedding_proj_layer`` keeps its bias (vLLM's ColPali drops it; we do not).
"""

from __future__ import annotations

from pathlib import Path

from tokembed.models.base import LoadOptions
from tokembed.models.vision import VisionModel, load_vision_model


class ColPali:
    key = "ColPaliForRetrieval"
    detected_by = 'config.json "architectures": ["ColPaliForRetrieval"] (transformers-native ColPali, *-hf repos)'
    needs = "processor files (SigLIP image processor, PIL backend) + tokenizer; embedding_proj_layer weight and bias"
    modes = "vision"
    reference = "transformers ColPaliForRetrieval + ColPaliProcessor (colpali-engine semantics)"

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        from transformers import ColPaliForRetrieval

        return load_vision_model(cls.key, path, options, ColPaliForRetrieval)


# colpali-engine's own layout (``architectures`` ColPali, model_type paligemma), as
# vidore/colpaligemma-3b-pt-448-base saves it. Prompts and forward: colpali-engine 0.3.18.
def engine_tensor_names():
    from tokembed.models.engine_layout import TensorNames

    return TensorNames(
        renamings=(
            (r"^model\.language_model\.model\.", "model.language_model."),  # published: PaliGemmaForCG of transformers 4
            (r"^model\.language_model\.lm_head\.", "lm_head."),
            (r"^model\.model\.", "model."),  # colpali-engine 0.3.18's module names under transformers 5
            (r"^model\.lm_head\.", "lm_head."),
            (r"^model\.vision_tower\.vision_model\.", "model.vision_tower."),  # SigLIP as transformers <= 5.3 nested it
        ),
    )


class ColPaliEngine:
    key = "ColPali"
    detected_by = 'config.json "architectures": ["ColPali"] (colpali-engine layout, model_type paligemma)'
    needs = "PaliGemma processor files (SigLIP image processor) + tokenizer; custom_text_proj (128-d, bias)"
    modes = "vision"
    reference = (
        "colpali-engine 0.3.18 ColPali + ColPaliProcessor: documents '<image><bos>Describe the image.' through "
        "PaliGemmaProcessor; queries '<bos>' + query + 10 <pad>, no 'Question: ' prefix, no newline (unlike the -hf "
        "port), no token type ids (PaliGemma's inference prefix: bidirectional attention, padding masked); "
        "convert('RGB') on the image it gets (transparency already composited on white by the image reader)"
    )

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        from transformers import PaliGemmaProcessor

        from tokembed.models.engine_layout import EngineProcessor, load_engine_model, load_processor
        from tokembed.models.engine_modules import EngineColPali

        processor = EngineProcessor(
            load_processor(options.processor_path or path, PaliGemmaProcessor), "<image><bos>Describe the image.", None,
            query_format="bos",
        )
        return load_engine_model(cls.key, path, options, EngineColPali, engine_tensor_names(), processor, "custom_text_proj")
