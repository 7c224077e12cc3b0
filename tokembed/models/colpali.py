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
