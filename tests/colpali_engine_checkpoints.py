"""Tiny, random, offline checkpoints in colpali-engine's own save layouts, and PEFT adapters over them.

Each base is built from transformers' own backbone classes (never tokembed's) plus a 128-d projection with a
clearly non-zero bias, and saved with ``config.json`` ``architectures`` naming colpali-engine's class and the
processor files of the backbone. ``names`` picks the tensor names:

* ``"published"``  as the vidore bases were written by transformers 4 (``model.layers.*`` for ColQwen2,
                   ``model.language_model.model.*`` for ColPali);
* ``"engine"``     colpali-engine 0.3.18's module names under transformers 5 (``language_model.*``,
                   ``model.model.language_model.*``);
* ``"escaped"``    what colpali-engine 0.3.18 + transformers 5 ``save_pretrained`` writes: its reversed
                   ``key_mapping`` with the regex escapes left in (``model\\.layers.0...``,
                   ``base_model\\.model\\.custom_text_proj.weight``).

``build_adapter`` trains nothing: it wraps a loaded module with peft (the published ``adapter_config.json``
settings: regex ``target_modules``, ``FEATURE_EXTRACTION``), gives every ``lora_B`` non-zero values and saves it.
"""

from __future__ import annotations

import json
import pathlib
import re

import torch
from safetensors.torch import save_file
from torch import nn

from vision_checkpoints import _QWEN_SPECIALS, _tokenizer

ENGINE_DIM = 128
# path -> (backbone, projection): the modules a base was saved from, for reference forwards in the tests.
BUILT: dict[str, tuple[nn.Module, nn.Linear]] = {}
PUBLISHED_REGEX = r"(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(custom_text_proj).*$)"


def _projection(hidden: int) -> nn.Linear:
    proj = nn.Linear(hidden, ENGINE_DIM)
    with torch.no_grad():
        proj.bias.normal_(std=0.5)
    return proj


def _write(path: pathlib.Path, config, architecture: str, tensors: dict[str, torch.Tensor], processor) -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    config.architectures = [architecture]
    config.save_pretrained(path)
    save_file({name: t.detach().contiguous().clone() for name, t in tensors.items()}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    processor.save_pretrained(path)
    return path


def _small_text(vocab: int, **extra) -> dict:
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=1024, **extra)


# -- ColQwen2 / ColQwen2.5 ---------------------------------------------------------------------------

def _qwen_names(name: str, names: str) -> str:
    if names == "engine":
        return name
    if name.startswith("language_model."):
        rest = name[len("language_model."):]
        return ("model\\." if names == "escaped" else "model.") + rest
    if name.startswith("custom_text_proj.") and names == "escaped":
        return "base_model\\.model\\." + name
    return name


def build_colqwen(path: pathlib.Path, version: str = "2", names: str = "published", hidden: int = 32,
                  layers: int = 2) -> pathlib.Path:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _tokenizer(_QWEN_SPECIALS, split_like_llama3=True, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16, patch_size=14, merge_size=2,
                                               temporal_patch_size=2)
    processor = _Parts(image_processor, tokenizer)  # Qwen2VLProcessor needs torchvision for its video part
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _QWEN_SPECIALS}
    text = _small_text(len(tokenizer), bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    text.update(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=hidden // 16)
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    if version == "2":
        from transformers import Qwen2VLConfig, Qwen2VLModel

        vision = dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        backbone, architecture = Qwen2VLModel(config), "ColQwen2"
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

        vision = dict(depth=2, hidden_size=32, out_hidden_size=hidden, intermediate_size=64, num_heads=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        backbone, architecture = Qwen2_5_VLModel(config), "ColQwen2_5"
    projection = _projection(hidden)
    state = {**backbone.state_dict(), **{f"custom_text_proj.{k}": v for k, v in projection.state_dict().items()}}
    tensors = {_qwen_names(name, names): tensor for name, tensor in state.items()}
    path = _write(pathlib.Path(path), config, architecture, tensors, processor)
    BUILT[str(path)] = (backbone.eval(), projection)
    _set_processor_class(path, "ColQwen2Processor" if version == "2" else "ColQwen2_5_Processor")
    return path


# -- ColPali ---------------------------------------------------------------------------------------------

def _paligemma_names(name: str, names: str) -> str:
    # SigLIP's tower was vision_tower.vision_model.* in every transformers colpali-engine ran on (<= 5.3).
    name = re.sub(r"^vision_tower\.", "vision_tower.vision_model.", name)
    if name.startswith("custom_text_proj."):
        return "base_model\\.model\\." + name if names == "escaped" else name
    if names == "engine":
        return "model.model." + name
    if name.startswith("language_model."):
        return "model.language_model.model." + name[len("language_model."):]
    return "model." + name


def build_colpali(path: pathlib.Path, names: str = "published") -> pathlib.Path:
    from transformers import PaliGemmaConfig, PaliGemmaModel, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = _tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"], bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                           unk_token="<unk>")
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32}, image_seq_length=16)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vocab = len(tokenizer)
    text = _small_text(vocab, head_dim=16, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                             vocab_size=vocab, projection_dim=32, hidden_size=32)
    torch.manual_seed(0)
    backbone = PaliGemmaModel(config)
    projection = _projection(32)
    state = {**backbone.state_dict(), **{f"custom_text_proj.{k}": v for k, v in projection.state_dict().items()}}
    tensors = {_paligemma_names(name, names): tensor for name, tensor in state.items()}
    head = "model.lm_head.weight" if names == "engine" else "model.language_model.lm_head.weight"
    tensors[head] = backbone.language_model.embed_tokens.weight  # the tied head colpali-engine saves
    path = _write(pathlib.Path(path), config, "ColPali", tensors, processor)
    BUILT[str(path)] = (backbone.eval(), projection)
    _set_processor_class(path, "ColPaliProcessor")
    return path


# -- ColIdefics3 -----------------------------------------------------------------------------------------

def build_colidefics3(path: pathlib.Path, names: str = "published") -> pathlib.Path:
    from transformers import Idefics3Config, Idefics3Model, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    grid = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>",
                "<global-img>"] + grid
    tokenizer = _tokenizer(specials, split_like_llama3=True, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                           pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tile, patch, scale = 32, 8, 2
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=True, size={"longest_edge": 2 * tile},
                                                max_image_size={"longest_edge": tile})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=(tile // patch) ** 2 // scale**2)
    text = _small_text(len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, model_type="llama")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=tile,
                  patch_size=patch)
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=scale,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    backbone = Idefics3Model(config)
    state = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    projection = _projection(32)
    state.update({f"linear.{k}": v for k, v in projection.state_dict().items()})
    if names == "escaped":  # colpali-engine 0.3.18 has no key_mapping for ColIdefics3: a peft-style prefix at most
        state = {f"base_model\\.model\\.{k}": v for k, v in state.items()}
    path = _write(pathlib.Path(path), config, "ColIdefics3", state, processor)
    BUILT[str(path)] = (backbone.eval(), projection)
    _set_processor_class(path, "ColIdefics3Processor")
    return path


class _Parts:
    """Saves an image processor and a tokenizer side by side, as a processor's save_pretrained lays them out."""

    def __init__(self, image_processor, tokenizer) -> None:
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def save_pretrained(self, path) -> None:
        self.image_processor.save_pretrained(path)
        self.tokenizer.save_pretrained(path)


def _set_processor_class(path: pathlib.Path, name: str) -> None:
    for file in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        target = path / file
        if target.is_file():
            data = json.loads(target.read_text())
            if "processor_class" in data:
                data["processor_class"] = name
                target.write_text(json.dumps(data, indent=2))


ENGINE_BUILDERS = {
    "ColQwen2": lambda path, names="published": build_colqwen(path, "2", names),
    "ColQwen2_5": lambda path, names="published": build_colqwen(path, "2.5", names),
    "ColPali": build_colpali,
    "ColIdefics3": build_colidefics3,
}


# -- PEFT adapters ---------------------------------------------------------------------------------------

def build_adapter(
    module: nn.Module,
    path: pathlib.Path,
    base_name: str,
    target_modules: str | list[str] = PUBLISHED_REGEX,
    rename: dict[str, str] | None = None,
    r: int = 4,
    lora_alpha: int = 12,
    seed: int = 1,
    **options,
) -> pathlib.Path:
    """Wrap ``module`` (modified in place: pass a copy) with peft, give ``lora_B`` non-zero values, save.

    ``rename``: regex -> replacement applied to the saved tensor names (after ``base_model.model.``), to write
    the names another base layout has (``{"^language_model\\.": "model."}`` gives the published ColQwen2 names).
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_modules, task_type="FEATURE_EXTRACTION",
                        init_lora_weights=True, **options)
    peft_model = get_peft_model(module, config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    path = pathlib.Path(path)
    peft_model.save_pretrained(path)
    adapter_config = json.loads((path / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = base_name
    (path / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    if rename:
        rename_adapter_tensors(path, rename)
    return path


def rename_adapter_tensors(path: pathlib.Path, rename: dict[str, str]) -> None:
    from safetensors.torch import load_file

    file = pathlib.Path(path) / "adapter_model.safetensors"
    state = load_file(str(file))
    renamed = {}
    for name, tensor in state.items():
        rest = name[len("base_model.model."):]
        for pattern, replacement in rename.items():
            rest = re.sub(pattern, replacement, rest)
        renamed["base_model.model." + rest] = tensor
    save_file(renamed, str(file), metadata={"format": "pt"})


# Builders in the ``build_<layout>(path)`` shape tests/test_models.py's OTHER_EXPECTED calls.
def build_colqwen2_engine(path: pathlib.Path) -> pathlib.Path:
    return build_colqwen(path, "2")


def build_colqwen2_5_engine(path: pathlib.Path) -> pathlib.Path:
    return build_colqwen(path, "2.5")


def build_colpali_engine(path: pathlib.Path) -> pathlib.Path:
    return build_colpali(path)


def build_peft_adapter(path: pathlib.Path) -> pathlib.Path:
    """A LoRA adapter folder (over a ColQwen2 base built next to it)."""
    from transformers import Qwen2VLConfig, Qwen2VLModel

    path = pathlib.Path(path)
    base = build_colqwen(path.parent / (path.name + "-base"), "2")
    module = Qwen2VLModel(Qwen2VLConfig.from_pretrained(base))
    return build_adapter(module, path, str(base), target_modules=r".*language_model.*(q_proj|v_proj)$")
