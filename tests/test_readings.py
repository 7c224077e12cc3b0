"""An upgrade never carries vectors of an earlier release's reading of the same files.

Where this release reads a checkpoint's processor files otherwise than the previous one did (the nested
``processor_config.json`` settings before the legacy files, an adapter's processor files, Tomoro's empty prompts,
ColQwen3.5's video sampling settings), the encoding settings name that reading (``EncodeSettings.reading``), so
the first cron run after the upgrade encodes the index again, as a rebuild would. Checkpoints the change does not
touch keep their settings' fingerprint: their indexes stay current.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

import qwen_checkpoints
from tokembed.models import readings
from tokembed.models.readings import processor_reading, weights_reading


def _stale_legacy_file(folder):
    nested = json.loads((folder / "processor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps(dict(nested["image_processor"], image_mean=[0.1, 0.2, 0.3])))


def test_only_the_checkpoints_read_otherwise_are_marked(tmp_path):
    model = qwen_checkpoints.build_colqwen3_5(tmp_path / "colqwen3_5")
    assert processor_reading("ColQwen3_5", model) == ()
    stale = shutil.copytree(model, tmp_path / "stale")
    _stale_legacy_file(stale)
    assert processor_reading("ColQwen3_5", stale) == ("processor_config.json's nested settings first",)
    assert processor_reading("ColQwen2", stale) == ()  # transformers' own processor always read it so
    nested = json.loads((model / "processor_config.json").read_text())
    same = shutil.copytree(model, tmp_path / "same")
    (same / "preprocessor_config.json").write_text(json.dumps(nested["image_processor"]))
    assert processor_reading("ColQwen3_5", same) == ()  # both files say the same: nothing read otherwise
    video = shutil.copytree(model, tmp_path / "video")
    nested["video_processor"]["do_sample_frames"] = False
    (video / "processor_config.json").write_text(json.dumps(nested))
    assert processor_reading("ColQwen3_5", video) == ("video sampling and size settings",)
    tomoro = tmp_path / "tomoro"
    tomoro.mkdir()
    (tomoro / "processor_config.json").write_text(json.dumps({"visual_prompt_suffix": ""}))
    assert processor_reading("ColQwen3", tomoro) == ("empty saved prompts kept",)


def test_an_index_of_a_checkpoint_read_otherwise_is_encoded_again(cli, tmp_path, monkeypatch):
    model = qwen_checkpoints.build_colqwen3_5(tmp_path / "colqwen3_5")
    _stale_legacy_file(model)
    pages = tmp_path / "pages"
    pages.mkdir()
    rng = np.random.default_rng(0)
    for number in range(2):
        Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)).save(pages / f"p{number}.png")
    index = tmp_path / "index"
    encode = ("encode", pages, "--model", model, "-o", index, "--log-format", "json")
    with monkeypatch.context() as patch:  # the settings an earlier release recorded: no reading named
        patch.setattr(readings, "readings_of", lambda *args, **kwargs: ())
        assert cli(*encode).exit_code == 0
    upgraded = cli(*encode)
    assert upgraded.exit_code == 0, upgraded.output
    assert "re-encoding everything" in upgraded.stderr
    assert json.loads(upgraded.stdout.strip().splitlines()[-1])["unchanged"] == 0
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["settings"]["reading"] == ["processor_config.json's nested settings first"]
    again = json.loads(cli(*encode).stdout.strip().splitlines()[-1])
    assert (again["updated"], again["unchanged"]) == (0, 2)


def test_a_folder_whose_weights_an_earlier_release_chose_otherwise_is_marked(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"")
    assert weights_reading(folder) == ()
    (folder / "other.safetensors").write_bytes(b"")  # earlier releases read this one, transformers the .bin
    assert weights_reading(folder) == ("weight files by the reference's names",)
    (folder / "model.safetensors").write_bytes(b"")  # both read model.safetensors
    assert weights_reading(folder) == ()


def test_an_adapter_overlay_is_marked_only_where_the_processor_reads_other_files(tmp_path):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    for folder in (base, adapter):
        folder.mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
            (folder / name).write_text("{}")
    (base / "chat_template.json").write_text("{}")  # colpali-engine's processors use none
    (base / "tokenizer.model").write_bytes(b"")  # the adapter's tokenizer.json is what the fast tokenizer reads
    assert processor_reading("ColQwen2", base, adapter) == ()
    (base / "special_tokens_map.json").write_text("{}")  # earlier overlaid from the base, now not: read otherwise
    assert processor_reading("ColQwen2", base, adapter) == ("an adapter's processor files by group",)


def test_a_stray_later_copy_of_a_reference_tensor_is_marked(tmp_path):
    """Earlier releases read every safetensors file in name order, a later file's tensor over an earlier's."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"linear.weight": torch.ones(2, 2)}, str(folder / "model.safetensors"))
    save_file({"linear.weight": torch.zeros(2, 2)}, str(folder / "a_copy.safetensors"))  # read before: overwritten
    save_file({"other.weight": torch.zeros(2, 2)}, str(folder / "z_other.safetensors"))  # no tensor of the reference's
    assert weights_reading(folder) == ()
    save_file({"linear.weight": torch.zeros(2, 2)}, str(folder / "z_copy.safetensors"))  # its copy won
    assert weights_reading(folder) == ("weight files by the reference's names",)


def test_an_index_whose_weights_an_earlier_release_took_from_a_stray_copy_is_encoded_again(cli, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from checkpoints import build_stanford

    model = build_stanford(tmp_path / "stanford")
    linear = load_file(str(model / "model.safetensors"))["linear.weight"]
    save_file({"linear.weight": linear * 2}, str(model / "zz_copy.safetensors"))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("hello world of retrieval\n")
    index = tmp_path / "index"
    encode = ("encode", docs, "--model", model, "-o", index, "--log-format", "json")
    with monkeypatch.context() as patch:  # the settings an earlier release recorded: no reading named
        patch.setattr(readings, "_stray_copy_read", lambda folder: False)
        assert cli(*encode).exit_code == 0
    upgraded = cli(*encode)
    assert upgraded.exit_code == 0, upgraded.output
    assert json.loads(upgraded.stdout.strip().splitlines()[-1])["updated"] == 1
