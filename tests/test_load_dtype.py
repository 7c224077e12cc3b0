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
from tokembed.models import load_model, loading, readings
from tokembed.models.base import LoadOptions
from tokembed.models.loading import default_dtype, from_pretrained_checked
from tokembed.models.readings import SUB_MODEL_DTYPE, dtype_reading

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


# Upgrades: an index an earlier release built holds the vectors of its rounded weights (models.readings.dtype_reading).

def earlier_building_in(dtype, _config):
    """``loading.building_in`` as releases before it built a module: torch's default dtype alone."""
    return default_dtype(dtype)


def tomoro_saying(path: Path, sub_dtype: str | None, stored: torch.dtype) -> Path:
    path = qwen3_vl_checkpoints.build_tomoro(path)
    if sub_dtype is not None:
        config = json.loads((path / "config.json").read_text())
        for key in ("text_config", "vision_config"):
            config[key]["dtype"] = sub_dtype
        (path / "config.json").write_text(json.dumps(config))
    store_as(path, stored)
    return path


@pytest.mark.parametrize("sub_dtype", ["bfloat16", "float16", "float32", None])
@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16], ids=str)
def test_the_reading_is_named_exactly_where_an_earlier_release_loaded_other_weights(stored, sub_dtype, tmp_path, monkeypatch):
    path = tomoro_saying(tmp_path / "tomoro", sub_dtype, stored)
    for run in ("float32", "float16", "bfloat16"):
        options = LoadOptions(dtype=run)
        now = load_model(path, options)
        with monkeypatch.context() as patch:
            patch.setattr(loading, "building_in", earlier_building_in)
            earlier = load_model(path, options).model.state_dict()
        differ = any(not torch.equal(tensor, earlier[name]) for name, tensor in now.model.state_dict().items())
        assert (SUB_MODEL_DTYPE in now.reading) == differ, (run, differ)


def test_a_remote_code_sub_model_built_in_its_own_dtype_is_marked(tmp_path):
    """from_pretrained (as earlier releases called it) sets the dtype asked on the sub-configs a config class
    declares; one a remote-code class nests undeclared built its sub-model in the dtype it names, and kept it."""
    for declared in (False, True):
        folder = tmp_path / f"declared_{declared}"
        folder.mkdir()
        (folder / "configuration_nesting.py").write_text(NESTING_CONFIG.replace("DECLARED", str(declared)))
        (folder / "modeling_nesting.py").write_text(NESTING_MODEL)
        (folder / "config.json").write_text(json.dumps({
            "model_type": f"tokembed-nesting-{declared}", "architectures": ["NestingModel"],
            "auto_map": {"AutoConfig": "configuration_nesting.NestingConfig", "AutoModel": "modeling_nesting.NestingModel"},
            "text_config": {"model_type": "qwen2", "dtype": "bfloat16", **NESTED_QWEN2},
        }))
        marked = {run: dtype_reading("encoder", folder, LoadOptions(dtype=run, trust_remote_code=True))
                  for run in ("float32", "bfloat16")}
        assert marked == {"float32": () if declared else (SUB_MODEL_DTYPE,), "bfloat16": ()}
        assert dtype_reading("encoder", folder, LoadOptions(dtype="float32")) == ()  # its code never ran
        # a family that builds its own class never runs the config's auto_map code (nor did earlier releases)
        assert dtype_reading("ColQwen3_5", folder, LoadOptions(dtype="float32", trust_remote_code=True)) == ()


NESTED_QWEN2 = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, vocab_size=50)
NESTING_CONFIG = '''
from transformers import AutoConfig, PretrainedConfig, Qwen2Config


class NestingConfig(PretrainedConfig):
    model_type = "tokembed-nesting"
    sub_configs = {"text_config": AutoConfig} if DECLARED else {}

    def __init__(self, text_config=None, **kwargs):
        super().__init__(**kwargs)
        text_config = dict(text_config or {})
        text_config.pop("model_type", None)
        self.text_config = Qwen2Config(**text_config)
'''
NESTING_MODEL = '''
from transformers import AutoModel, PreTrainedModel

from .configuration_nesting import NestingConfig


class NestingModel(PreTrainedModel):
    config_class = NestingConfig

    def __init__(self, config):
        super().__init__(config)
        self.text = AutoModel.from_config(config.text_config)
        self.post_init()
'''


def _pages(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for number in range(2):
        Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(folder / f"p{number}.png")
    return folder


def upgraded_run(cli, model: Path, dtype: str, tmp_path: Path, monkeypatch) -> tuple[dict, str]:
    """(the summary of the first run of this release over an index an earlier release built (its settings: no
    dtype reading named), what score said on stderr before that run)."""
    index = tmp_path / f"index-{model.name}-{dtype}"
    encode = ("encode", tmp_path / "pages", "--model", model, "-o", index, "--dtype", dtype, "--log-format", "json")
    with monkeypatch.context() as patch:
        patch.setattr(readings, "dtype_reading", lambda *args: ())
        assert cli(*encode).exit_code == 0
    scored = cli("score", index, "--query", "a page")
    assert scored.exit_code == 0, scored.output
    upgraded = cli(*encode)
    assert upgraded.exit_code == 0, upgraded.output
    return json.loads(upgraded.stdout.strip().splitlines()[-1]), scored.stderr


def test_an_index_of_rounded_weights_is_encoded_again_and_no_other(cli, tmp_path, monkeypatch):
    _pages(tmp_path / "pages")
    rounded = tomoro_saying(tmp_path / "rounded", "bfloat16", torch.float32)
    summary, warned = upgraded_run(cli, rounded, "float32", tmp_path, monkeypatch)
    assert (summary["updated"], summary["unchanged"]) == (2, 0)
    # until then, score says its documents are not what this release encodes
    assert f"otherwise (reading {SUB_MODEL_DTYPE!r})" in warned, warned
    manifest = json.loads((tmp_path / "index-rounded-float32" / "manifest.json").read_text())
    assert manifest["settings"]["reading"] == [SUB_MODEL_DTYPE]
    plain = tomoro_saying(tmp_path / "plain", None, torch.float32)  # its sub-configs name no dtype
    engine = BUILDERS["colqwen3_engine"](tmp_path / "engine")  # from_pretrained, declared sub-configs
    say_bfloat16_in_sub_configs(engine)
    store_as(engine, torch.float32)
    for model, dtype in ((rounded, "bfloat16"), (plain, "float32"), (engine, "float32")):
        summary, warned = upgraded_run(cli, model, dtype, tmp_path, monkeypatch)
        assert (summary["updated"], summary["unchanged"]) == (0, 2), (model.name, dtype)
        assert "warning" not in warned, warned
