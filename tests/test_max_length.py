"""Flags are capped only by what the model can do: an explicit ``--max-length`` is honoured up to the position
limit (past ``max_seq_length`` and the tokenizer's limit) and refused past it; never a silent cut."""

from __future__ import annotations

import json

import pytest

from helpers import read_index, write_parquet
from tokembed.embedder import Embedder
from tokembed.errors import UsageError
from tokembed.models import describe_families
from tokembed.models.base import position_limit
from tokembed.settings import EncodeFlags

LONG = " ".join(["retrieval"] + [f"word{i}" for i in range(900)])


@pytest.fixture
def long_corpus(tmp_path):
    return write_parquet(tmp_path / "long.parquet", [{"id": "long", "text": LONG}, {"id": "short", "text": "hi"}])


def test_raw_mode_honours_an_explicit_length_past_max_seq_length(cli, long_corpus, tmp_path, minilm_path):
    from transformers import AutoTokenizer

    config = json.loads((minilm_path / "sentence_bert_config.json").read_text())
    assert config["max_seq_length"] == 256  # the demo model's default, below its 512 positions
    out = tmp_path / "index"
    result = cli("encode", long_corpus, "-o", out, "--max-length", "512", "--store-dtype", "float32")
    assert result.exit_code == 0, result.output
    ids = read_index(out)["long"][1]
    expected = AutoTokenizer.from_pretrained(minilm_path)(LONG, truncation=True, max_length=512)["input_ids"]
    assert len(ids) == 512 and ids.tolist() == expected
    default = tmp_path / "default"
    assert cli("encode", long_corpus, "-o", default).exit_code == 0
    assert len(read_index(default)["long"][1]) == 256


def test_a_length_past_the_positions_is_a_usage_error(cli, long_corpus, tmp_path):
    out = tmp_path / "index"
    result = cli("encode", long_corpus, "-o", out, "--max-length", "513")
    assert result.exit_code == 2, result.output
    assert "513" in result.stderr and "512 positions" in result.stderr
    assert not (out / "manifest.json").exists()


def test_colbert_mode_refuses_a_length_past_the_positions_too(cli, checkpoint, long_corpus, tmp_path):
    model = checkpoint("stanford")
    limit = json.loads((model / "config.json").read_text())["max_position_embeddings"]
    ok = cli("encode", long_corpus, "-o", tmp_path / "ok", "--model", model, "--max-length", limit)
    assert ok.exit_code == 0, ok.output
    refused = cli("encode", long_corpus, "-o", tmp_path / "no", "--model", model, "--max-length", limit + 1)
    assert refused.exit_code == 2 and f"{limit} positions" in refused.stderr


def test_roberta_positions_start_after_the_padding_index():
    from transformers import XLMRobertaConfig

    assert position_limit(XLMRobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512


def test_every_family_names_its_reference_and_detection():
    for info in describe_families():
        assert info.reference.strip(), info.key
        assert info.detected_by.strip() and info.needs.strip(), info.key


@pytest.mark.parametrize("name", ["pylate_bert", "stanford"])
@pytest.mark.parametrize("kind", ["document", "query"])
def test_a_length_that_cuts_the_colbert_marker_is_a_usage_error(cli, checkpoint, long_corpus, tmp_path, name, kind):
    """``--max-length 2`` held [CLS] [SEP] only: the marker (and a query's expansion) cut, every row the same."""
    model = checkpoint(name)
    refused = cli("encode", long_corpus, "-o", tmp_path / "no", "--model", model, "--kind", kind, "--max-length", 2)
    assert refused.exit_code == 2, refused.output
    assert "--max-length 2" in refused.stderr and str(model) in refused.stderr and "--max-length 3 or more" in refused.stderr
    assert not (tmp_path / "no" / "manifest.json").exists()
    out = tmp_path / "least"
    ok = cli("encode", long_corpus, "-o", out, "--model", model, "--kind", kind, "--max-length", 3)
    assert ok.exit_code == 0, ok.output
    cls, sep = 5, 6  # the tiny BERT vocabulary's
    marker = Embedder.load(str(model), EncodeFlags(kind=kind, max_length=3)).encoder.tokenize(["x"])[0].ids[1]
    assert marker not in (cls, sep)
    assert [ids.tolist() for _, ids in read_index(out).values()] == [[cls, marker, sep]] * 2


def test_the_library_refuses_it_for_queries_and_raw_mode_keeps_two(checkpoint):
    model = str(checkpoint("pylate_bert"))
    with pytest.raises(UsageError, match="--max-length 2 cannot hold the 3 tokens every query"):
        Embedder.load(model, EncodeFlags(kind="query", max_length=2))
    raw = Embedder.load(model, EncodeFlags(mode="raw", max_length=2, store_dtype="float32"))
    assert raw.embed(["a long text"])[0][1].tolist() == [5, 6]  # no marker to cut: [CLS] [SEP], as before


def test_a_sentencepiece_prompt_s_last_space_is_not_counted_as_a_token_of_its_own(checkpoint):
    """Alone, ``passage: `` ends in a lone "▁" that every real input joins to its first word ("▁hello"): counting it
    refused a --max-length that holds <s> [D] passage: </s> whole (and cron runs that worked before the check)."""
    model = checkpoint("pylate_xlmr")
    config = model / "config_sentence_transformers.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": {"query": "query: ", "document": "passage: "}}))
    encoder = Embedder.load(str(model), EncodeFlags(kind="document")).encoder
    tokenizer = encoder.model.tokenizer
    prefix_alone = tokenizer(encoder.settings.prefix)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(prefix_alone[-2:]) == ["▁", "</s>"]  # the case tested
    least = encoder.least_length
    assert least == len(prefix_alone) - 1
    kept = Embedder.load(str(model), EncodeFlags(kind="document", max_length=least)).encoder.tokenize(["hello world"])[0]
    assert kept.ids.tolist() == prefix_alone[:-2] + prefix_alone[-1:]  # the whole prefix, no token of the text
    with pytest.raises(UsageError, match=f"--max-length {least - 1} cannot hold the {least} tokens"):
        Embedder.load(str(model), EncodeFlags(kind="document", max_length=least - 1))
