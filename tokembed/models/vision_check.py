"""Processor settings that contradict the model's vision config, refused when the model loads (exit 4).

Stage: models (load). A processor cuts images into patches and lays out image tokens by its own settings; the
vision tower was built by ``config.json``. Where the two disagree the reference's forward fails on every image
(a reshape of the wrong size, "Image features and image tokens do not match", a position table of the wrong
length), so tokembed refuses the checkpoint naming both files and both values instead of a traceback per row.

* Qwen-VL (a vision config with ``spatial_merge_size``): the image and video processors' ``patch_size``,
  ``merge_size`` and ``temporal_patch_size`` equal the vision config's ``patch_size``, ``spatial_merge_size``,
  ``temporal_patch_size``. A video processor that does not is kept as the processor's ``video_refusal``: images
  still encode (as in the reference), videos are refused (ModelError) when they come.
* PaliGemma (SigLIP with fixed position embeddings): the image size is the vision ``image_size`` and
  ``image_seq_length`` is (image_size / patch_size)².
* Idefics3 / ModernVBERT: ``image_seq_len`` is the tokens a tile makes, (tile / patch_size)² / scale², tile
  being the image processor's ``max_image_size``. Idefics3's own vision embeddings take tiles of any size (the
  reference runs a consistent smaller or larger tile, so that is allowed); ModernVBERT's SigLIP takes only its
  ``image_size``.

Remote-code models are not checked: their processors are their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokembed.errors import ModelError
from tokembed.models.base import read_json

_QWEN_SETTINGS = (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"), ("temporal_patch_size", "temporal_patch_size"))
# Where a processor section's settings are saved: transformers 4 one file each, transformers 5 nested.
_SECTION_FILES = {"image_processor": "preprocessor_config.json", "video_processor": "video_preprocessor_config.json"}


def check_processor_fits(path: Path, processor: Any, config: Any, processor_dir: Path | None = None) -> None:
    """ModelError (exit 4) naming the processor file and ``config.json`` where a processor setting contradicts the
    model's vision config (see the module doc); nothing for a model without a vision config."""
    vision = vision_config(config)
    if vision is None:
        return
    inner = getattr(processor, "processor", processor)  # colpali-engine layouts wrap the transformers processor
    image = getattr(inner, "image_processor", None)
    if image is None:
        return
    folder = Path(processor_dir or path)
    mismatch = _first_mismatch(config, vision, inner, image)
    if mismatch is not None:
        raise ModelError(_message(path, folder, mismatch, "image"))
    video = getattr(inner, "video_processor", None)
    if video is not None and getattr(vision, "spatial_merge_size", None) is not None:
        # Images still encode as the reference encodes them; only videos would fail, so only videos are refused.
        mismatch = _qwen_mismatch("video_processor", video, vision)
        inner.video_refusal = None if mismatch is None else _message(path, folder, mismatch, "video")


def _message(path: Path, folder: Path, mismatch: tuple, kind: str) -> str:
    section, setting, value, model_setting, model_value = mismatch
    return (
        f"{settings_file(folder, section, setting)}: {setting} {value} does not fit {Path(path) / 'config.json'} "
        f"{model_setting} {model_value}; the model's forward would fail on every {kind} (the processor settings and "
        "the vision tower must agree)"
    )


def vision_config(config: Any) -> Any:
    """The vision tower's config: at the top (Qwen3-VL, Idefics3, PaliGemma) or under ``vlm_config`` (the -hf ports)."""
    for owner in (config, getattr(config, "vlm_config", None)):
        vision = getattr(owner, "vision_config", None) if owner is not None else None
        if vision is not None:
            return vision
    return None


def _first_mismatch(config: Any, vision: Any, processor: Any, image: Any) -> tuple | None:
    if getattr(vision, "spatial_merge_size", None) is not None:
        return _qwen_mismatch("image_processor", image, vision)
    if getattr(processor, "image_seq_len", None) is not None or _scale(config) is not None:
        return _tile_mismatch(config, vision, processor, image)
    if getattr(processor, "image_seq_length", None) is not None:
        return _fixed_size_mismatch(vision, processor, image)
    return None


def _qwen_mismatch(section: str, part: Any, vision: Any) -> tuple | None:
    for setting, model_setting in _QWEN_SETTINGS:
        value, model_value = getattr(part, setting, None), getattr(vision, model_setting, None)
        if value is not None and model_value is not None and int(value) != int(model_value):
            return section, setting, value, f"vision_config.{model_setting}", model_value
    return None


def _fixed_size_mismatch(vision: Any, processor: Any, image: Any) -> tuple | None:
    """PaliGemma: one image of exactly ``image_size`` makes (image_size / patch_size)² tokens."""
    side, patch = int(vision.image_size), int(vision.patch_size)
    size = getattr(image, "size", None)
    for edge in ("height", "width"):
        value = _get(size, edge)
        if value is not None and int(value) != side:
            return "image_processor", f"size.{edge}", value, "vision_config.image_size", side
    tokens = (side // patch) ** 2
    if int(processor.image_seq_length) != tokens:
        return ("processor", "image_seq_length", processor.image_seq_length,
                "vision_config image_size / patch_size squared", f"({side}/{patch})² = {tokens}")
    return None


def _tile_mismatch(config: Any, vision: Any, processor: Any, image: Any) -> tuple | None:
    """Idefics3 / ModernVBERT: each tile of ``max_image_size`` makes (tile / patch)² / scale² tokens."""
    side, patch, scale = int(vision.image_size), int(vision.patch_size), int(_scale(config) or 1)
    tile = _get(getattr(image, "max_image_size", None), "longest_edge")
    tile = side if tile is None else int(tile)
    # Idefics3's own vision embeddings bucket any patch grid (SmolVLM / colSmol configs tag them "idefics3")
    free_tiles = getattr(vision, "model_type", None) in ("idefics3_vision", "idefics3")
    if tile != side and (not free_tiles or tile % (patch * scale)):
        return "image_processor", "max_image_size.longest_edge", tile, "vision_config.image_size", side
    tokens = (tile // patch) ** 2 // scale**2
    seq = getattr(processor, "image_seq_len", None)
    if seq is None or int(seq) != tokens:
        return ("processor", "image_seq_len", seq, "tokens per tile (tile / vision_config.patch_size)² / scale_factor²",
                f"({tile}/{patch})² / {scale}² = {tokens}")
    return None


def _scale(config: Any) -> int | None:
    """Idefics3's ``scale_factor`` (top level) or ModernVBERT's ``pixel_shuffle_factor`` (under ``vlm_config``)."""
    for owner in (config, getattr(config, "vlm_config", None)):
        for name in ("scale_factor", "pixel_shuffle_factor"):
            value = getattr(owner, name, None) if owner is not None else None
            if value is not None:
                return int(value)
    return None


def _get(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return value.get(key)
    return getattr(value, key, None)


def settings_file(folder: Path, section: str, setting: str) -> str:
    """The processor file that sets ``setting`` (at its top level, or nested under ``section`` or
    ``image_processor`` in ``processor_config.json``), for the message; where none does, the folder and that the
    processor's default applies."""
    key = setting.split(".")[0]
    # transformers reads the section nested in processor_config.json before the section's own file
    candidates = ["processor_config.json"] + ([_SECTION_FILES[section]] if section in _SECTION_FILES else [])
    for name in candidates:
        data = read_json(folder / name) or {}
        nested = [data.get(part) for part in (section, "image_processor")] if name == "processor_config.json" else []
        if key in data or any(isinstance(part, dict) and key in part for part in nested):
            return str(folder / name)
    return f"{folder} (no processor file sets {key}: the processor's default)"
