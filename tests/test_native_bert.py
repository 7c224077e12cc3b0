"""The native BERT path (``tokembed/models/bert.py`` + ``bert_tokenizer.py``): the same token ids as transformers'
tokenizer and the same vectors as transformers' ``BertModel``, on every BERT layout the tests build and on the real
all-MiniLM-L6-v2; the loading check still refuses what it does not load; a query needs no transformers import."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from tokembed.errors import ModelError
from tokembed.models.base import LoadOptions
from tokembed.models.bert import BertBackbone
from tokembed.models.registry import load_model

BERT_CHECKPOINTS = ["stanford", "pylate_bert", "raw_encoder", "st_native", "raw_projection"]

TRICKY = [
    "Paris is the capital of France.",
    "Héllo Wörld, ÀÉÎÕÜ naïve café",  # accents (stripped with lowercasing, as BERT uncased does)
    "北京 is a city 東京",  # CJK characters are split one by one
    "a [MASK] token, [SEP] and [unused0] inside the text",
    "tabs\tand\n\nnewlines   and   runs\u00a0of\u2003spaces",
    "control\x00chars\x07and\ufffdreplacement",
    "x" * 150 + " overlong word",  # longer than WordPiece's 100 characters: [UNK]
    "emoji 🙂 and math ∑ ∫",
    "",
    "What is late interaction? " * 40,  # truncated
]


def _both(path, monkeypatch, dtype="float32"):
    native = load_model(path, LoadOptions(dtype=dtype))
    monkeypatch.setenv("TOKEMBED_NATIVE", "0")
    reference = load_model(path, LoadOptions(dtype=dtype))
    monkeypatch.delenv("TOKEMBED_NATIVE")
    assert isinstance(native.backbone, BertBackbone), "the native path was not taken"
    assert not isinstance(reference.backbone, BertBackbone)
    return native, reference


def _ids(model, texts, max_length=64):
    return model.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]


def _assert_same(native, reference):
    assert _ids(native, TRICKY) == _ids(reference, TRICKY)
    for text in TRICKY[:6]:
        assert native.tokenizer.tokenize(text) == reference.tokenizer.tokenize(text)
    for name in ("pad_token_id", "unk_token_id", "mask_token_id", "model_max_length"):
        assert getattr(native.tokenizer, name) == getattr(reference.tokenizer, name), name
    assert native.tokenizer.get_vocab() == reference.tokenizer.get_vocab()
    ids = _ids(native, TRICKY)
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    got, want = native.embed(input_ids, mask), reference.embed(input_ids, mask)
    keep = mask.bool()
    assert (got[keep] - want[keep]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", BERT_CHECKPOINTS)
def test_native_bert_equals_transformers(name, checkpoint, monkeypatch):
    _assert_same(*_both(checkpoint(name), monkeypatch))


def test_native_bert_equals_transformers_on_minilm(minilm_path, monkeypatch):
    _assert_same(*_both(minilm_path, monkeypatch))


def test_native_bert_bfloat16_close_to_transformers(checkpoint, monkeypatch):
    native, reference = _both(checkpoint("raw_encoder"), monkeypatch, dtype="bfloat16")
    assert next(native.backbone.parameters()).dtype == torch.bfloat16
    ids = torch.tensor(_ids(native, TRICKY[:1]))
    got, want = native.embed(ids, torch.ones_like(ids)), reference.embed(ids, torch.ones_like(ids))
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min().item() >= 0.999


def test_prefix_markers_register_the_same_way(checkpoint, monkeypatch):
    """Stanford markers ([unused0]) are registered as special tokens through the native tokenizer too."""
    from tokembed.models.steps import register_prefix_tokens

    native, reference = _both(checkpoint("stanford"), monkeypatch)
    for model in (native, reference):
        register_prefix_tokens(model.tokenizer, ("[unused0] ", "[unused1] "))
    texts = ["[unused0] what is paris", "[unused1] paris is the capital"]
    assert _ids(native, texts) == _ids(reference, texts)


def test_native_loader_refuses_a_missing_tensor(checkpoint):
    path = checkpoint("raw_encoder")
    state = load_file(str(path / "model.safetensors"))
    del state["encoder.layer.0.attention.self.query.weight"]
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(ModelError, match="encoder.layer.0.attention.self.query.weight"):
        load_model(path, LoadOptions())


def test_native_loader_refuses_an_unused_tensor(checkpoint):
    path = checkpoint("raw_encoder")
    state = load_file(str(path / "model.safetensors"))
    state["encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(2)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(ModelError, match="rotary"):
        load_model(path, LoadOptions())


def _legacy_names(state: dict) -> dict:
    return {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in state.items()}


def test_legacy_layer_norm_names_load_as_transformers_loads_them(checkpoint, monkeypatch):
    """bert-base-uncased's own save names LayerNorm's parameters gamma / beta, which transformers renames; the
    native loader refused such a checkpoint (every LayerNorm "missing")."""
    path = checkpoint("raw_encoder")
    ids = torch.tensor(_ids(load_model(path, LoadOptions()), TRICKY[:1]))
    before = load_model(path, LoadOptions()).embed(ids, torch.ones_like(ids))
    state = load_file(str(path / "model.safetensors"))
    save_file(_legacy_names(state), str(path / "model.safetensors"))
    native, reference = _both(path, monkeypatch)
    _assert_same(native, reference)
    assert torch.equal(native.embed(ids, torch.ones_like(ids)), before)


@pytest.mark.parametrize("native", ["1", "0"])
def test_both_spellings_of_a_layer_norm_are_refused(checkpoint, monkeypatch, native):
    path = checkpoint("raw_encoder")
    state = load_file(str(path / "model.safetensors"))
    save_file({**state, "embeddings.LayerNorm.gamma": state["embeddings.LayerNorm.weight"] + 1}, str(path / "model.safetensors"))
    monkeypatch.setenv("TOKEMBED_NATIVE", native)
    with pytest.raises(ModelError, match="embeddings.LayerNorm.gamma and embeddings.LayerNorm.weight .* are both loaded as"):
        load_model(path, LoadOptions())


def test_unsupported_bert_variants_go_through_transformers(checkpoint):
    path = checkpoint("raw_encoder")
    config = json.loads((path / "config.json").read_text())
    config["position_embedding_type"] = "relative_key"
    (path / "config.json").write_text(json.dumps(config))
    model = load_model(path, LoadOptions())
    assert not isinstance(model.backbone, BertBackbone)


def _imported_heavy_modules(*args) -> str:
    program = (
        "import sys; from cli.main import run; code = run(sys.argv[1:]); "
        "print(sorted(m for m in ('transformers', 'torch._dynamo', 'pandas', 'sympy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", program, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_encode_and_query_import_neither_transformers_nor_torch_compiler(minilm_path, tmp_path):
    """What makes a cold ``encode`` of a few rows and ``score --query`` start in about ``import torch`` + 1 s
    (bench/startup.py times them)."""
    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(5)], "text": [f"document number {i}" for i in range(5)]}), corpus)
    assert _imported_heavy_modules("encode", corpus, "-o", tmp_path / "index", "-q") == "[]"
    assert _imported_heavy_modules("score", "--query", "document", tmp_path / "index") == "[]"


@pytest.mark.parametrize("values", [["ab", None, "é", ""], [None, None], [], ["x" * 1000] * 3])
def test_string_and_int_arrays_equal_pyarrow_own(values):
    from tokembed.index.arrays import int32_array, string_array

    strings = string_array(values)
    strings.validate(full=True)
    assert strings.equals(pa.array(values, pa.string()))
    numbers = [None if value is None else len(value) for value in values]
    assert int32_array(numbers).equals(pa.array(numbers, pa.int32()))


@pytest.mark.parametrize("value, native", [("off", False), (" FALSE ", False), ("no", False), ("0", False),
                                           ("on", True), ("1", True), ("", True)])
def test_tokembed_native_reads_the_usual_spellings(monkeypatch, value, native):
    """Only the exact string ``0`` turned the native backbone off: ``false``, ``off``, ``no`` kept it on, silently."""
    from tokembed.models.bert import native_wanted

    monkeypatch.setenv("TOKEMBED_NATIVE", value)
    assert native_wanted() is native


def test_an_unknown_tokembed_native_value_is_refused(monkeypatch):
    from tokembed.errors import UsageError
    from tokembed.models.bert import native_wanted

    monkeypatch.setenv("TOKEMBED_NATIVE", "banana")
    with pytest.raises(UsageError, match="TOKEMBED_NATIVE='banana'"):
        native_wanted()
