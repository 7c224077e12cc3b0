"""jina-colbert-v2 loads natively (no remote code) and gives what Jina's rotary XLM-RoBERTa gives.

The reference is composed here from transformers' own pieces, independently of tokembed's module:
``XLMRobertaModel`` (eager attention; post-norm layers, exact GELU, LayerNorm eps from the config) with the
absolute position table zeroed and rotary positions (``LlamaRotaryEmbedding`` at ``rotary_emb_base`` +
``apply_rotary_pos_emb``, the non-interleaved form flash-attn uses) applied to its query and key projections;
weights from the same tiny checkpoint, names mapped back from Jina's fused layout. Tokens follow PyLate /
colbert-ai for a Stanford checkpoint: marker right after ``<s>``, queries filled with ``<mask>`` to 32 and all
attended, documents cut at 300, punctuation dropped.
"""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch
from torch import nn

from helpers import read_index, write_parquet
from jina_checkpoints import DIM, MARKERS, ROTARY_BASE, build_jina_colbert, to_transformers_state

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "!!! ... ??? ;;; ---",
    "Émoji 🎉 and CJK 中文 mixed, in one line!",
    "the cat sat on the mat, and the dog barked at the cat. " * 20,  # longer than doc_maxlen (300)
    "what is the capital of france?",
]


@pytest.fixture(scope="module")
def jina(tmp_path_factory):
    return build_jina_colbert(tmp_path_factory.mktemp("jina") / "jina-colbert-v2")


class RotaryProjection(nn.Module):
    """A query/key ``nn.Linear`` followed by rotary positions 0..T-1 (transformers' Llama rope helpers)."""

    def __init__(self, linear: nn.Linear, heads: int, rope: nn.Module) -> None:
        super().__init__()
        self.linear, self.heads, self.rope = linear, heads, rope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        out = self.linear(x)
        batch, length, width = out.shape
        heads = out.view(batch, length, self.heads, width // self.heads).transpose(1, 2)  # [B, H, T, D]
        cos, sin = self.rope(heads, torch.arange(length)[None])
        rotated, _ = apply_rotary_pos_emb(heads, heads, cos, sin)
        return rotated.transpose(1, 2).reshape(batch, length, width)


def reference_model(path):
    from safetensors.torch import load_file
    from transformers import LlamaConfig, XLMRobertaConfig, XLMRobertaModel
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    raw = json.loads((path / "config.json").read_text())
    config = XLMRobertaConfig(
        **{k: raw[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                "intermediate_size", "type_vocab_size", "pad_token_id", "layer_norm_eps",
                                "hidden_act", "max_position_embeddings")},
        attn_implementation="eager",
    )
    model = XLMRobertaModel(config, add_pooling_layer=False).eval()
    jina_state = load_file(str(path / "model.safetensors"))
    state = to_transformers_state(jina_state)
    state["embeddings.position_embeddings.weight"] = torch.zeros_like(model.embeddings.position_embeddings.weight)
    result = model.load_state_dict(state, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    heads = config.num_attention_heads
    rope = LlamaRotaryEmbedding(LlamaConfig(
        hidden_size=config.hidden_size, num_attention_heads=heads,
        rope_parameters={"rope_type": "default", "rope_theta": raw["rotary_emb_base"]},
    ))
    for layer in model.encoder.layer:
        attention = layer.attention.self
        attention.query = RotaryProjection(attention.query, heads, rope)
        attention.key = RotaryProjection(attention.key, heads, rope)
    return model, jina_state["linear.weight"]


def reference_tokens(tokenizer, text: str, kind: str) -> list[int]:
    """PyLate for a Stanford checkpoint: tokenize to length - 1, insert the marker after the first token;
    queries filled with the mask token to query_maxlen (32)."""
    marker = tokenizer.convert_tokens_to_ids(MARKERS[0] if kind == "query" else MARKERS[1])
    length = 32 if kind == "query" else 300
    ids = tokenizer(text, truncation=True, max_length=length - 1)["input_ids"]
    ids = ids[:1] + [marker] + ids[1:]
    if kind == "query":
        ids += [tokenizer.mask_token_id] * (length - len(ids))
    return ids


@torch.inference_mode()
def reference_outputs(path, kind):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model, linear = reference_model(path)
    skip = {tokenizer.convert_tokens_to_ids(p) for p in string.punctuation} - {tokenizer.unk_token_id}
    results = []
    for text in TEXTS:
        ids = reference_tokens(tokenizer, text, kind)
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        vectors = torch.nn.functional.normalize(hidden @ linear.T, dim=-1).numpy()
        keep = [i for i, token in enumerate(ids) if kind == "query" or token not in skip]
        results.append((np.asarray(ids)[keep], vectors[keep]))
    return results


@pytest.mark.parametrize("kind", ["document", "query"])
def test_colbert_mode_matches_rotary_xlmr_reference(jina, kind):
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    embedder = Embedder.load(str(jina), EncodeFlags(kind=kind, store_dtype="float32"))
    assert embedder.model.family == "jina-colbert" and embedder.settings.mode == "colbert"
    got = embedder.embed(TEXTS, batch_tokens=96)  # several items per batch: padding must not leak
    for text, (ref_ids, ref_vecs), (vecs, ids) in zip(TEXTS, reference_outputs(jina, kind), got):
        assert ids.tolist() == ref_ids.tolist(), (kind, text)
        assert vecs.shape == ref_vecs.shape == (len(ids), DIM)
        assert np.abs(vecs - ref_vecs).max() <= 1e-5, (kind, text)
    lengths = [len(ids) for _, ids in got]
    assert all(n == 32 for n in lengths) if kind == "query" else max(lengths) <= 300


def test_the_rotary_base_and_eps_come_from_the_config(jina, tmp_path):
    """A loader that ignored ``rotary_emb_base`` / ``layer_norm_eps`` would not see these edits."""
    import shutil

    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    base = Embedder.load(str(jina), EncodeFlags(store_dtype="float32")).embed([TEXTS[0]])[0][0]
    for key, value in (("rotary_emb_base", ROTARY_BASE / 2), ("layer_norm_eps", 1e-1)):
        copy = tmp_path / key
        shutil.copytree(jina, copy)
        config = json.loads((copy / "config.json").read_text())
        config[key] = value
        (copy / "config.json").write_text(json.dumps(config))
        changed = Embedder.load(str(copy), EncodeFlags(store_dtype="float32")).embed([TEXTS[0]])[0][0]
        assert np.abs(changed - base).max() > 1e-4, key


def test_detected_by_auto_map_or_by_weight_names(jina, tmp_path, checkpoint_store):
    from tokembed.models import detect, describe_families

    assert detect(jina) == "jina-colbert"
    assert detect(build_jina_colbert(tmp_path / "no-auto-map", auto_map=False)) == "jina-colbert"
    assert detect(checkpoint_store("stanford")) == "HF_ColBERT"
    info = {i.key: i for i in describe_families()}["jina-colbert"]
    assert "colbert" in info.modes and "xlm-roberta-flash" in info.reference


def test_encode_and_score_through_the_cli(cli, jina, tmp_path):
    """``encode`` needs no --trust-remote-code; ``score`` equals a brute-force MaxSim over the stored vectors."""
    docs = ["Paris is the capital of France.", "The cat sat on the mat.", "Dogs bark at night."]
    corpus = write_parquet(tmp_path / "docs.parquet", [{"id": f"d{i}", "text": t} for i, t in enumerate(docs)])
    out = tmp_path / "index"
    result = cli("encode", corpus, "-o", out, "--model", jina, "--store-dtype", "float32", "--quiet")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["family"] == "jina-colbert" and manifest["dim"] == DIM
    stored = read_index(out)

    from tokembed.embedder import Embedder

    query = "capital of France"
    q = Embedder.for_index(manifest, kind="query").embed([query])[0][0].astype(np.float64)
    brute = {doc_id: float((q @ v.astype(np.float64).T).max(axis=1).sum()) for doc_id, (v, _) in stored.items()}
    queries = tmp_path / "q.tsv"
    queries.write_text(f"q1\t{query}\n")
    scored = cli("score", queries, out, "--format", "jsonl", "-k", 3, "--quiet")
    assert scored.exit_code == 0, scored.output
    rows = [json.loads(line) for line in scored.stdout.splitlines()]
    assert [r["doc_id"] for r in rows] == sorted(brute, key=lambda d: (-brute[d], d))
    np.testing.assert_allclose([r["score"] for r in rows], [brute[r["doc_id"]] for r in rows], atol=1e-4)
