"""Vision retrieval families that ship their own code (ColQwen3, Nemotron ColEmbed, colpali-engine
exports, ...), loaded only with ``--trust-remote-code``.

The checkpoint's ``config.json`` ``auto_map`` names its model class (``AutoModel``) and its processor
(``processor_config.json`` / ``preprocessor_config.json``, ``AutoProcessor``); tokembed uses both as they
are: ``process_images`` / ``process_queries`` prepare items, the forward's output (a tensor as
colpali-engine returns, or ``.embeddings``) gives the vectors, normalized as the model does.
"""

from __future__ import annotations

from pathlib import Path

from tokembed.models.base import LoadOptions
from tokembed.models.vision import VisionModel, load_vision_model

# Where colpali-engine style models keep their projection (the output before normalization).
PROJECTION_NAMES = ("embedding_proj_layer", "custom_text_proj", "linear", "proj", "projection")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


class RemoteCodeRetrieval:
    key = "remote-code-retrieval"
    detected_by = (
        'config.json "auto_map" + a processor (processor_config.json or preprocessor_config.json), '
        'architectures naming Col... or ...Retriev... (ColQwen3, NemoRetrieverColEmbed, ...)'
    )
    needs = "--trust-remote-code; a processor with process_images/process_queries; forward returning embeddings"
    modes = "vision"
    reference = "the checkpoint's own code (auto_map), run as it is"

    @classmethod
    def load(cls, path: Path, options: LoadOptions) -> VisionModel:
        from transformers import AutoModel

        return load_vision_model(cls.key, path, options, AutoModel, projection=PROJECTION_NAMES, check_processor=False)


def is_remote_vision(path: Path, config: dict) -> bool:
    """A checkpoint with its own code that looks like a ColVision retriever (see ``detected_by``)."""
    if not config.get("auto_map"):
        return False
    names = [str(name) for name in (config.get("architectures") or [])]
    looks_like = any("col" in name.lower() or "retriev" in name.lower() for name in names)
    return looks_like and any((path / name).is_file() for name in PROCESSOR_FILES)
