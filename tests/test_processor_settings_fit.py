"""Processor settings applied as transformers applies them, or refused with exit 4 naming the file and the setting.

* ColQwen3.5 videos: the video processor's ``do_sample_frames``, ``num_frames`` / ``fps``, ``cap_pixels_per_frame``
  and ``max_video_tokens`` give the frames and patches transformers' own ``Qwen3VLVideoProcessor`` code gives
  (its frame sampling as ``preprocess`` calls it, its ``get_num_of_video_patches``; ``__call__`` itself needs
  torchvision).
* Processor settings that contradict the vision config (patch, merge and temporal sizes, PaliGemma's image size
  and sequence length, Idefics3 / ModernVBERT tiles and tokens per tile): the reference fails on every image, so
  the load is refused (exit 4) naming the processor file, ``config.json`` and both values.
"""

from __future__ import annotations

import json
import re
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import colpali_engine_checkpoints
import qwen3_vl_checkpoints
import qwen_checkpoints
import vision_checkpoints
from tokembed.errors import ModelError
from tokembed.models import LoadOptions, load_model

TOTAL_FRAMES, FPS, HEIGHT, WIDTH = 100, 10.0, 480, 640


@pytest.fixture(scope="module")
def colqwen3_5(tmp_path_factory) -> Path:
    return qwen_checkpoints.build_colqwen3_5(tmp_path_factory.mktemp("colqwen3_5") / "ckpt")


def _variant(source: Path, target: Path, file: str, edit) -> Path:
    shutil.copytree(source, target)
    settings = json.loads((target / file).read_text())
    edit(settings)
    (target / file).write_text(json.dumps(settings))
    return target


def _with_video_settings(colqwen3_5: Path, target: Path, change: dict) -> Path:
    return _variant(colqwen3_5, target, "processor_config.json", lambda d: d["video_processor"].update(change))


def transformers_frames_and_patches(video_processor) -> tuple[int, int]:
    """The frames transformers' ``BaseVideoProcessor.preprocess`` keeps of a TOTAL_FRAMES video at FPS (its own
    kwargs merge, ``sample_frames`` partial and ``_decode_and_sample_videos``), and its patch count for them."""
    kwargs = video_processor._merge_and_standardize_kwargs()
    do_sample = kwargs.pop("do_sample_frames")
    for unused in ("input_data_format", "do_convert_rgb", "device", "video_metadata"):
        kwargs.pop(unused)
    sample = partial(video_processor.sample_frames, **kwargs) if do_sample else None
    frames = np.zeros((TOTAL_FRAMES, 2, 2, 3), dtype=np.uint8)  # only its frame count matters here
    videos, _ = video_processor._decode_and_sample_videos(
        [frames], video_metadata=[{"total_num_frames": TOTAL_FRAMES, "fps": FPS}], do_sample_frames=do_sample, sample_indices_fn=sample,
    )
    n = len(videos[0])
    return n, video_processor.get_num_of_video_patches(n, HEIGHT, WIDTH)


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"cap_pixels_per_frame": True, "max_video_tokens": 4},
        {"fps": None, "num_frames": 4},
        {"do_sample_frames": False},
        {"fps": 1},
    ],
    ids=["default", "cap-pixels-per-frame", "num-frames", "no-sampling", "fps"],
)
def test_video_frames_and_sizes_follow_the_video_processor_settings(colqwen3_5, tmp_path, change):
    model = load_model(_with_video_settings(colqwen3_5, tmp_path / "ckpt", change), LoadOptions())
    processor = model.processor
    video = processor.video_processor
    indices, (height, width) = processor.video_plan(TOTAL_FRAMES, FPS, HEIGHT, WIDTH)
    temporal, patch = int(video.temporal_patch_size), int(video.patch_size)
    patches = -(-len(indices) // temporal) * (height // patch) * (width // patch)
    assert (len(indices), patches) == transformers_frames_and_patches(video)


def test_video_settings_transformers_refuses_are_exit_4_naming_them(colqwen3_5, tmp_path):
    """``num_frames`` next to the default ``fps``: transformers' sample_frames refuses every video."""
    model = load_model(_with_video_settings(colqwen3_5, tmp_path / "ckpt", {"num_frames": 4}), LoadOptions())
    with pytest.raises(ModelError, match=r"processor_config\.json: video setting num_frames 4 .*mutually exclusive"):
        model.processor.video_plan(TOTAL_FRAMES, FPS, HEIGHT, WIDTH)


def test_unresized_video_frames_keep_their_size_or_are_refused(colqwen3_5, tmp_path):
    model = load_model(_with_video_settings(colqwen3_5, tmp_path / "ckpt", {"do_resize": False}), LoadOptions())
    assert model.processor.video_plan(TOTAL_FRAMES, FPS, 480, 640)[1] == (480, 640)  # whole 16-pixel merged patches
    with pytest.raises(ValueError, match=r"do_resize is false and its 641x480 frames are not whole 16-pixel patches"):
        model.processor.video_plan(TOTAL_FRAMES, FPS, 480, 641)  # the video's size: a bad row, not exit 4


@pytest.mark.parametrize("change", [{"num_frames": "8", "fps": None}, {"num_frames": 3.5, "fps": None}, {"fps": "2"}],
                         ids=["num-frames-text", "num-frames-fraction", "fps-text"])
def test_mistyped_video_settings_are_exit_4_naming_them(colqwen3_5, tmp_path, change):
    model = load_model(_with_video_settings(colqwen3_5, tmp_path / "ckpt", change), LoadOptions())
    with pytest.raises(ModelError, match=r"processor_config\.json: video setting (num_frames|fps) "):
        model.processor.video_plan(TOTAL_FRAMES, FPS, HEIGHT, WIDTH)


# -- processor settings against the vision config ------------------------------------------------------------


def _nested(section: str, **change):
    return lambda settings: settings[section].update(change)


def _top(**change):
    return lambda settings: settings.update(change)


def _drop(key: str):
    return lambda settings: settings.pop(key)


MISMATCHES = {  # id: (builder, file, edit, what the message names)
    "colqwen3_5-patch": (qwen_checkpoints.build_colqwen3_5, "processor_config.json", _nested("image_processor", patch_size=16),
                         r"processor_config\.json: patch_size 16 does not fit .*config\.json vision_config\.patch_size 8"),
    "colqwen3_5-temporal": (qwen_checkpoints.build_colqwen3_5, "processor_config.json", _nested("image_processor", temporal_patch_size=1),
                            r"temporal_patch_size 1 does not fit .*vision_config\.temporal_patch_size 2"),
    "tomoro-merge": (qwen3_vl_checkpoints.build_tomoro, "preprocessor_config.json", _top(merge_size=1),
                     r"preprocessor_config\.json: merge_size 1 does not fit .*config\.json vision_config\.spatial_merge_size 2"),
    "colqwen2-patch": (vision_checkpoints.build_colqwen2, "processor_config.json", _nested("image_processor", patch_size=7),
                       r"patch_size 7 does not fit .*vision_config\.patch_size 14"),
    "colpali-size": (vision_checkpoints.build_colpali, "processor_config.json", _nested("image_processor", size={"height": 64, "width": 64}),
                     r"processor_config\.json: size\.height 64 does not fit .*vision_config\.image_size 32"),
    "colpali-seq": (vision_checkpoints.build_colpali, "processor_config.json", _nested("image_processor", image_seq_length=64),
                    r"processor_config\.json: image_seq_length 64 does not fit .*= 16"),
    "colmodernvbert-tile": (vision_checkpoints.build_colmodernvbert, "processor_config.json",
                            _nested("image_processor", max_image_size={"longest_edge": 64}, size={"longest_edge": 128}),
                            r"max_image_size\.longest_edge 64 does not fit .*vision_config\.image_size 32"),
    "colidefics3-no-seq-len": (colpali_engine_checkpoints.build_colidefics3, "processor_config.json", _drop("image_seq_len"),
                               r"no processor file sets image_seq_len.*: image_seq_len 64 does not fit .*= 4"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_processor_settings_that_contradict_the_vision_config_are_exit_4(cli, tmp_path, case):
    build, file, edit, message = MISMATCHES[case]
    path = _variant(build(tmp_path / "built"), tmp_path / "ckpt", file, edit)
    pages = tmp_path / "pages"
    pages.mkdir()
    Image.fromarray(np.full((64, 96, 3), 90, dtype=np.uint8)).save(pages / "page.png")
    result = cli("encode", pages, "--model", path, "-o", tmp_path / "index", "--quiet")
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_a_video_processor_that_contradicts_the_vision_config_refuses_videos_only(colqwen3_5, tmp_path):
    """Images never reach the video processor (the reference encodes them); videos would fail in the forward."""
    model = load_model(_with_video_settings(colqwen3_5, tmp_path / "ckpt", {"merge_size": 1}), LoadOptions())
    assert model.processor.process_images([Image.new("RGB", (64, 48))])["image_grid_thw"].shape == (1, 3)
    message = r"processor_config\.json: merge_size 1 does not fit .*vision_config\.spatial_merge_size 2.* every video"
    with pytest.raises(ModelError, match=message):
        model.processor.video_plan(TOTAL_FRAMES, FPS, HEIGHT, WIDTH)


@pytest.mark.parametrize("vision_type", [None, "idefics3"], ids=["as-built", "tagged-idefics3"])
def test_an_idefics3_tile_of_another_size_with_its_tokens_still_encodes(cli, tmp_path, vision_type):
    """Idefics3's vision embeddings take any whole patch grid: a 16-pixel tile making 1 token runs in the
    reference, so it is not refused (SmolVLM / colSmol configs tag the vision config "idefics3")."""
    path = _variant(
        colpali_engine_checkpoints.build_colidefics3(tmp_path / "built"), tmp_path / "ckpt", "processor_config.json",
        lambda d: (d["image_processor"].update(max_image_size={"longest_edge": 16}, size={"longest_edge": 32}), d.update(image_seq_len=1)),
    )
    if vision_type is not None:
        config = json.loads((path / "config.json").read_text())
        config["vision_config"]["model_type"] = vision_type
        (path / "config.json").write_text(json.dumps(config))
    pages = tmp_path / "pages"
    pages.mkdir()
    Image.fromarray(np.full((64, 96, 3), 90, dtype=np.uint8)).save(pages / "page.png")
    result = cli("encode", pages, "--model", path, "-o", tmp_path / "index", "--quiet")
    assert result.exit_code == 0, result.output
