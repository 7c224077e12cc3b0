"""An ``added_tokens.json`` beside a ``tokenizer.json`` (``tokembed/models/added_tokens_file.py``): transformers'
AutoTokenizer reads it, so one that adds a token changes the fingerprint (cron re-encodes) and tokembed's own BERT
tokenizer steps aside; one as ``save_pretrained`` wrote it keeps the fingerprint an earlier release computed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import manifest, write_manifest
from tokembed.models.added_tokens_file import added_tokens_disagree
from tokembed.models.bert_tokenizer import is_native_bert_tokenizer
from tokembed.models.resolve import model_fingerprint

TEXTS = ["mars planetzz is red", "venus is hot"]


def _spare_rows(model, count: int = 8) -> int:
    """Grow the word embeddings by ``count`` rows (a vocabulary padded past the tokenizer, as ModernBERT's 50368 is)
    and return the first spare id."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(model / "model.safetensors")
    [name] = [name for name in tensors if name.endswith(("word_embeddings.weight", "tok_embeddings.weight"))]
    first = tensors[name].shape[0]
    extra = torch.randn(count, tensors[name].shape[1], generator=torch.Generator().manual_seed(0))
    tensors[name] = torch.cat([tensors[name], extra.to(tensors[name].dtype)])
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((model / "config.json").read_text())
    config["vocab_size"] = first + count
    (model / "config.json").write_text(json.dumps(config))
    return first


def _tokenizer_json_added(model) -> dict:
    return {token["content"]: token["id"] for token in json.loads((model / "tokenizer.json").read_text())["added_tokens"]}


def _token_ids(index) -> dict:
    import pyarrow as pa

    return {row["id"]: row["token_ids"] for shard in manifest(index)["shards"]
            for row in pa.ipc.open_file(index / shard["file"]).read_all().select(["id", "token_ids"]).to_pylist()}


@pytest.mark.parametrize("added, disagree", [
    ({"[Q] ": 220, "[D] ": 221}, False),  # as save_pretrained wrote it: the ids at or past the base vocabulary
    ({}, False),
    ({"planetzz": 222}, True),
    ({"a": 50}, True),  # in the vocabulary but no added token: then matched inside words too
    ({"[D] ": 230}, True),
    ([], True),
])
def test_an_added_tokens_json_disagrees_where_it_names_what_tokenizer_json_does_not_add(checkpoint, added, disagree):
    model = checkpoint("pylate_bert")
    assert _tokenizer_json_added(model)["[D] "] == 221
    (model / "added_tokens.json").write_text(json.dumps(added))
    assert added_tokens_disagree(model) is disagree
    assert is_native_bert_tokenizer(model) is not disagree


def test_a_commit_that_adds_a_token_in_added_tokens_json_only_re_encodes(checkpoint, tmp_path, cli):
    """The hub commit changed added_tokens.json alone: the fingerprint did not hash it beside tokenizer.json, so the
    cron run kept every row's old vectors while queries were tokenized with the new token."""
    model = checkpoint("pylate_modernbert")
    spare = _spare_rows(model)
    docs, index, fresh = tmp_path / "docs.jsonl", tmp_path / "index", tmp_path / "fresh"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": text}) + "\n" for i, text in enumerate(TEXTS)))
    assert cli("encode", docs, "--model", model, "-o", index, "--quiet").exit_code == 0
    before = manifest(index)["model"]["fingerprint"]
    (model / "added_tokens.json").write_text(json.dumps({"planetzz": spare}))
    assert cli("encode", docs, "--model", model, "-o", index, "--quiet").exit_code == 0
    assert manifest(index)["model"]["fingerprint"] != before and manifest(index)["stats"]["updated"] == 2
    assert cli("encode", docs, "--model", model, "-o", fresh, "--quiet").exit_code == 0
    assert _token_ids(index) == _token_ids(fresh)
    assert spare in _token_ids(index)["d0"]


def test_an_added_tokens_json_as_save_pretrained_writes_it_keeps_the_fingerprint(checkpoint):
    model = checkpoint("pylate_bert")
    before = model_fingerprint(model)  # the rule before added_tokens.json counted beside a tokenizer.json
    vocab_size = len(json.loads((model / "tokenizer.json").read_text())["model"]["vocab"])
    added = {token: index for token, index in _tokenizer_json_added(model).items() if index >= vocab_size}
    assert added
    (model / "added_tokens.json").write_text(json.dumps(added, indent=2, sort_keys=True) + "\n")
    assert model_fingerprint(model) == before
    assert is_native_bert_tokenizer(model)


def test_an_added_tokens_json_that_adds_a_token_gives_the_reference_token_ids(checkpoint):
    from sentence_transformers import MultiVectorEncoder

    from tokembed.embedder import Embedder, EncodeFlags

    model = checkpoint("pylate_bert")
    spare = _spare_rows(model)
    (model / "added_tokens.json").write_text(json.dumps({"planetzz": spare}))
    reference = MultiVectorEncoder(str(model), device="cpu", local_files_only=True)
    features = reference.encode_document(TEXTS[:1], output_value=None)[0]
    want_ids = features["input_ids"][features["attention_mask"].bool()].tolist()
    want = reference.encode_document(TEXTS[:1])[0].float().numpy()
    [(vectors, ids)] = Embedder.load(str(model), EncodeFlags(kind="document", store_dtype="float32")).embed(
        TEXTS[:1], batch_tokens=64)
    assert spare in want_ids and ids.tolist() == want_ids
    np.testing.assert_allclose(vectors, want, atol=1e-5)


def test_an_index_of_the_release_that_did_not_hash_a_disagreeing_added_tokens_json_is_still_scored(checkpoint, tmp_path, cli):
    model = checkpoint("pylate_modernbert")
    (model / "added_tokens.json").write_text(json.dumps({"planetzz": _spare_rows(model)}))
    docs, index = tmp_path / "docs.jsonl", tmp_path / "index"
    docs.write_text(json.dumps({"id": "d0", "text": TEXTS[0]}) + "\n")
    assert cli("encode", docs, "--model", model, "-o", index, "--quiet").exit_code == 0
    written = manifest(index)
    earlier = model_fingerprint(model, slow_tokenizer=False)
    assert written["model"]["fingerprint"] != earlier
    written["model"]["fingerprint"] = earlier  # as the release before wrote it
    write_manifest(index, written, sealed=False)
    assert cli("score", index, "--query", "planetzz", "--model", model).exit_code == 0
    assert cli("encode", docs, "--model", model, "-o", index, "--quiet").exit_code == 0
    assert manifest(index)["model"]["fingerprint"] == model_fingerprint(model)
