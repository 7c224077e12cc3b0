"""Checkpoints that name an architecture from vLLM's token-embedding table, or markers a tokenizer lacks: picked by
their name, or refused naming it (exit 4), never encoded by another family's rules."""

from __future__ import annotations

import json

import pytest

from tokembed.errors import UnsupportedModelError
from tokembed.models import detect
from tokembed.models.registry import VLLM_ONLY_ARCHITECTURES

TEXTS = [{"id": "d0", "text": "Paris is the capital of France."}]


def _rename(folder, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("architecture", sorted(VLLM_ONLY_ARCHITECTURES))
def test_a_vllm_only_architecture_is_refused_by_its_name(checkpoint, architecture):
    model = checkpoint("raw_projection")  # an encoder with a linear head: what these names carry
    _rename(model, architectures=[architecture])
    with pytest.raises(UnsupportedModelError, match=architecture):
        detect(model)


def test_a_layout_its_family_does_not_read_names_the_family(cli, checkpoint, tmp_path):
    from helpers import write_jsonl

    import torch
    from safetensors.torch import load_file, save_file

    model = checkpoint("raw_encoder")
    _rename(model, architectures=["SomeoneElsesEmbedModel"])  # not a name tokembed knows: read as an encoder
    weights = model / "model.safetensors"
    save_file({**load_file(str(weights)), "head.weight": torch.ones(4, 4)}, str(weights), metadata={"format": "pt"})
    result = cli("encode", write_jsonl(tmp_path / "docs.jsonl", TEXTS), "-o", tmp_path / "index", "--model", model)
    assert result.exit_code == 4, result.output
    assert "were not used" in result.stderr
    assert "read it as family encoder (config.json architectures ['SomeoneElsesEmbedModel']" in result.stderr


def _stanford_with_markers(checkpoint, **markers):
    model = checkpoint("stanford")
    metadata = json.loads((model / "artifact.metadata").read_text())
    (model / "artifact.metadata").write_text(json.dumps({**metadata, **markers}))
    return model


@pytest.mark.parametrize("setting", ["query_token_id", "doc_token_id"])
@pytest.mark.parametrize("kind", ["query", "document"])
def test_a_stanford_marker_the_tokenizer_lacks_is_refused(cli, checkpoint, tmp_path, setting, kind):
    """colbert-ai writes <unk> there, PyLate an untrained token, sentence-transformers text pieces: tokembed used to
    write the pieces ("[", "q", "##ry", ...) as if that were the family's reference."""
    from helpers import write_jsonl

    model = _stanford_with_markers(checkpoint, **{setting: "[QryMarker]"})
    docs = write_jsonl(tmp_path / "docs.jsonl", TEXTS)
    result = cli("encode", docs, "-o", tmp_path / "index", "--model", model, "--kind", kind)
    assert result.exit_code == 4, result.output
    assert "'[QryMarker]'" in result.stderr and setting in result.stderr and "artifact.metadata" in result.stderr
    assert not (tmp_path / "index" / "manifest.json").exists()
    raw = cli("encode", docs, "-o", tmp_path / "raw", "--model", model, "--kind", kind, "--mode", "raw")
    assert raw.exit_code == 0, raw.output


def test_stanford_markers_of_the_vocabulary_are_used(cli, checkpoint, tmp_path):
    from helpers import read_index, write_jsonl

    model = _stanford_with_markers(checkpoint, query_token_id="[unused2]", doc_token_id="[unused0]")
    docs = write_jsonl(tmp_path / "docs.jsonl", TEXTS)
    assert cli("encode", docs, "-o", tmp_path / "index", "--model", model).exit_code == 0
    from transformers import AutoTokenizer

    marker = AutoTokenizer.from_pretrained(str(model)).convert_tokens_to_ids("[unused0]")
    _, token_ids = read_index(tmp_path / "index")["d0"]
    assert token_ids[1] == marker


@pytest.fixture(scope="module")
def jina_store(tmp_path_factory):
    from jina_checkpoints import build_jina_colbert

    return build_jina_colbert(tmp_path_factory.mktemp("jina") / "jina-colbert-v2")


def _jina_without_markers(folder) -> None:
    (folder / "artifact.metadata").unlink()  # colbert-ai's defaults: [unused0] / [unused1], not XLM-R tokens


def _jina_with_unknown_doc_marker(folder) -> None:
    metadata = json.loads((folder / "artifact.metadata").read_text())
    (folder / "artifact.metadata").write_text(json.dumps({**metadata, "doc_token_id": "[NotAToken]"}))


@pytest.mark.parametrize("breakage, marker", [
    (_jina_without_markers, "'[unused0]' (query_token_id, colbert-ai's default"),
    (_jina_with_unknown_doc_marker, "'[NotAToken]' (doc_token_id)"),
])
def test_a_jina_marker_the_tokenizer_lacks_is_refused(cli, jina_store, tmp_path, breakage, marker):
    """jina-colbert-v2 names [QueryMarker] / [DocumentMarker] in its artifact.metadata; a marker its XLM-R tokenizer
    lacks was encoded as text pieces ("▁ u n u s ed 1"), exit 0, where the Stanford family refuses it."""
    import shutil

    from helpers import write_jsonl

    model = shutil.copytree(jina_store, tmp_path / "jina")
    breakage(model)
    docs = write_jsonl(tmp_path / "docs.jsonl", TEXTS)
    result = cli("encode", docs, "-o", tmp_path / "index", "--model", model)
    assert result.exit_code == 4, result.output
    assert marker in result.stderr and "is not a token of this tokenizer" in result.stderr
    assert not (tmp_path / "index" / "manifest.json").exists()
    raw = cli("encode", docs, "-o", tmp_path / "raw", "--model", model, "--mode", "raw")
    assert raw.exit_code == 0, raw.output
