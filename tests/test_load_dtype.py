"""A checkpoint loads with every parameter in the dtype asked for and holding the stored value bit for bit, whatever
dtype its config.json's sub-configs name: Qwen3-VL configs say "bfloat16" in text_config and vision_config, and
transformers 5 builds each sub-model in its own config's dtype, over torch's default and over the dtype passed to
``from_pretrained`` for a sub-config its config class does not declare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import qwen3_vl_checkpoints
import qwen_checkpoints
from tokembed.models import load_model
from tokembed.models.base import LoadOptions
from tokembed.models.loading import from_pretrained_checked

BUILDERS = {**qwen3_vl_checkpoints.QWEN3_VL_BUILDERS, "colqwen3_engine": qwen3_vl_checkpoints.build_colqwen3_engine,
            "colqwen3_5": qwen_checkpoints.build_colqwen3_5}
NOT_RUN = ("lm_head.", "vlm.lm_head.", "mtp.")  # heads the families never load (language model, multi-token)


def say_bfloat16_in_sub_configs(path: Path) -> None:
    config = json.loads((path / "config.json").read_text())
    for key in ("text_config", "vision_config"):
        config[key]["dtype"] = "bfloat16"
    (path / "config.json").write_text(json.dumps(config))


def store_as(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors rewritten in ``dtype`` (floating ones), as now stored."""
    file = path / "model.safetensors"
    state = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in load_file(file).items()}
    save_file(state, file, metadata={"format": "pt"})
    return state


def assert_loaded_as_stored(module: torch.nn.Module, stored: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Every stored tensor is a parameter of ``module`` (under its name, or without the base model's ``model.``)
    in ``dtype`` (or float32: a projection some families run in float32), holding the stored value exactly."""
    loaded = module.state_dict()
    kept = {name: tensor for name, tensor in stored.items() if not name.startswith(NOT_RUN)}
    loaded_as = {name: name if name in loaded else name.removeprefix("model.") for name in kept}
    assert sorted(name for name, target in loaded_as.items() if target not in loaded) == []
    wrong = [f"{name}: {loaded[target].dtype}" for name, target in loaded_as.items()
             if loaded[target].is_floating_point() and loaded[target].dtype not in (dtype, torch.float32)]
    assert wrong == []
    changed = [name for name, target in loaded_as.items() if not torch.equal(loaded[target].to(kept[name].dtype), kept[name])]
    assert changed == [], f"{len(changed)} of {len(kept)} parameters do not hold the stored values: {changed[:3]}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_stored_weights_load_bit_for_bit_whatever_the_sub_configs_say(name, dtype, tmp_path):
    path = BUILDERS[name](tmp_path / name)
    say_bfloat16_in_sub_configs(path)
    stored = store_as(path, dtype)
    model = load_model(path, LoadOptions(dtype=str(dtype).removeprefix("torch.")))
    assert_loaded_as_stored(model.model, stored, dtype)


def test_from_pretrained_builds_an_undeclared_sub_config_in_the_dtype_asked(tmp_path):
    """A (remote-code style) config that nests a text config without declaring it in ``sub_configs``:
    ``from_pretrained(dtype=float32)`` alone builds that sub-model in the "bfloat16" its config names."""
    from transformers import AutoModel, PretrainedConfig, PreTrainedModel, Qwen2Config

    class NestingConfig(PretrainedConfig):
        model_type = "tokembed-test-nesting"

        def __init__(self, text_config=None, **kwargs) -> None:
            super().__init__(**kwargs)
            text_config = text_config or dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, num_key_value_heads=1, vocab_size=50)
            self.text_config = Qwen2Config(**text_config) if isinstance(text_config, dict) else text_config

    class NestingModel(PreTrainedModel):
        config_class = NestingConfig

        def __init__(self, config) -> None:
            super().__init__(config)
            self.text = AutoModel.from_config(config.text_config)
            self.post_init()

    torch.manual_seed(0)
    model = NestingModel(NestingConfig())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.rand_like(parameter) * 1e-3)  # values bfloat16 cannot hold
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["dtype"] = "bfloat16"
    (tmp_path / "config.json").write_text(json.dumps(config))

    loaded = from_pretrained_checked(NestingModel, tmp_path, dtype=torch.float32)
    assert_loaded_as_stored(loaded, load_file(tmp_path / "model.safetensors"), torch.float32)
