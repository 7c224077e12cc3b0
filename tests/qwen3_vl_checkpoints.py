"""Tiny, random, offline checkpoints of the Qwen3-VL retrieval families, in each one's published layout.

``build_tomoro(path)``, ``build_ops(path)``, ``build_nemotron(path)`` write a checkpoint folder and return it:
``config.json`` with the family's ``model_type``, ``architectures`` and ``auto_map`` (pointing at code files that
are NOT shipped: loading must never need them), text/vision configs in Qwen3-VL's saved form (legacy
``rope_scaling`` with ``mrope_section`` / ``mrope_interleaved``), ``model.safetensors`` under the family's tensor
names, the tokenizer, ``preprocessor_config.json`` (``Qwen2VLImageProcessorFast``, as Qwen3-VL checkpoints name it)
and ``processor_config.json``.

* Tomoro   ``vlm.model.visual.*``, ``vlm.model.language_model.*``, ``vlm.lm_head.weight``, ``embedding_proj_layer``
           (weight + non-zero bias), ``embed_dim`` 16.
* Ops      ``visual.*``, ``language_model.*``, ``custom_text_proj`` (hidden -> hidden, non-zero bias), ``dims`` 24.
* Nemotron ``model.visual.*``, ``model.language_model.*``, ``lm_head.weight``; a Qwen3-VL chat template.
* colpali-engine 0.3.18's ``ColQwen3`` (``build_colqwen3_engine``): ``architectures ["ColQwen3"]``, ``model_type
  qwen3_vl`` (a saved ``Qwen3VLConfig``), ``custom_text_proj`` 320 x hidden (non-zero bias), no ``auto_map``;
  tensors ``model.visual.*``, ``model.language_model.*``, ``model.custom_text_proj.*`` (``names="saved"``: what
  0.3.18's ``ColQwen3.save_pretrained`` writes under transformers 5, observed) or the module's own unprefixed names
  (``names="module"``); processor files as transformers 5 saves ``ColQwen3Processor`` (nested image processor).

The backbone is transformers' ``Qwen3VLForConditionalGeneration`` (2 text layers, 2 vision blocks, deepstack on
vision block 0, patch 16, merge 2: 32 px per image token, 4..16 image tokens per image), seed fixed; its
norm weights are random around 1 (so a final norm that should not run changes the vectors).
"""

from __future__ import annotations

import json
import pathlib

import torch

from vision_checkpoints import _QWEN_SPECIALS, _tokenizer

HIDDEN = 32
TEXT = dict(
    model_type="qwen3_vl_text", hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, rms_norm_eps=1e-6, hidden_act="silu",
    rope_theta=10000.0, rope_scaling={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    tie_word_embeddings=False, attention_bias=False,
)
VISION = dict(
    model_type="qwen3_vl", depth=2, hidden_size=32, intermediate_size=64, num_heads=2, in_channels=3, patch_size=16,
    temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=HIDDEN, num_position_embeddings=64,
    deepstack_visual_indexes=[0], hidden_act="gelu_pytorch_tanh",
)
PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessorFast", "patch_size": 16, "merge_size": 2, "temporal_patch_size": 2,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_resize": True, "do_rescale": True,
    "do_normalize": True, "do_convert_rgb": True, "size": {"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 16},
}
# The shape of Qwen3-VL's chat template for user messages with text and image parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _ids(tokenizer) -> dict:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _QWEN_SPECIALS}
    return dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )


def _backbone_state(tokenizer) -> tuple[dict, dict]:
    """A random Qwen3VLForConditionalGeneration's tensors (``model.*``, ``lm_head.*``) and its config parts."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    text = dict(TEXT, vocab_size=len(tokenizer))
    parts = dict(text_config=text, vision_config=VISION, **_ids(tokenizer))
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**parts)).eval()
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    generator = torch.Generator().manual_seed(2)
    for name, tensor in state.items():  # norm weights initialise to ones; make them count (RMSNorm then L2 != L2)
        if name.endswith("norm.weight"):
            state[name] = 1 + 0.3 * torch.randn(tensor.shape, generator=generator)
    return state, parts


def _projection(name: str, out_features: int) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {
        f"{name}.weight": torch.randn(out_features, HIDDEN, generator=generator) * 0.2,
        f"{name}.bias": torch.randn(out_features, generator=generator) * 0.5,  # clearly non-zero
    }


def _write(path: pathlib.Path, tokenizer, config: dict, state: dict, processor: dict, chat_template: bool = False):
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    (path / "processor_config.json").write_text(json.dumps(processor, indent=2))
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    return path


def _qwen_tokenizer():
    return _tokenizer(_QWEN_SPECIALS, split_like_llama3=True, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def build_tomoro(path: pathlib.Path) -> pathlib.Path:
    tokenizer = _qwen_tokenizer()
    backbone, parts = _backbone_state(tokenizer)
    state = {"vlm." + name: tensor for name, tensor in backbone.items()}  # vlm.model.*, vlm.lm_head.weight
    state.update(_projection("embedding_proj_layer", 16))
    config = dict(
        architectures=["ColQwen3"], model_type="colqwen3", embed_dim=16, padding_side="left",
        auto_map={"AutoConfig": "configuration_colqwen3.ColQwen3Config", "AutoModel": "modeling_colqwen3.ColQwen3"},
        **parts,
    )
    processor = {
        "processor_class": "ColQwen3Processor", "auto_map": {"AutoProcessor": "processing_colqwen3.ColQwen3Processor"},
        "query_prefix": "",
        "visual_prompt_prefix": "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.",
        "visual_prompt_suffix": "<|im_end|><|endoftext|>",
    }
    return _write(path, tokenizer, config, state, processor)


def build_ops(path: pathlib.Path, dims: int = 24) -> pathlib.Path:
    tokenizer = _qwen_tokenizer()
    backbone, parts = _backbone_state(tokenizer)
    state = {name[len("model."):]: tensor for name, tensor in backbone.items() if name.startswith("model.")}
    state.update(_projection("custom_text_proj", HIDDEN))
    config = dict(
        architectures=["OpsColQwen3Model"], model_type="ops_colqwen3", dims=dims, mask_non_image_embeddings=False,
        auto_map={"AutoConfig": "configuration_ops_colqwen3.OpsColQwen3Config", "AutoModel": "modeling_ops_colqwen3.OpsColQwen3Model"},
        **parts,
    )
    processor = {"processor_class": "OpsColQwen3Processor", "auto_map": {"AutoProcessor": "processing_ops_colqwen3.OpsColQwen3Processor"}}
    return _write(path, tokenizer, config, state, processor)


def build_nemotron(path: pathlib.Path) -> pathlib.Path:
    tokenizer = _qwen_tokenizer()
    state, parts = _backbone_state(tokenizer)  # model.visual.*, model.language_model.*, lm_head.weight
    config = dict(
        architectures=["Qwen3VLNemotronEmbedModel"], model_type="qwen3_vl_nemotron_embed", pooling="colbert",
        auto_map={
            "AutoConfig": "configuration_nemotron_colembed.Qwen3VLNemotronEmbedConfig",
            "AutoModel": "modeling_nemotron_colembed.Qwen3VLNemotronEmbedModel",
        },
        **parts,
    )
    processor = {
        "processor_class": "Qwen3VLNemotronEmbedProcessor",
        "auto_map": {"AutoProcessor": "processing_nemotron_colembed.Qwen3VLNemotronEmbedProcessor"},
        "q_max_length": 512, "p_max_length": 4096, "query_prefix": "query:", "passage_prefix": "passage:",
        "reserve_tokens_for_images": 100,
    }
    return _write(path, tokenizer, config, state, processor, chat_template=True)


QWEN3_VL_BUILDERS = {"tomoro": build_tomoro, "ops": build_ops, "nemotron": build_nemotron}


COLQWEN3_ENGINE_DIM = 320  # fixed by colpali-engine 0.3.18's ColQwen3.__init__


def build_colqwen3_engine(path: pathlib.Path, names: str = "saved") -> pathlib.Path:
    from transformers import Qwen3VLConfig

    tokenizer = _qwen_tokenizer()
    backbone, parts = _backbone_state(tokenizer)
    state = {name[len("model."):]: tensor for name, tensor in backbone.items() if name.startswith("model.")}
    state.update(_projection("custom_text_proj", COLQWEN3_ENGINE_DIM))
    if names == "saved":
        state = {"model." + name: tensor for name, tensor in state.items()}
    config = Qwen3VLConfig(**parts)
    config.architectures = ["ColQwen3"]
    processor = {"processor_class": "ColQwen3Processor", "image_processor": dict(PREPROCESSOR)}
    return _write(path, tokenizer, config.to_dict(), state, processor)
