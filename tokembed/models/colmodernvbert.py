"""ColModernVBert (transformers ``ColModernVBertForRetrieval``: SigLIP + ModernBERT, Idefics3 processing).

Documents: ``<|begin_of_text|>User:`` + the image as Idefics3 lays it out (split into a grid of tiles,
each ``<fake_token_around_image><row_i_col_j>`` + ``<image>`` x image_seq_len, then the global image)
+ ``Describe the image.<end_of_utterance>\\nAssistant:``; the number of tiles, hence the length, depends
on the image size. Queries: ``{query}`` + 10 ``<end_of_utterance>`` augmentation tokens. The encoder is
bidirectional; the processor's ``pixel_attention_mask`` goes to the forward.

Weights are read in both namings ``ModernVBERT/colmodernvbert-merged`` has been published in: transformers'
(``vlm.*``, ``embedding_proj_layer.*``) and the original colpali-engine / ModernVBERT ones (``model.text_model.*``,
``model.vision_model.vision_model.*``, ``model.connector.modality_projection.*``, ``model.custom_text_proj.*`` or
``custom_text_proj.*``), renamed on load (``ORIGINAL_NAMES``, as vLLM's ``colmodernvbert.py`` maps them); the
completeness check runs on the renamed names, so a tensor no rule places is a model error, never dropped.
"""

from __future__ import annotations

from pathlib import Path

from tokembed.models.base import LoadOptions
from tokembed.models.vision import VisionModel, load_vision_model

# Original name (regex) -> transformers name. ``model.vision_model.vision_model.`` ends up as
# ``vlm.vision_model.``: transformers itself drops SigLIP's inner ``vision_model.`` prefix.
ORIGINAL_NAMES = {
    r"^model\.text_model\.": "vlm.text_model.",
    r"^model\.vision_model\.": "vlm.vision_model.",
    r"^model\.connector\.": "vlm.connector.",
    r"^(?:model\.)?custom_text_proj\.": "embedding_proj_layer.",
}


class ColModernVBert:
    key = "ColModernVBertForRetrieval"
    detected_by = 'config.json "architectures": ["ColModernVBertForRetrieval"]'
    needs = (
        "processor files (Idefics3 image processor, PIL backend) + tokenizer with the row/col image tokens; "
        "weights in transformers' names (vlm.*, embedding_proj_layer) or the original ones (model.*, custom_text_proj)"
    )
    modes = "vision"
    reference = "transformers ColModernVBertForRetrieval + processor (colpali-engine semantics)"

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        from transformers import ColModernVBertForRetrieval

        return load_vision_model(cls.key, path, options, ColModernVBertForRetrieval, key_mapping=ORIGINAL_NAMES)
