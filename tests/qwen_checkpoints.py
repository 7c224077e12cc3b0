"""Builders for tiny, random, fully offline Qwen-VL-family retrieval checkpoints in their published layouts.

Every ``build_*`` function has the signature ``build_xxx(path: pathlib.Path) -> pathlib.Path``: it writes a
checkpoint folder at ``path`` and returns it. Deterministic (fixed seed, tokenizer trained on a fixed corpus),
offline, well under a few seconds each.

* ``build_colqwen3_5``   colpali-engine 0.3.18's ``ColQwen3_5`` save format (as ``athrael-soju/colqwen3.5-4.5B-v3``):
                         ``config.json`` ``architectures ["ColQwen3_5"]``, ``model_type qwen3_5``, top-level ``dim``;
                         weights ``visual.*``, ``language_model.*`` (a hybrid Gated-DeltaNet / full-attention stack),
                         ``mtp.*`` (the base model's multi-token-prediction head, unused), ``custom_text_proj.weight``
                         and ``.bias``; processor files as transformers 5 saves colpali-engine's ``ColQwen3_5Processor``
                         (``processor_config.json`` with the image and video processors nested, tokenizer files).

The checkpoint is written without any tokembed code: the module saved is a plain ``Qwen3_5Model`` whose state
dict gets ``custom_text_proj.*`` and ``mtp.*`` added, so the names are those colpali-engine's ``ColQwen3_5``
(a ``Qwen3_5Model`` subclass with a ``custom_text_proj`` Linear) writes.
"""

from __future__ import annotations

import json
import pathlib

import torch

from vision_checkpoints import _QWEN_SPECIALS, _prepare, _small_text, _tokenizer

__all__ = ["QWEN_BUILDERS", "build_colqwen3_5", "COLQWEN3_5_DIM"]

COLQWEN3_5_DIM = 24  # top-level "dim" (320 in the published checkpoint)
PATCH, MERGE, TEMPORAL = 8, 2, 2  # 16 px per image token (16 and 2 in the published checkpoint, merge 2)


def _qwen_processor_parts(min_tokens: int = 4, max_tokens: int = 16):
    """Tokenizer, PIL image processor and video processor of a Qwen3-VL-style processor."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tokenizer = _tokenizer(_QWEN_SPECIALS, split_like_llama3=True, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tile = PATCH * MERGE
    size = {"shortest_edge": tile * tile * min_tokens, "longest_edge": tile * tile * max_tokens}
    image_processor = Qwen2VLImageProcessorPil(
        size=size, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    video_size = {"shortest_edge": tile * tile * min_tokens, "longest_edge": tile * tile * max_tokens * 4}
    video_processor = Qwen3VLVideoProcessor(
        size=video_size, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL,
        image_mean=[0.5] * 3, image_std=[0.5] * 3, fps=2, min_frames=2, max_frames=8,
    )
    return tokenizer, image_processor, video_processor


def save_qwen_processor(path: pathlib.Path, tokenizer, image_processor, video_processor, processor_class: str) -> None:
    """What ``ProcessorMixin.save_pretrained`` writes in transformers 5: tokenizer files, and one
    ``processor_config.json`` with the image and video processors nested. (A ``Qwen3VLProcessor`` cannot be
    built here to save itself: transformers refuses its video processor without torchvision.)"""
    tokenizer.save_pretrained(path)
    image = image_processor.to_dict()
    image["image_processor_type"] = "Qwen2VLImageProcessor"  # the class a torchvision install saves
    video = video_processor.to_dict()
    data = {"image_processor": image, "video_processor": video, "processor_class": processor_class}
    (path / "processor_config.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def colqwen3_5_config(tokenizer, **extra):
    """A tiny ``Qwen3_5Config``: 4 text layers (3 linear-attention, 1 full-attention), 2 vision blocks."""
    from transformers import Qwen3_5Config

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _QWEN_SPECIALS}
    text = _small_text(
        len(tokenizer),
        num_key_value_heads=1,
        head_dim=16,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
    )
    text.update(
        num_hidden_layers=4,
        layer_types=["linear_attention", "linear_attention", "full_attention", "linear_attention"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
            "mrope_section": [2, 1, 1], "mrope_interleaved": True,
        },
    )
    vision = dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=PATCH,
        spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL, num_position_embeddings=64,
    )
    config = Qwen3_5Config(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    config.architectures = ["ColQwen3_5"]
    config.dim = COLQWEN3_5_DIM
    for key, value in extra.items():
        setattr(config, key, value)
    return config


def build_colqwen3_5(path: pathlib.Path, **config_extra) -> pathlib.Path:
    """colpali-engine 0.3.18 ``ColQwen3_5`` save layout (see module doc); ``config_extra`` lands in config.json."""
    from safetensors.torch import load_file, save_file
    from transformers import Qwen3_5Model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = _prepare(path)
    tokenizer, image_processor, video_processor = _qwen_processor_parts()
    config = colqwen3_5_config(tokenizer, **config_extra)
    torch.manual_seed(0)
    model = Qwen3_5Model(config).eval()
    _randomize_norms(model)
    model.save_pretrained(path)
    save_qwen_processor(path, tokenizer, image_processor, video_processor, "ColQwen3_5Processor")
    hidden = config.text_config.hidden_size
    weights = path / "model.safetensors"
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(1)
    tensors["custom_text_proj.weight"] = torch.randn(COLQWEN3_5_DIM, hidden, generator=generator) * 0.2
    tensors["custom_text_proj.bias"] = torch.randn(COLQWEN3_5_DIM, generator=generator) * 0.5  # clearly non-zero
    tensors["mtp.fc.weight"] = torch.randn(hidden, 2 * hidden, generator=generator)  # the unused MTP head
    tensors["mtp.norm.weight"] = torch.ones(hidden)
    save_file(tensors, weights, metadata={"format": "pt"})
    config_file = path / "config.json"
    data = json.loads(config_file.read_text())
    data["architectures"] = ["ColQwen3_5"]
    config_file.write_text(json.dumps(data, indent=2))
    return path


def _randomize_norms(model) -> None:
    """Qwen3.5's RMSNorms are (1 + weight) with weight initialised to 0: give them values so a norm that
    were skipped or applied twice would show in the parity tests."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                parameter.normal_(std=0.2)


QWEN_BUILDERS = {"colqwen3_5": build_colqwen3_5}
