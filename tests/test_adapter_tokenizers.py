"""Tokenizer files shipped in a PEFT adapter over a text base: tokembed reads a text adapter with its base's tokenizer,
so the base's own tokenizer saved beside the adapter (peft's save with the tokenizer) encodes as without it, and
another tokenizer is refused naming the adapter's file (it was ignored, exit 0: ids other than a reference loading
``AutoTokenizer`` from the adapter folder gets)."""

from __future__ import annotations

import copy

from colpali_engine_checkpoints import build_adapter
from helpers import read_index, write_jsonl

DOCS = [{"id": "a", "text": "mars is the red planet"}, {"id": "b", "text": "a zebracorn here"}]


def _text_adapter(base, folder):
    from tokembed.models.registry import load_model

    return build_adapter(copy.deepcopy(load_model(base).backbone), folder, str(base), seed=1,
                         target_modules=r".*attention\.(self\.(query|value)|output\.dense)$")


def _base_tokenizer(base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base))


def test_the_base_tokenizer_saved_beside_a_text_adapter_encodes_as_without_it(cli, checkpoint, tmp_path):
    base = checkpoint("pylate_bert")
    adapter = _text_adapter(base, tmp_path / "lora")
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    assert cli("encode", docs, "--model", adapter, "-o", tmp_path / "without", "--quiet").exit_code == 0
    _base_tokenizer(base).save_pretrained(str(adapter))  # a re-save: its tokenizer_config.json is not the base's bytes
    assert (adapter / "tokenizer_config.json").read_bytes() != (base / "tokenizer_config.json").read_bytes()
    assert cli("encode", docs, "--model", adapter, "-o", tmp_path / "with", "--quiet").exit_code == 0
    without, with_files = read_index(tmp_path / "without"), read_index(tmp_path / "with")
    for key in without:
        assert (without[key][0] == with_files[key][0]).all() and (without[key][1] == with_files[key][1]).all()


def test_another_tokenizer_in_a_text_adapter_is_refused(cli, checkpoint, tmp_path):
    from transformers import AutoTokenizer

    base = checkpoint("pylate_bert")
    adapter = _text_adapter(base, tmp_path / "lora")
    tokenizer = _base_tokenizer(base)
    tokenizer.add_tokens(["zebracorn"])
    tokenizer.save_pretrained(str(adapter))
    text = DOCS[1]["text"]  # the reference's ids (the adapter folder's tokenizer) are not the base's
    assert AutoTokenizer.from_pretrained(str(adapter))(text).input_ids != _base_tokenizer(base)(text).input_ids
    result = cli("encode", write_jsonl(tmp_path / "docs.jsonl", DOCS), "--model", adapter, "-o", tmp_path / "index")
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    assert str(adapter / "tokenizer.json") in result.stderr, result.stderr
    assert "tokembed reads a text adapter with its base's tokenizer" in result.stderr
    assert "save the adapter without tokenizer files" in result.stderr
    assert not (tmp_path / "index" / "manifest.json").exists()
