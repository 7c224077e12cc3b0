"""Token ids past the model's input embeddings (exit 4, never a traceback: the forward of a row holding one failed
with an IndexError, exit 1, or a CUDA device assert). Refused at load where every row (or a predictable set) would
hold one: a base vocabulary larger than the rows, or a token tokembed writes itself (special tokens, ColBERT markers,
image placeholders). Any other added token past the rows is emitted only by a text holding it: such a checkpoint
encodes rows without one, and the first row holding one is exit 4 naming it (a model problem, not a bad row, so
``--on-error skip`` too). A tokenizer with fewer ids than rows is fine."""

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
def test_an_added_token_past_the_embeddings_is_refused_in_the_row_holding_it(cli, checkpoint, tmp_path, on_error):
    """Ordinary text never emits an added token: the checkpoint loads and encodes such rows as before (it was
    refused at load, with no way around it); a row holding the token is exit 4 naming it, the row and the file."""
    model = checkpoint("stanford")  # 220 rows
    plain = write_jsonl(tmp_path / "plain.jsonl", DOCS[:1])
    assert cli("encode", plain, "--model", model, "-o", tmp_path / "before", "--quiet").exit_code == 0
    _add_token(model)
    assert cli("encode", plain, "--model", model, "-o", tmp_path / "after", "--quiet", "--on-error", on_error).exit_code == 0
    before, after = read_index(tmp_path / "before"), read_index(tmp_path / "after")
    assert (before["ok"][1] == after["ok"][1]).all() and (before["ok"][0] == after["ok"][0]).all()
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    result = cli("encode", docs, "--model", model, "-o", tmp_path / "index", "--on-error", on_error)
    _refused(result, str(model / "tokenizer.json"), "'zebracorn' is id 220, past the 220 rows", "row 'z' holds it")
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_score_a_query_holding_a_token_past_the_embeddings(cli, checkpoint, tmp_path):
    model = checkpoint("stanford")
    _add_token(model)
    docs = write_jsonl(tmp_path / "docs.jsonl", DOCS[:1])
    assert cli("encode", docs, "--model", model, "-o", tmp_path / "index", "--quiet").exit_code == 0
    assert cli("score", "--query", "plain", tmp_path / "index").exit_code == 0
    result = cli("score", "--query", "plain", "--query", "a zebracorn", tmp_path / "index")
    _refused(result, "'zebracorn' is id 220, past the 220 rows", "query 'q2' holds it")


def test_a_special_token_past_the_embeddings_is_refused_at_load(cli, checkpoint, tmp_path):
    """A pad token its vocabulary lacks (transformers adds it past the rows): every batch holds it."""
    model = checkpoint("stanford")
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<newpad>"}))
    result = cli("encode", write_jsonl(tmp_path / "docs.jsonl", DOCS[:1]), "--model", model, "-o", tmp_path / "index")
    _refused(result, str(model / "tokenizer_config.json"), "pad_token '<newpad>' is token id 220, past the 220 rows")


def test_a_base_vocabulary_larger_than_the_embeddings_is_refused_at_load(cli, checkpoint, tmp_path):
    model = checkpoint("stanford")
    _resize_embeddings(model, "bert.embeddings.word_embeddings.weight", 200)
    result = cli("encode", write_jsonl(tmp_path / "docs.jsonl", DOCS[:1]), "--model", model, "-o", tmp_path / "index")
    _refused(result, str(model / "tokenizer.json"), "is id 200, past the 200 rows", "any text may hold one")


def test_pylate_markers_registered_without_resizing_the_embeddings(cli, checkpoint, tmp_path):
    """PyLate adds [Q] / [D] to the tokenizer; saved without ``resize_token_embeddings`` every row holds one."""
    model = checkpoint("pylate_bert")  # [Q] and [D] are ids 220 and 221
    _resize_embeddings(model, "embeddings.word_embeddings.weight", 220)
    result = cli("encode", write_jsonl(tmp_path / "docs.jsonl", DOCS[:1]), "--model", model, "-o", tmp_path / "index")
    _refused(result, "'[Q] ' is id 220, past the 220 rows", "2 token(s)")


def _query_encoder(model):
    from tokembed.settings import EncodeFlags, resolve

    return model.make_encoder(resolve(EncodeFlags(kind="query"), model.colbert, model.max_length))


def test_a_vision_adapter_tokenizer_past_the_embeddings_is_named(tmp_path):
    """A vision adapter's own tokenizer files win over its base's (as colpali-engine loads them): the check reads them."""
    from colpali_engine_checkpoints import ENGINE_BUILDERS, build_adapter

    from tokembed.errors import ModelError
    from tokembed.models.registry import load_model

    base = ENGINE_BUILDERS["ColQwen2"](tmp_path / "base")  # 300 rows
    adapter = build_adapter(copy.deepcopy(load_model(base).model), tmp_path / "lora", str(base))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (adapter / name).write_bytes((base / name).read_bytes())
    _add_token(adapter, token_id=400)
    encoder = _query_encoder(load_model(adapter, base=base))
    assert len(encoder.tokenize(["plain words"])[0].ids)
    with pytest.raises(ModelError, match=r"lora/tokenizer\.json: token 'zebracorn' is id 300, past the 300 rows"):
        encoder.tokenize(["plain words", "a zebracorn"])


def test_the_text_side_of_a_vision_model_is_checked(tmp_path):
    from vision_checkpoints import VISION_BUILDERS

    from tokembed.errors import ModelError
    from tokembed.models.registry import load_model

    model = VISION_BUILDERS["colqwen2"](tmp_path / "colqwen2")  # 300 rows
    _add_token(model, token_id=400)
    encoder = _query_encoder(load_model(model))
    assert len(encoder.tokenize(["plain words"])[0].ids)
    with pytest.raises(ModelError, match=r"'zebracorn' is id 300, past the 300 rows of the model's input embeddings: an "):
        encoder.tokenize(["a zebracorn"])


def test_an_image_placeholder_past_the_embeddings_is_refused_at_load(tmp_path):
    """Every image row holds the processor's placeholder: refused when the model loads."""
    from vision_checkpoints import VISION_BUILDERS

    from tokembed.errors import ModelError
    from tokembed.models.registry import load_model

    model = VISION_BUILDERS["colqwen2"](tmp_path / "colqwen2")  # 300 rows
    data = json.loads((model / "tokenizer.json").read_text())
    placeholder = next(token for token in data["added_tokens"] if token["content"] == "<|image_pad|>")
    vocab = data["model"]["vocab"]
    vocab["<|unused|>"] = vocab.pop("<|image_pad|>")  # the placeholder only as an added token, numbered after the rows
    placeholder["id"] = 300
    (model / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"image/video placeholder '<\|image_pad\|>' is id 300, past the 300 rows"):
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


def test_a_prefix_holding_a_token_past_the_embeddings_is_refused_at_load(cli, checkpoint, tmp_path):
    """Every row starts with the document prefix: one holding such a token past its first word (the marker check
    reads the whole prefix and its first word) is refused at load, naming the prefix, not the first row read."""
    model = checkpoint("stanford")  # 220 rows; a PyLate prefix must be one token (a longer one is refused earlier)
    _add_token(model, "zebracorn", 220)
    metadata = json.loads((model / "artifact.metadata").read_text())
    metadata["doc_token_id"] = "[unused1] passage zebracorn:"
    (model / "artifact.metadata").write_text(json.dumps(metadata))
    result = cli("encode", write_jsonl(tmp_path / "docs.jsonl", DOCS[:1]), "--model", model, "-o", tmp_path / "index")
    _refused(result, "'zebracorn' is id 220, past the 220 rows", "the document prefix '[unused1] passage zebracorn:")
    assert "row 'ok'" not in result.stderr
