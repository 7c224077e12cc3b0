"""A tokenizer that can emit ids past the model's input embeddings is refused when the model loads (exit 4, naming
the tokenizer and the row count), whatever the family: the forward of a row holding such a token used to fail with a
traceback (IndexError, exit 1), ``--on-error skip`` or not. A tokenizer with fewer ids than rows is fine."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import read_index, write_jsonl

DOCS = [{"id": "ok", "text": "plain words"}, {"id": "z", "text": "a zebracorn here"}]


def _add_token(folder, token: str = "zebracorn", token_id: int = 300) -> None:
    """An added token in tokenizer.json, as a later fine-tune saves it (tokenizers numbers it after the vocabulary)."""
    file = folder / "tokenizer.json"
    data = json.loads(file.read_text())
    data["added_tokens"].append({"id": token_id, "content": token, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": False})
    file.write_text(json.dumps(data))


def _resize_embeddings(folder, name: str, rows: int) -> None:
    """The word embeddings (and config.json's vocab_size) cut or padded to ``rows``."""
    file = folder / "model.safetensors"
    tensors = load_file(str(file))
    table = tensors[name]
    padding = torch.zeros(max(0, rows - table.shape[0]), table.shape[1])
    tensors[name] = torch.cat([table[:rows], padding]).contiguous()
    save_file(tensors, str(file), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": rows}))


def _refused(result, *needles) -> None:
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_an_added_token_past_the_embeddings_is_refused_at_load(cli, checkpoint, tmp_path, on_error):
    model = checkpoint("stanford")  # 220 rows
    _add_token(model)
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    result = cli("encode", docs, "--model", model, "-o", tmp_path / "index", "--on-error", on_error)
    _refused(result, str(model / "tokenizer.json"), "'zebracorn' is id 220, past the 220 rows")
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_score_with_a_tokenizer_grown_past_the_embeddings_is_refused(cli, checkpoint, tmp_path):
    model = checkpoint("stanford")
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS[:1])
    assert cli("encode", docs, "--model", model, "-o", tmp_path / "index", "--quiet").exit_code == 0
    _add_token(model)
    _refused(cli("score", "--query", "a zebracorn", tmp_path / "index"), "past the 220 rows")


def test_pylate_markers_registered_without_resizing_the_embeddings(cli, checkpoint, tmp_path):
    """PyLate adds [Q] / [D] to the tokenizer; saved without ``resize_token_embeddings`` every row holds one."""
    model = checkpoint("pylate_bert")  # [Q] and [D] are ids 220 and 221
    _resize_embeddings(model, "embeddings.word_embeddings.weight", 220)
    result = cli("encode", write_jsonl(tmp_path / "docs.jsonl", DOCS[:1]), "--model", model, "-o", tmp_path / "index")
    _refused(result, "'[Q] ' is id 220, past the 220 rows", "2 token(s)")


def test_a_vision_adapter_tokenizer_past_the_embeddings_is_named(tmp_path):
    """A vision adapter's own tokenizer files win over its base's (as colpali-engine loads them): the check reads them."""
    from colpali_engine_checkpoints import ENGINE_BUILDERS, build_adapter

    from tokembed.errors import ModelError
    from tokembed.models.registry import load_model

    base = ENGINE_BUILDERS["ColQwen2"](tmp_path / "base")  # 300 rows
    adapter = build_adapter(copy.deepcopy(load_model(base).model), tmp_path / "lora", str(base))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (adapter / name).write_bytes((base / name).read_bytes())
    load_model(adapter, base=base)  # its own copy of the base's tokenizer: fine
    _add_token(adapter, token_id=400)
    with pytest.raises(ModelError, match=r"lora/tokenizer\.json: token 'zebracorn' is id 300, past the 300 rows"):
        load_model(adapter, base=base)


def test_the_text_side_of_a_vision_model_is_checked(tmp_path):
    from vision_checkpoints import VISION_BUILDERS

    from tokembed.errors import ModelError
    from tokembed.models.registry import load_model

    model = VISION_BUILDERS["colqwen2"](tmp_path / "colqwen2")  # 300 rows
    _add_token(model, token_id=400)
    with pytest.raises(ModelError, match=r"'zebracorn' is id 300, past the 300 rows"):
        load_model(model)


def test_more_rows_than_token_ids_is_fine(cli, checkpoint, tmp_path):
    """A padded embedding table (more rows than the tokenizer has ids) encodes as before."""
    model = checkpoint("stanford")
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    assert cli("encode", docs, "--model", model, "-o", tmp_path / "before", "--quiet").exit_code == 0
    _resize_embeddings(model, "bert.embeddings.word_embeddings.weight", 256)
    assert cli("encode", docs, "--model", model, "-o", tmp_path / "after", "--quiet").exit_code == 0
    before, after = read_index(tmp_path / "before"), read_index(tmp_path / "after")
    for key in before:
        assert (before[key][1] == after[key][1]).all()
        torch.testing.assert_close(torch.from_numpy(after[key][0]), torch.from_numpy(before[key][0]))
