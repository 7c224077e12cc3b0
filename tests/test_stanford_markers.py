"""A Stanford ``HF_ColBERT`` marker reads as colbert-ai inserts it: the text tokenized alone, the marker's id after its
first token (``[CLS] marker + ids(text)[1:]``), on WordPiece (colbertv2.0: unchanged) and on a byte-level BPE
(ModernBERT, RoBERTa: ``"[unused0] " + text`` made ``Ġthe`` of ``the``). A ``query_maxlen`` past the model's
positions, on which colbert-ai fails every query, is refused at load."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import write_parquet
from text_tokenizers import _modernbert_tokenizer, _xlmr_tokenizer
from tokembed.embedder import Embedder
from tokembed.errors import ModelError
from tokembed.models.stanford import StanfordColBERT
from tokembed.models.steps import register_prefix_tokens
from tokembed.settings import ColbertConfig, EncodeFlags

TEXTS = ["the capital of france is paris", "hello world", "  leading spaces", ""]  # BPE: every one inserted


def build_stanford_bpe(path):
    """A Stanford checkpoint over a ModernBERT backbone whose tokenizer holds ``[unused0]`` / ``[unused1]``."""
    from tokenizers import AddedToken
    from transformers import ModernBertConfig, ModernBertModel

    path.mkdir(parents=True)
    tokenizer = _modernbert_tokenizer()
    tokenizer.add_tokens([AddedToken(marker, normalized=False) for marker in ("[unused0]", "[unused1]")])
    config = ModernBertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=512, layer_types=["full_attention", "full_attention"],
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, cls_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id, sep_token_id=tokenizer.sep_token_id)
    torch.manual_seed(3)
    model = ModernBertModel(config).eval()
    config.architectures = ["HF_ColBERT"]
    config.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    state = {f"model.{key}": value.detach().clone().contiguous() for key, value in model.state_dict().items()}
    state["linear.weight"] = (torch.randn(16, 32) * 0.1).contiguous()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    metadata = {"query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_maxlen": 16, "doc_maxlen": 40,
                "dim": 16, "mask_punctuation": True}
    (path / "artifact.metadata").write_text(json.dumps(metadata))
    return path


def inserted_ids(tokenizer, text: str, marker: str) -> list[int]:
    """colbert-ai's ``_insert_prefix_token``: the text tokenized alone, the marker's id at position 1."""
    ids = tokenizer(text)["input_ids"]
    return ids[:1] + [tokenizer.convert_tokens_to_ids(marker)] + ids[1:]


def encoded_ids(model_path, kind: str) -> list[list[int]]:
    embedder = Embedder.load(str(model_path), EncodeFlags(kind=kind, store_dtype="float32"))
    return [item.ids.tolist() for item in embedder.encoder.tokenize(TEXTS)]


@pytest.mark.parametrize("kind,marker", [("query", "[unused0]"), ("document", "[unused1]")])
def test_a_byte_level_bpe_marker_is_inserted_before_the_texts_own_tokens(tmp_path, kind, marker):
    from transformers import AutoTokenizer

    model = build_stanford_bpe(tmp_path / "stanford-bpe")
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    assert tokenizer.tokenize("the") != tokenizer.tokenize(" the")  # the space the marker used to put there
    for text, ids in zip(TEXTS, encoded_ids(model, kind)):
        expected = inserted_ids(tokenizer, text, marker)
        assert ids[: len(expected)] == expected, text
        assert set(ids[len(expected):]) <= {tokenizer.mask_token_id}  # a query's expansion


@pytest.mark.parametrize("kind,marker", [("query", "[unused0]"), ("document", "[unused1]")])
def test_a_wordpiece_marker_keeps_its_space_and_its_ids(checkpoint, kind, marker):
    from transformers import AutoTokenizer

    model = checkpoint("stanford")
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    for text, ids in zip(TEXTS, encoded_ids(model, kind)):
        expected = inserted_ids(tokenizer, text, marker)
        assert ids[: len(expected)] == expected, text
    embedder = Embedder.load(str(model), EncodeFlags(kind=kind))
    assert embedder.settings.prefix == marker + " "  # as before: the same index, content hashes and windows


def _markers_registered(tokenizer, markers=("[unused0]", "[unused1]")):
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(marker, normalized=False) for marker in markers])
    register_prefix_tokens(tokenizer, markers)
    return tokenizer


def test_the_marker_form_follows_the_tokenizer():
    colbert = ColbertConfig(query_prefix="[unused0] ", document_prefix="[unused1] ", register_prefix_tokens=True)
    bpe = StanfordColBERT.with_marker_forms(colbert, _markers_registered(_modernbert_tokenizer()))
    assert (bpe.query_prefix, bpe.document_prefix) == ("[unused0]", "[unused1]")
    # SentencePiece (XLM-R, jina-colbert-v2): "[unused0] " reads every word as inserted; it differs only on an empty
    # text or leading spaces alone, where the form is kept (it is in every such index's settings fingerprint)
    xlmr = StanfordColBERT.with_marker_forms(colbert, _markers_registered(_xlmr_tokenizer()))
    assert (xlmr.query_prefix, xlmr.document_prefix) == ("[unused0] ", "[unused1] ")


def test_a_sentencepiece_tokenizer_marking_only_the_first_word_keeps_the_space():
    """prepend_scheme "first": "hello" alone is "▁hello", after "[unused0]" alone "hello": only the form with the
    space reads the text's own words."""
    from tokenizers import pre_tokenizers

    from tokembed.models.steps import reads_as_inserted

    tokenizer = _xlmr_tokenizer()
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tokenizer = _markers_registered(tokenizer)
    assert reads_as_inserted(tokenizer, "[unused0] ") and not reads_as_inserted(tokenizer, "[unused0]")


def test_a_query_maxlen_past_the_positions_is_refused(checkpoint, cli, tmp_path):
    model = checkpoint("stanford")
    metadata = json.loads((model / "artifact.metadata").read_text())
    (model / "artifact.metadata").write_text(json.dumps(dict(metadata, query_maxlen=600)))
    with pytest.raises(ModelError, match=r"artifact\.metadata: query_maxlen 600 is more than this model's 512"):
        Embedder.load(str(model), EncodeFlags(kind="query"))
    corpus = write_parquet(tmp_path / "docs.parquet", [{"id": "a", "text": "hello"}])
    result = cli("encode", corpus, "-o", tmp_path / "index", "--model", model, "--kind", "query")
    assert result.exit_code == 4 and "query_maxlen 600" in result.stderr
    # documents and raw mode read no query_maxlen: they encode, as before (an index they built stays searchable raw)
    assert cli("encode", corpus, "-o", tmp_path / "docs", "--model", model).exit_code == 0
    assert cli("encode", corpus, "-o", tmp_path / "raw", "--model", model, "--mode", "raw").exit_code == 0
    assert cli("score", "--query", "hello", tmp_path / "raw").exit_code == 0
    result = cli("score", "--query", "hello", tmp_path / "docs")
    assert result.exit_code == 4 and "query_maxlen 600" in result.stderr
