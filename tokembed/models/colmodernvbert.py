"""ColModernVBert (transformers ``ColModernVBertForRetrieval``: SigLIP + ModernBERT, Idefics3 processing).

Documents: ``<|begin_of_text|>User:`` + the image as Idefics3 lays it out (split into a grid of tiles,
each ``<fake_token_around_image><row_i_col_j>`` + ``<image>`` x image_seq_len, then the global image)
+ ``Describe the image.<end_of_utterance>\\nAssistant:``; the number of tiles, hence the length, depends
on the image size. Queries: ``{query}`` + 10 ``<end_of_utterance>`` augmentation tokens. The encoder is
bidirectional; the processor's ``pixel_attention_mask`` goes to the forward.
"""

from __future__ import annotations

from pathlib import Path

from tokembed.models.base import LoadOptions
from tokembed.models.vision import VisionModel, load_vision_model


class ColModernVBert:
    key = "ColModernVBertForRetrieval"
    detected_by = 'config.json "architectures": ["ColModernVBertForRetrieval"]'
    needs = "processor files (Idefics3 image processor, PIL backend) + tokenizer with the row/col image tokens"
    modes = "vision"
    reference = "transformers ColModernVBertForRetrieval + processor (colpali-engine semantics)"

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        from transformers import ColModernVBertForRetrieval

        return load_vision_model(cls.key, path, options, ColModernVBertForRetrieval)
