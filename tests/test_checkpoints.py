"""Proves every tiny ColBERT checkpoint from ``tests/checkpoints.py`` loads in the reference library
(sentence-transformers ``MultiVectorEncoder``) with its saved weights, lengths, prefixes, expansion token
and skiplist intact (the raw layouts: ``test_raw_checkpoints.py``).

It also pins a from-scratch reference computation (backbone -> every Dense -> scoring mask ->
L2 normalise) against ``MultiVectorEncoder.encode_*``: that is the recipe tokembed must reproduce.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import pytest
import torch
from safetensors.torch import load_file

try:  # tests/conftest.py (and pytest's rootdir insertion) put this directory on sys.path
    import checkpoints as ckpts
except ImportError:
    from tests import checkpoints as ckpts

QUERIES = [
    "Which planet is known as the Red Planet?",
    "capital of france",
    "hi",
    "what is the capital city of france and which river runs through paris, berlin, germany and the old house?",
]
DOCUMENTS = [
    "Paris is the capital of France.",
    "Mars, known for its reddish appearance, is often called the Red Planet!",
    "Hello, world: late interaction (ColBERT) models; 東京 & 北京 - 42 tokens?",
    " ".join(["The old house by the river is a good house, and the dog reads a book."] * 4),
]

COLBERT_NAMES = list(ckpts.CHECKPOINT_SPECS)
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}
PYLATE_ROOT_FILES = {
    "config.json",
    "model.safetensors",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
} | TOKENIZER_FILES

EXPECTED_FILES = {
    "stanford": {"config.json", "model.safetensors", "artifact.metadata", "vocab.txt"} | TOKENIZER_FILES,
    "pylate_bert": PYLATE_ROOT_FILES | {"vocab.txt", "1_Dense/config.json", "1_Dense/model.safetensors"},
    "pylate_modernbert": PYLATE_ROOT_FILES
    | {"1_Dense/config.json", "1_Dense/model.safetensors", "2_Dense/config.json", "2_Dense/model.safetensors"},
    "pylate_xlmr": PYLATE_ROOT_FILES | {"1_Dense/config.json", "1_Dense/model.safetensors"},
    "pylate_lfm2": PYLATE_ROOT_FILES | {"1_Dense/config.json", "1_Dense/model.safetensors"},
    "st_native": PYLATE_ROOT_FILES
    | {
        "1_Dense/config.json",
        "1_Dense/model.safetensors",
        "2_MultiVectorMask/config.json",
        "3_Normalize/config.json",
    },
    "raw_encoder": {"config.json", "model.safetensors", "vocab.txt"} | TOKENIZER_FILES,
    "raw_decoder": {"config.json", "generation_config.json", "model.safetensors"} | TOKENIZER_FILES,
    "raw_projection": PYLATE_ROOT_FILES
    | {"1_Pooling/config.json", "2_Dense/config.json", "2_Dense/model.safetensors"},
    "unknown_layout": {"config.json"},
}

ACTIVATIONS = {"identity": lambda x: x, "tanh": torch.tanh}


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def hf_offline():
    """Everything here is local: make any accidental Hub access fail fast instead of hanging."""
    patcher = pytest.MonkeyPatch()
    patcher.setenv("HF_HUB_OFFLINE", "1")
    patcher.setenv("TRANSFORMERS_OFFLINE", "1")
    yield
    patcher.undo()


@pytest.fixture(scope="module")
def built(hf_offline, tmp_path_factory):
    """Lazily build each checkpoint once per module into a fresh temporary directory."""
    cache: dict[str, pathlib.Path] = {}

    def get(name: str) -> pathlib.Path:
        if name not in cache:
            target = tmp_path_factory.mktemp(name) / "ckpt"
            result = ckpts.BUILDERS[name](target)
            assert result == target
            cache[name] = result
        return cache[name]

    return get


@pytest.fixture(scope="module")
def loaded(built):
    """Lazily load each ColBERT checkpoint once per module with MultiVectorEncoder."""
    from sentence_transformers import MultiVectorEncoder

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = MultiVectorEncoder(str(built(name)), device="cpu", local_files_only=True)
        return cache[name]

    return get


def _relative_files(path: pathlib.Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}


def _skip_ids(tokenizer, words: list[str]) -> list[int]:
    ids = []
    for word in words:
        token_id = tokenizer.convert_tokens_to_ids(word)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            ids.append(token_id)
    return ids


def _dense_files(path: pathlib.Path, name: str, n: int) -> list[dict[str, torch.Tensor]]:
    if name == "stanford":
        return [{"linear.weight": load_file(path / "model.safetensors")["linear.weight"]}]
    return [load_file(path / f"{i}_Dense" / "model.safetensors") for i in range(1, n + 1)]


def _reference_encode(model, path: pathlib.Path, name: str, texts: list[str], task: str) -> list[torch.Tensor]:
    """Backbone -> each Dense (weights read straight from disk) -> scoring mask -> L2 normalise,
    computed without going through the sentence-transformers module chain."""
    spec = ckpts.CHECKPOINT_SPECS[name]
    transformer = model[0]
    prompt = model.prompts[task]
    out = []
    for text in texts:
        features = transformer.preprocess([prompt + text], task=task)
        inputs = {"input_ids": features["input_ids"], "attention_mask": features["attention_mask"]}
        if "token_type_ids" in features:
            inputs["token_type_ids"] = features["token_type_ids"]
        with torch.no_grad():
            hidden = transformer.auto_model(**inputs).last_hidden_state[0]
            for dense_spec, weights in zip(spec["dense"], _dense_files(path, name, len(spec["dense"]))):
                hidden = hidden @ weights["linear.weight"].T
                if dense_spec["bias"]:
                    hidden = hidden + weights["linear.bias"]
                hidden = ACTIVATIONS[dense_spec["activation"]](hidden)
        ids = features["input_ids"][0]
        if task == "query":
            keep = torch.ones_like(ids, dtype=torch.bool)  # real tokens + every expansion position
        else:
            skip = torch.tensor(_skip_ids(transformer.tokenizer, spec["skiplist_words"]), dtype=torch.long)
            keep = features["attention_mask"][0].bool() & ~torch.isin(ids, skip)
        out.append(torch.nn.functional.normalize(hidden[keep], p=2, dim=-1))
    return out


# --------------------------------------------------------------------------------------------------
# Layout / determinism
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ckpts.BUILDERS))
def test_builder_writes_expected_files(built, name):
    assert _relative_files(built(name)) == EXPECTED_FILES[name]


@pytest.mark.parametrize("name", list(ckpts.BUILDERS))
def test_builder_is_deterministic(built, tmp_path, name):
    first = built(name)
    second = ckpts.BUILDERS[name](tmp_path / "again")

    def digests(path):
        return {rel: hashlib.sha256((path / rel).read_bytes()).hexdigest() for rel in _relative_files(path)}

    assert digests(first) == digests(second)


def test_stanford_layout_matches_colbertv2(built):
    path = built("stanford")
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["HF_ColBERT"]
    assert config["model_type"] == "bert"
    weights = load_file(path / "model.safetensors")
    assert weights["linear.weight"].shape == (24, 32)
    assert "linear.bias" not in weights
    assert all(key.startswith("bert.") for key in weights if key != "linear.weight")
    assert "bert.pooler.dense.weight" in weights
    metadata = json.loads((path / "artifact.metadata").read_text())
    assert metadata["query_token_id"] == "[unused0]"
    assert metadata["doc_token_id"] == "[unused1]"
    assert metadata["query_maxlen"] == 16
    assert metadata["doc_maxlen"] == 40
    assert metadata["attend_to_mask_tokens"] is False
    assert metadata["mask_punctuation"] is True
    assert metadata["dim"] == 24


@pytest.mark.parametrize("name", [n for n in COLBERT_NAMES if n.startswith("pylate_")])
def test_pylate_layout(built, name):
    path = built(name)
    spec = ckpts.CHECKPOINT_SPECS[name]
    modules = json.loads((path / "modules.json").read_text())
    assert modules[0]["path"] == "" and modules[0]["type"] == "sentence_transformers.models.Transformer"
    assert [m["type"] for m in modules[1:]] == ["pylate.models.Dense.Dense"] * len(spec["dense"])
    assert [m["path"] for m in modules[1:]] == [f"{i}_Dense" for i in range(1, len(spec["dense"]) + 1)]
    for i, dense_spec in enumerate(spec["dense"], start=1):
        dense_config = json.loads((path / f"{i}_Dense" / "config.json").read_text())
        assert set(dense_config) == {"in_features", "out_features", "bias", "activation_function"}
        assert (dense_config["in_features"], dense_config["out_features"], dense_config["bias"]) == (
            dense_spec["in"],
            dense_spec["out"],
            dense_spec["bias"],
        )
        weights = load_file(path / f"{i}_Dense" / "model.safetensors")
        assert set(weights) == ({"linear.weight", "linear.bias"} if dense_spec["bias"] else {"linear.weight"})

    st_config = json.loads((path / "config_sentence_transformers.json").read_text())
    assert st_config["query_prefix"] == "[Q] " and st_config["document_prefix"] == "[D] "
    assert st_config["query_length"] == 16 and st_config["document_length"] == 40
    assert st_config["attend_to_expansion_tokens"] is spec["attend_to_expansion_tokens"]
    assert st_config["skiplist_words"] == spec["skiplist_words"]
    assert st_config["do_query_expansion"] is True
    assert st_config["similarity_fn_name"] == "MaxSim"
    assert st_config.get("model_type") == (None if name == "pylate_bert" else "ColBERT")
    assert json.loads((path / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 39,
        "do_lower_case": False,
    }

    # PyLate added the raw prefixes (trailing space included) as normal added tokens at the end of
    # the vocabulary and resized the embedding matrix to match.
    tokenizer_json = json.loads((path / "tokenizer.json").read_text())
    added = {token["content"]: token for token in tokenizer_json["added_tokens"]}
    config = json.loads((path / "config.json").read_text())
    for offset, prefix in ((2, "[Q] "), (1, "[D] ")):
        assert added[prefix]["id"] == config["vocab_size"] - offset
        assert added[prefix]["special"] is False and added[prefix]["normalized"] is True


# --------------------------------------------------------------------------------------------------
# Loading in the reference library
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COLBERT_NAMES)
def test_loads_with_saved_settings(loaded, name):
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.multi_vector_encoder.modules import MultiVectorMask

    spec = ckpts.CHECKPOINT_SPECS[name]
    model = loaded(name)
    kinds = [type(module) for module in model]
    assert kinds == [Transformer] + [Dense] * len(spec["dense"]) + [MultiVectorMask, Normalize]
    assert model.get_embedding_dimension() == spec["dim"]
    assert model[0].get_embedding_dimension() == spec["hidden_size"]
    assert model.prompts["query"] == spec["query_prefix"]
    assert model.prompts["document"] == spec["document_prefix"]
    assert model[0].document_length == spec["document_length"]
    assert model[0].query_expansion == {
        "strategy": "fixed",
        "attend": spec["attend_to_expansion_tokens"],
        "token": None,
        "length": spec["query_length"],
    }
    mask = model[len(spec["dense"]) + 1]
    assert mask.skiplist_words == spec["skiplist_words"]
    assert mask.skiplist_tasks == ["document"]
    for dense, dense_spec in zip(list(model)[1 : 1 + len(spec["dense"])], spec["dense"]):
        assert (dense.in_features, dense.out_features, dense.bias) == (
            dense_spec["in"],
            dense_spec["out"],
            dense_spec["bias"],
        )
        assert type(dense.activation_function).__name__.lower() == dense_spec["activation"]
        assert dense.module_input_name == "token_embeddings"


@pytest.mark.parametrize("name", COLBERT_NAMES)
def test_backbone_and_dense_weights_are_the_saved_ones(built, loaded, name):
    """No random re-initialisation anywhere: every loaded tensor equals the tensor on disk."""
    spec = ckpts.CHECKPOINT_SPECS[name]
    path = built(name)
    model = loaded(name)
    prefix = spec["weights_prefix"]
    saved = {
        key[len(prefix) :]: value
        for key, value in load_file(path / "model.safetensors").items()
        if key.startswith(prefix)
    }
    live = model[0].auto_model.state_dict()
    assert set(live) == set(saved)
    for key, value in live.items():
        assert torch.equal(value.cpu(), saved[key]), key

    for dense, weights in zip(list(model)[1 : 1 + len(spec["dense"])], _dense_files(path, name, len(spec["dense"]))):
        assert torch.equal(dense.linear.weight.cpu(), weights["linear.weight"])
        if dense.bias:
            assert torch.equal(dense.linear.bias.cpu(), weights["linear.bias"])


@pytest.mark.parametrize("name", COLBERT_NAMES)
def test_encode_shapes(loaded, name):
    spec = ckpts.CHECKPOINT_SPECS[name]
    model = loaded(name)
    queries = model.encode_query(QUERIES)
    documents = model.encode_document(DOCUMENTS)
    for embedding in queries:
        assert embedding.shape == (spec["query_length"], spec["dim"])
        assert torch.isfinite(embedding).all()
        assert torch.allclose(embedding.norm(dim=-1), torch.ones(len(embedding)), atol=1e-5)
    for embedding in documents:
        assert embedding.ndim == 2 and embedding.shape[1] == spec["dim"]
        assert 0 < embedding.shape[0] <= spec["document_length"]
        assert torch.isfinite(embedding).all()
    scores = model.similarity(queries, documents)
    assert scores.shape == (len(QUERIES), len(DOCUMENTS)) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", COLBERT_NAMES)
def test_query_tokenization_prefix_and_expansion(built, loaded, name):
    spec = ckpts.CHECKPOINT_SPECS[name]
    model = loaded(name)
    tokenizer = model.tokenizer
    features = model[0].preprocess([model.prompts["query"] + "hi"], task="query")
    ids = features["input_ids"][0]
    attention = features["attention_mask"][0]
    assert ids.shape == (spec["query_length"],)

    # The prefix is one token right after the first special token (PyLate / Stanford insert it there).
    if name == "st_native":
        assert tokenizer.convert_ids_to_tokens(ids[1:3].tolist()) == ["query", ":"]
    elif name == "stanford":
        assert ids[1].item() == tokenizer.convert_tokens_to_ids("[unused0]") == 1
    else:
        added = json.loads((built(name) / "tokenizer.json").read_text())["added_tokens"]
        assert ids[1].item() == next(t["id"] for t in added if t["content"] == "[Q] ")

    # Every pad position up to query_length holds the expansion token.
    expansion_id = tokenizer.convert_tokens_to_ids(spec["expansion_token"])
    positions = features["query_expansion_positions"][0]
    assert positions.sum().item() > 0
    assert (ids[positions] == expansion_id).all()
    if spec["attend_to_expansion_tokens"]:
        assert attention.all()
    else:
        assert not attention[positions].any()
        assert attention[~positions].all()


def test_lfm2_expands_queries_with_eos(loaded):
    tokenizer = loaded("pylate_lfm2").tokenizer
    assert tokenizer.mask_token is None
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 7
    assert tokenizer.bos_token == "<|startoftext|>" and tokenizer.pad_token == "<|pad|>"


@pytest.mark.parametrize("name", COLBERT_NAMES)
def test_documents_truncate_to_document_length(loaded, name):
    spec = ckpts.CHECKPOINT_SPECS[name]
    model = loaded(name)
    features = model[0].preprocess([model.prompts["document"] + DOCUMENTS[-1]], task="document")
    assert features["input_ids"].shape == (1, spec["document_length"])


@pytest.mark.parametrize("name", COLBERT_NAMES)
def test_documents_omit_skiplisted_tokens(loaded, name):
    spec = ckpts.CHECKPOINT_SPECS[name]
    model = loaded(name)
    tokenizer = model.tokenizer
    skip = _skip_ids(tokenizer, spec["skiplist_words"])
    assert len(skip) == len(spec["skiplist_words"]), "every skiplist word must be a single vocab token"
    skip = torch.tensor(skip)
    removed_total = 0
    for document, embedding in zip(DOCUMENTS, model.encode_document(DOCUMENTS)):
        features = model[0].preprocess([model.prompts["document"] + document], task="document")
        ids = features["input_ids"][0]
        removed = torch.isin(ids, skip).sum().item()
        removed_total += removed
        assert embedding.shape[0] == len(ids) - removed
    assert removed_total > 0
    # Queries keep punctuation.
    features = model[0].preprocess([model.prompts["query"] + "paris, france."], task="query")
    assert torch.isin(features["input_ids"][0], skip).any()
    assert model.encode_query(["paris, france."])[0].shape[0] == spec["query_length"]


def test_custom_skiplist_keeps_other_punctuation(loaded):
    model = loaded("pylate_xlmr")
    features = model[0].preprocess([model.prompts["document"] + "world: paris."], task="document")
    tokens = model.tokenizer.convert_ids_to_tokens(features["input_ids"][0].tolist())
    assert ":" in tokens and "." in tokens
    # ":" is not in the custom skiplist, "." is.
    assert model.encode_document(["world: paris."])[0].shape[0] == len(tokens) - 1


@pytest.mark.parametrize("name", COLBERT_NAMES)
@pytest.mark.parametrize("task", ["query", "document"])
def test_reference_recipe_matches_encode(built, loaded, name, task):
    """A from-scratch computation with weights read from disk equals MultiVectorEncoder's output,
    so every Dense layer (both of them for ModernBERT) and the activation are applied."""
    model = loaded(name)
    texts = QUERIES if task == "query" else DOCUMENTS
    expected = model.encode_query(texts) if task == "query" else model.encode_document(texts)
    reference = _reference_encode(model, built(name), name, texts, task)
    for got, want in zip(expected, reference):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
