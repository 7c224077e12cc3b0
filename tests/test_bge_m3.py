"""BGE-M3's multi-vector output (family ``bge-m3``) against FlagEmbedding's formula, written out from its source.

FlagEmbedding 1.4.2 (``inference/embedder/encoder_only/m3.py`` ``M3Embedder`` and
``finetune/embedder/encoder_only/m3/modeling.py`` ``_colbert_embedding``): tokenize with truncation at
``query_max_length`` / ``passage_max_length`` (both 512), pad, ``colbert_linear(last_hidden_state[:, 1:])`` times
the mask, L2 per token, then each item's first ``n_tokens - 1`` vectors. Its package is not a dependency (it needs
``datasets``), so the reference below restates those lines on transformers' ``XLMRobertaModel``; FlagEmbedding
1.4.2's own ``M3Embedder`` (``encode_corpus`` / ``encode_queries`` with ``return_colbert_vecs``), run once on this
checkpoint, gave the same vectors (max |Δ| 1.2e-7), a text holding a literal ``<s>`` included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bge_m3_checkpoints import HIDDEN, build_bge_m3
from helpers import assert_score_equals_brute_force, manifest, read_index, write_jsonl

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "ColBERT stores one vector per token, then scores with MaxSim. " * 60,  # > 512 tokens
]


@pytest.fixture(scope="module")
def bge_m3_store(tmp_path_factory) -> Path:
    return build_bge_m3(tmp_path_factory.mktemp("bge_m3") / "model")


@pytest.fixture
def bge_m3(bge_m3_store, tmp_path) -> Path:
    return Path(shutil.copytree(bge_m3_store, tmp_path / "bge-m3"))


def flagembedding_colbert_vecs(path: Path, texts: list[str], max_length: int) -> list[tuple[np.ndarray, list[int]]]:
    """(colbert_vecs, input ids from position 1) per text, as M3Embedder.encode_single_device computes them."""
    from transformers import AutoTokenizer, XLMRobertaModel

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = XLMRobertaModel.from_pretrained(path).eval()
    colbert_linear = torch.nn.Linear(HIDDEN, HIDDEN)
    colbert_linear.load_state_dict(torch.load(path / "colbert_linear.pt", map_location="cpu", weights_only=True))
    inputs = tokenizer(texts, truncation=True, max_length=max_length)
    batch = tokenizer.pad(inputs, padding=True, return_tensors="pt")
    with torch.no_grad():
        last_hidden_state = model(**batch, return_dict=True).last_hidden_state
        colbert_vecs = colbert_linear(last_hidden_state[:, 1:]) * batch["attention_mask"][:, 1:][:, :, None].float()
        colbert_vecs = F.normalize(colbert_vecs, dim=-1)
    results = []
    for vecs, mask, ids in zip(colbert_vecs.numpy(), batch["attention_mask"].numpy(), inputs["input_ids"]):
        results.append((vecs[: mask.sum() - 1], ids[1:]))
    return results


def tokembed_rows(path: Path, texts: list[str], **flags) -> list[tuple[np.ndarray, np.ndarray]]:
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    return Embedder.load(str(path), EncodeFlags(store_dtype="float32", **flags)).embed(texts)


def assert_rows_equal(got, expected) -> None:
    assert len(got) == len(expected)
    for (vectors, ids), (reference, reference_ids) in zip(got, expected):
        assert ids.tolist() == list(reference_ids)
        assert vectors.shape == reference.shape
        np.testing.assert_allclose(vectors, reference, atol=1e-5)


def test_detection_picks_the_family_not_pylate_nor_a_plain_encoder(bge_m3):
    from tokembed.models import describe_families, detect

    assert detect(bge_m3) == "bge-m3"
    info = {family.key: family for family in describe_families()}["bge-m3"]
    assert info.modes == "colbert, raw" and "colbert_linear.pt" in info.detected_by and "FlagEmbedding" in info.reference
    config = json.loads((bge_m3 / "config.json").read_text())
    (bge_m3 / "config.json").write_text(json.dumps({**config, "architectures": ["BgeM3EmbeddingModel"]}))
    assert detect(bge_m3) == "bge-m3"  # vLLM's override name


@pytest.mark.parametrize("kind", ["document", "query"])
def test_vectors_and_token_ids_match_flagembedding(bge_m3, kind):
    """Documents and queries alike: cut at 512 tokens (the long text), <s> left out, </s> kept, L2(colbert_linear)."""
    rows = tokembed_rows(bge_m3, TEXTS, kind=kind)
    assert len(rows[3][1]) == 511  # 512 tokens, the first left out
    assert_rows_equal(rows, flagembedding_colbert_vecs(bge_m3, TEXTS, max_length=512))


def test_raw_mode_is_vllm_token_embed_at_the_model_limit(bge_m3):
    """vLLM's BgeM3EmbeddingModel token_embed: the same vectors, cut at the model's limit (8192) instead of 512."""
    rows = tokembed_rows(bge_m3, TEXTS, mode="raw")
    assert len(rows[3][1]) > 511
    assert_rows_equal(rows, flagembedding_colbert_vecs(bge_m3, TEXTS, max_length=8192))


@pytest.mark.parametrize("damage", ["missing", "shape", "extra tensor", "garbled"])
def test_a_missing_or_ill_shaped_colbert_head_is_exit_4_naming_it(cli, bge_m3, tmp_path, damage):
    head = bge_m3 / "colbert_linear.pt"
    if damage == "missing":
        head.unlink()  # sparse_linear.pt still says bge-m3
    elif damage == "shape":
        torch.save(torch.nn.Linear(HIDDEN, 16).state_dict(), head)
    elif damage == "extra tensor":
        torch.save({**torch.load(head, weights_only=True), "scale": torch.ones(1)}, head)
    else:
        head.write_bytes(head.read_bytes()[:100])
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "hello"}])
    result = cli("encode", corpus, "--model", bge_m3, "-o", tmp_path / "idx")
    assert result.exit_code == 4, result.output
    assert "colbert_linear.pt" in result.stderr
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_heads_beside_another_architecture_are_refused(bge_m3):
    from tokembed.errors import UnsupportedModelError
    from tokembed.models import detect

    config = json.loads((bge_m3 / "config.json").read_text())
    (bge_m3 / "config.json").write_text(json.dumps({**config, "architectures": ["XLMRobertaForMaskedLM"]}))
    with pytest.raises(UnsupportedModelError, match="colbert_linear.pt"):
        detect(bge_m3)


def test_encode_and_score_end_to_end(cli, bge_m3, tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": text} for i, text in enumerate(TEXTS)])
    result = cli("encode", corpus, "--model", bge_m3, "-o", tmp_path / "idx", "--store-dtype", "float32")
    assert result.exit_code == 0, result.output
    data = manifest(tmp_path / "idx")
    assert data["model"]["family"] == "bge-m3" and data["settings"]["mode"] == "colbert" and data["dim"] == HIDDEN
    assert data["settings"]["max_length"] == 512 and data["settings"]["prefix"] == ""
    stored = read_index(tmp_path / "idx")
    assert_rows_equal([stored[f"d{i}"] for i in range(len(TEXTS))], flagembedding_colbert_vecs(bge_m3, TEXTS, 512))
    assert_score_equals_brute_force(cli, tmp_path / "idx", ["capital of France", "fox"])


def test_an_index_of_the_previous_release_is_re_encoded_and_not_scored(cli, bge_m3, tmp_path, monkeypatch):
    """Earlier releases read a bge-m3 folder as a plain encoder (raw hidden states, <s> included) and left
    colbert_linear.pt out of the fingerprint. Simulated here as they ran: an incremental run re-encodes that index
    whole, in raw mode too, and score refuses it (its queries would be colbert vectors, its documents hidden states)."""
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": text} for i, text in enumerate(TEXTS[:3])])
    index = tmp_path / "idx"
    with monkeypatch.context() as previous_release:
        previous_release.setattr("tokembed.models.registry.detect", lambda path, trust_remote_code=False: "encoder")
        previous_release.setattr("tokembed.models.resolve.HEAD_WEIGHT_FILES", ())
        assert cli("encode", corpus, "--model", bge_m3, "-o", index, "--mode", "raw", "--store-dtype", "float32").exit_code == 0
    old = manifest(index)
    assert old["model"]["family"] == "encoder"

    scored = cli("score", index, "--query", "fox")
    assert scored.exit_code == 5 and "'encoder'" in scored.stderr and "'bge-m3'" in scored.stderr, scored.output

    rerun = cli("encode", corpus, "--model", bge_m3, "-o", index, "--mode", "raw", "--store-dtype", "float32")
    assert rerun.exit_code == 0, rerun.output
    assert "re-encoding everything" in rerun.stderr
    new = manifest(index)
    assert new["model"]["family"] == "bge-m3" and new["settings_fingerprint"] != old["settings_fingerprint"]
    assert new["stats"]["unchanged"] == 0 and new["stats"]["updated"] == 3
    stored = read_index(index)
    assert_rows_equal([stored[f"d{i}"] for i in range(3)], flagembedding_colbert_vecs(bge_m3, TEXTS[:3], 8192))

    default = cli("encode", corpus, "--model", bge_m3, "-o", index)  # raw -> colbert: a settings change
    assert default.exit_code == 0 and "re-encoding everything" in default.stderr, default.output
    assert manifest(index)["settings"]["mode"] == "colbert" and manifest(index)["stats"]["unchanged"] == 0


def test_the_head_is_part_of_the_fingerprint(bge_m3):
    from tokembed.models import model_fingerprint
    from tokembed.models.resolve import weights_sha256

    before = model_fingerprint(bge_m3), weights_sha256(bge_m3)
    state = torch.load(bge_m3 / "colbert_linear.pt", weights_only=True)
    torch.save({"weight": state["weight"] * 2, "bias": state["bias"]}, bge_m3 / "colbert_linear.pt")
    after = model_fingerprint(bge_m3), weights_sha256(bge_m3)
    assert before[0] != after[0] and before[1] != after[1]
