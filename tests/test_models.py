"""The model registry: detection of every layout, completeness, hub resolution from the cache."""

from __future__ import annotations

import json

import pytest

from tokembed.errors import ModelNotFoundError, UnsupportedModelError
from tokembed.models import FAMILIES, describe_families, detect, model_fingerprint, resolve_model
from tokembed.models.registry import family_class

EXPECTED = {
    "stanford": "HF_ColBERT",
    "pylate_bert": "st-colbert",
    "pylate_modernbert": "st-colbert",
    "pylate_xlmr": "st-colbert",
    "pylate_lfm2": "st-colbert",
    "st_native": "st-colbert",
    "raw_encoder": "encoder",
    "raw_projection": "encoder",
    "raw_decoder": "causal-lm",
}
# Vision retrieval checkpoints (tests/vision_checkpoints.py); remote code is detected with the flag on.
VISION_EXPECTED = {
    "colpali": "ColPaliForRetrieval",
    "colqwen2": "ColQwen2ForRetrieval",
    "colqwen2_5": "ColQwen2ForRetrieval",
    "colmodernvbert": "ColModernVBertForRetrieval",
    "remote_code": "remote-code-retrieval",
}
# Families whose tiny checkpoints have their own builder module: layout -> (module, family key).
OTHER_EXPECTED = {"jina_colbert": ("jina_checkpoints", "jina-colbert"),
                  "colqwen2_engine": ("colpali_engine_checkpoints", "ColQwen2"),
                  "colqwen2_5_engine": ("colpali_engine_checkpoints", "ColQwen2_5"),
                  "colpali_engine": ("colpali_engine_checkpoints", "ColPali"),
                  "colidefics3": ("colpali_engine_checkpoints", "ColIdefics3"),
                  "peft_adapter": ("colpali_engine_checkpoints", "peft-lora"),
                  "colqwen3_5": ("qwen_checkpoints", "ColQwen3_5"),
                  "tomoro": ("qwen3_vl_checkpoints", "ColQwen3"),
                  "colqwen3_engine": ("qwen3_vl_checkpoints", "ColQwen3Engine"),
                  "ops": ("qwen3_vl_checkpoints", "OpsColQwen3Model"),
                  "nemotron": ("qwen3_vl_checkpoints", "Qwen3VLNemotronEmbedModel"),
                  "bge_m3": ("bge_m3_checkpoints", "bge-m3")}


@pytest.mark.parametrize("layout, key", sorted(EXPECTED.items()))
def test_detect_every_layout(checkpoint_store, layout, key):
    assert detect(checkpoint_store(layout)) == key


@pytest.mark.parametrize("layout, key", sorted(VISION_EXPECTED.items()))
def test_detect_every_vision_layout(tmp_path, layout, key):
    import vision_checkpoints

    path = vision_checkpoints.VISION_BUILDERS[layout](tmp_path / layout)
    assert detect(path, trust_remote_code=True) == key


@pytest.mark.parametrize("layout", sorted(OTHER_EXPECTED))
def test_detect_other_layouts(tmp_path, layout):
    import importlib

    module, key = OTHER_EXPECTED[layout]
    path = getattr(importlib.import_module(module), f"build_{layout}")(tmp_path / layout)
    assert detect(path) == key


def test_registry_is_complete():
    others = {key for _, key in OTHER_EXPECTED.values()}
    assert set(EXPECTED.values()) | set(VISION_EXPECTED.values()) | others == set(FAMILIES)
    for key in FAMILIES:
        cls = family_class(key)
        assert cls.key == key and cls.detected_by and cls.needs and callable(cls.load)
    assert [info.key for info in describe_families()] == list(FAMILIES)
    with pytest.raises(UnsupportedModelError, match="known: HF_ColBERT"):
        family_class("nope")


def test_unknown_layout_says_what_was_found(checkpoint_store):
    with pytest.raises(UnsupportedModelError) as error:
        detect(checkpoint_store("unknown_layout"))
    assert "tokembed-mystery" in str(error.value) and "config.json" in str(error.value)


def test_remote_code_is_refused_without_the_flag(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "my-own-arch", "auto_map": {"AutoModel": "modeling.MyModel"}})
    )
    with pytest.raises(UnsupportedModelError, match="--trust-remote-code is off"):
        detect(tmp_path)
    assert detect(tmp_path, trust_remote_code=True) == "encoder"


def test_hub_id_resolves_from_the_cache_offline(checkpoint_store, hub_cache):
    snapshot = hub_cache("someone/tiny-colbert", checkpoint_store("pylate_bert"), "a" * 40)
    resolved = resolve_model("someone/tiny-colbert")
    assert resolved.path == snapshot and resolved.revision == "a" * 40
    assert detect(resolved.path) == "st-colbert"
    with pytest.raises(ModelNotFoundError, match="not in the Hugging Face cache"):
        resolve_model("someone/other-model")


def test_fingerprint_changes_with_weights_and_config(checkpoint, tmp_path):
    path = checkpoint("pylate_bert")
    before = model_fingerprint(path)
    assert model_fingerprint(path) == before
    config = json.loads((path / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6
    (path / "config.json").write_text(json.dumps(config))
    after_config = model_fingerprint(path)
    assert after_config != before
    weights = path / "1_Dense" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_fingerprint(path) != after_config
