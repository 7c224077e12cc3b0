"""Qwen-VL processor settings, read where the references read them.

The reference for which file wins is transformers itself (``ImageProcessingMixin.get_image_processor_dict``,
``BaseVideoProcessor.get_video_processor_dict``, ``AutoImageProcessor`` over a folder), and for an adapter the
adapter folder loaded alone (what colpali-engine's ``from_pretrained(adapter)`` reads). Tomoro's prompts follow its
``ColQwen3Processor.__init__``: a saved value is used unless it is None.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qwen3_vl_checkpoints
import qwen_checkpoints
from colpali_engine_checkpoints import build_adapter, build_peft_adapter
from tokembed.errors import ModelError
from tokembed.models import load_model
from tokembed.models.colqwen3_5 import PROMPTS
from tokembed.models.qwen_vl_processor import QwenVLProcessor, read_processor_settings

BUILDERS = {"colqwen3_5": qwen_checkpoints.build_colqwen3_5, **qwen3_vl_checkpoints.QWEN3_VL_BUILDERS}
LORA_TARGETS = r".*language_model.*(q_proj|v_proj)$"


def _image() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((150, 200, 3)) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-vl-settings")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = BUILDERS[name](root / name)
        return cache[name]

    return get


def _image_inputs(processor, image: Image.Image) -> dict:
    out = processor(images=[image.convert("RGB")], return_tensors="pt")
    return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}


def _assert_same_images(tokembed_processor, reference, image: Image.Image) -> None:
    got = tokembed_processor.process_images([image])
    expected = _image_inputs(reference, image)
    assert got["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist()
    assert torch.equal(got["pixel_values"][0], expected["pixel_values"])


# -- 1. which file wins --------------------------------------------------------------------------------------


def _with_legacy_files(source: Path, target: Path) -> Path:
    """A copy holding, beside the nested settings, legacy files with other settings."""
    shutil.copytree(source, target)
    nested = json.loads((target / "processor_config.json").read_text())
    edge = nested["image_processor"]["size"]["shortest_edge"]
    image = dict(nested["image_processor"], image_mean=[0.1, 0.2, 0.3], size={"shortest_edge": edge, "longest_edge": edge})
    video = dict(nested["video_processor"], fps=1, max_frames=4)
    (target / "preprocessor_config.json").write_text(json.dumps(image))
    (target / "video_preprocessor_config.json").write_text(json.dumps(video))
    return target


def test_nested_settings_win_over_the_legacy_files_as_in_transformers(built, tmp_path):
    from transformers import AutoImageProcessor
    from transformers.image_processing_base import ImageProcessingMixin
    from transformers.video_processing_utils import BaseVideoProcessor

    path = _with_legacy_files(built("colqwen3_5"), tmp_path / "both")
    image, video = read_processor_settings(path)
    assert image == ImageProcessingMixin.get_image_processor_dict(str(path))[0]
    assert video == BaseVideoProcessor.get_video_processor_dict(str(path))[0]
    processor = QwenVLProcessor.from_pretrained(path, PROMPTS)
    _assert_same_images(processor, AutoImageProcessor.from_pretrained(path, backend="pil"), _image())
    assert processor.video_processor.fps == video["fps"] and processor.video_processor.max_frames == video["max_frames"]


def test_video_settings_only_in_preprocessor_config_refuse_videos(built, tmp_path):
    """transformers builds its video processor from the image settings there (a Qwen2-VL one): not reproduced."""
    from transformers.video_processing_utils import BaseVideoProcessor

    path = shutil.copytree(built("colqwen3_5"), tmp_path / "no-video")
    nested = json.loads((path / "processor_config.json").read_text())
    (path / "preprocessor_config.json").write_text(json.dumps(nested.pop("image_processor")))
    del nested["video_processor"]
    (path / "processor_config.json").write_text(json.dumps(nested))
    assert BaseVideoProcessor.get_video_processor_dict(str(path))[0] == read_processor_settings(path)[0]
    processor = QwenVLProcessor.from_pretrained(path, PROMPTS)
    assert processor.video_processor is None
    with pytest.raises(ModelError, match="no video settings"):
        processor.video_plan(10, 5.0, 48, 64)


# -- 2. an adapter's own settings, for the families built from parts -----------------------------------------


def _adapter_with_settings(base: Path, target: Path) -> Path:
    """A LoRA adapter over ``base`` shipping its own image settings (other mean, a larger minimum), in the file
    the base keeps them in."""
    module = copy.deepcopy(load_model(base).model)
    adapter = build_adapter(module, target, str(base), target_modules=LORA_TARGETS)
    nested = json.loads((base / "processor_config.json").read_text())
    if "image_processor" in nested:
        settings, file = nested["image_processor"], "processor_config.json"
    else:
        settings, file = json.loads((base / "preprocessor_config.json").read_text()), "preprocessor_config.json"
    tile = int(settings["patch_size"]) * int(settings["merge_size"])
    settings = dict(settings, image_mean=[0.1, 0.2, 0.3], size=dict(settings["size"], shortest_edge=tile * tile * 16))
    saved = dict(nested, image_processor=settings) if file == "processor_config.json" else settings
    (adapter / file).write_text(json.dumps(saved))
    return adapter


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_an_adapters_processor_settings_win_over_the_base(name, built, tmp_path):
    from transformers import AutoImageProcessor

    adapter = _adapter_with_settings(built(name), tmp_path / "adapter")
    model = load_model(adapter)
    assert model.extra["adapter"] == str(adapter)
    # Tomoro: ColQwen3Processor.from_pretrained's cap (1280 visual tokens of 32 px) over the adapter's minimum.
    tomoro = {"size": {"shortest_edge": 32 * 32 * 16, "longest_edge": 1280 * 32 * 32}} if name == "tomoro" else {}
    reference = AutoImageProcessor.from_pretrained(adapter, backend="pil", **tomoro)
    assert list(model.processor.image_processor.image_mean) == [0.1, 0.2, 0.3]
    _assert_same_images(model.processor, reference, _image())


# -- 3. the overlay gives what the adapter folder alone gives ------------------------------------------------


def test_an_adapters_legacy_settings_win_over_the_bases_nested_ones(tmp_path):
    from transformers import AutoImageProcessor

    adapter = build_peft_adapter(tmp_path / "adapter")
    base = tmp_path / "adapter-base"
    legacy = json.loads((base / "preprocessor_config.json").read_text())
    (base / "processor_config.json").write_text(json.dumps({"image_processor": legacy}))
    (base / "preprocessor_config.json").unlink()
    mine = {k: v for k, v in legacy.items() if k != "size"}
    mine.update(max_pixels=28 * 28 * 8, min_pixels=28 * 28 * 8, image_mean=[0.1, 0.2, 0.3])
    (adapter / "preprocessor_config.json").write_text(json.dumps(mine))

    alone = AutoImageProcessor.from_pretrained(adapter, backend="pil")  # colpali-engine's from_pretrained(adapter)
    image_processor = load_model(adapter).processor.processor.image_processor
    assert dict(image_processor.size) == dict(alone.size) and list(image_processor.image_mean) == list(alone.image_mean)


def test_the_overlay_takes_each_group_of_files_whole_from_one_folder(tmp_path):
    from tokembed.models.processor_overlay import processor_overlay

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir(), adapter.mkdir()
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"):
        (base / name).write_text("base")
    (adapter / "preprocessor_config.json").write_text("adapter")
    with processor_overlay(base, adapter) as folder:
        files = {p.name: p.read_text() for p in folder.iterdir()}
    # The adapter's settings alone; the base's tokenizer, which the adapter does not ship.
    assert files == {"preprocessor_config.json": "adapter", "tokenizer.json": "base", "tokenizer_config.json": "base",
                     "config.json": "base"}
    (adapter / "tokenizer.json").write_text("adapter")
    with processor_overlay(base, adapter) as folder:
        files = {p.name: p.read_text() for p in folder.iterdir()}
    assert files == {"preprocessor_config.json": "adapter", "tokenizer.json": "adapter", "config.json": "base"}


# -- 4. Tomoro's saved prompts: only None takes the default --------------------------------------------------


@pytest.mark.parametrize("key", ["visual_prompt_prefix", "visual_prompt_suffix"])
def test_tomoro_keeps_an_empty_saved_prompt(key, built, tmp_path):
    from tokembed.models.colqwen3 import tomoro_processor

    path = shutil.copytree(built("tomoro"), tmp_path / "tomoro")
    saved = json.loads((path / "processor_config.json").read_text())
    saved[key] = ""
    (path / "processor_config.json").write_text(json.dumps(saved))
    prompts = tomoro_processor(path).prompts
    # ColQwen3Processor: f"{visual_prompt_prefix}{visual_prompt_suffix}".
    assert prompts.image == saved["visual_prompt_prefix"] + saved["visual_prompt_suffix"]


# -- 5. Nemotron's null settings: kept as None by Qwen3VLNemotronEmbedProcessor.__init__ (no default) -------------


def _nemotron_with(built, tmp_path, **saved) -> Path:
    path = shutil.copytree(built("nemotron"), tmp_path / "nemotron")
    settings = json.loads((path / "processor_config.json").read_text())
    (path / "processor_config.json").write_text(json.dumps({**settings, **saved}))
    return path


@pytest.mark.parametrize("key", ["p_max_length", "reserve_tokens_for_images"])
def test_nemotron_refuses_a_null_document_length(key, built, cli, tmp_path):
    # process_documents computes `p_max_length > tokens + reserve` with None: a TypeError on every document
    path = _nemotron_with(built, tmp_path, **{key: None})
    pages = tmp_path / "pages"
    pages.mkdir()
    _image().save(pages / "page.png")
    result = cli("encode", pages, "--model", path, "-o", tmp_path / "index")
    assert result.exit_code == 4, result.output
    assert f"processor_config.json: {key} is null" in result.stderr and "Traceback" not in result.output


def test_nemotron_null_query_length_truncates_where_the_tokenizer_does(built, tmp_path):
    # process_queries passes max_length=None with truncation=True: the tokenizer cuts at its model_max_length
    from tokembed.models.nemotron import nemotron_processor

    path = _nemotron_with(built, tmp_path, q_max_length=None)
    processor = nemotron_processor(path)
    query = "word " * 3000
    rendered = processor.prompts.query_prefix + query + processor.prompts.query_suffix
    expected = processor.tokenizer([rendered], truncation=True, max_length=None)["input_ids"][0]
    assert len(expected) == processor.tokenizer.model_max_length < 3000
    assert processor.process_queries([query])["input_ids"][0].tolist() == expected


def test_nemotron_null_prefixes_are_no_prefixes(built, tmp_path):
    # `if self.query_prefix` / `if self.passage_prefix`: None is falsy, as an empty prefix
    from tokembed.models.nemotron import nemotron_processor

    prompts = nemotron_processor(_nemotron_with(built, tmp_path, query_prefix=None, passage_prefix=None)).prompts
    assert prompts.query_prefix.endswith("Query: ") and "passage" not in prompts.image
