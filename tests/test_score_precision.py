"""On a float16 index (the default) the queries stay float32 and every product is float32, on a GPU too.

Queries were rounded to the index's store dtype before MaxSim (scores ~1e-4 off PyLate's float32 queries), and the
scan on CUDA multiplied in float16 (every similarity rounded before its max: ~1e-3). The reference here is
transformers' float32 output of the demo model (raw mode: the normalized last hidden state) against the stored
float16 vectors upcast, in float64.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import read_index, write_jsonl

DOCS = [
    "The cat sat on the warm mat by the door.",
    "Quantum mechanics describes particles as waves.",
    "A recipe for apple pie with cinnamon.",
    "Paris is the capital of France.",
    "Cats and dogs are common household pets.",
]
QUERIES = ["where do cats sleep", "how do I bake an apple pie at home"]


@pytest.fixture(scope="module")
def float16_index(tmp_path_factory):
    from cli.main import run

    root = tmp_path_factory.mktemp("precision")
    corpus = write_jsonl(root / "corpus.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(DOCS)])
    assert run(["encode", str(corpus), "--output", str(root / "index"), "--quiet"]) == 0
    assert json.loads((root / "index" / "manifest.json").read_text())["embedding_dtype"] == "float16"
    return root / "index"


def model_queries(minilm_path) -> list[np.ndarray]:
    """transformers' float32 query vectors (what PyLate / sentence-transformers score with)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(minilm_path), AutoModel.from_pretrained(minilm_path).eval()
    with torch.no_grad():
        hidden = [model(**tokenizer(q, truncation=True, max_length=256, return_tensors="pt")).last_hidden_state[0] for q in QUERIES]
    return [torch.nn.functional.normalize(h, dim=-1).numpy() for h in hidden]


def test_a_query_encoded_for_a_float16_index_is_the_models_float32_output(float16_index, minilm_path):
    from tokembed.embedder import Embedder, index_flags
    from tokembed.index import open_index
    from tokembed.search import encode_queries

    manifest = open_index(float16_index).manifest
    for got, want in zip(encode_queries(float16_index, QUERIES), model_queries(minilm_path)):
        assert got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-6  # float16 rounding would be ~1e-4 here
    assert index_flags(manifest, "query").store_dtype == "float32"  # serve --index's query profile too
    assert Embedder.for_index(manifest, kind="document").settings.store_dtype == "float16"  # documents: as stored


def test_score_on_a_float16_index_is_float32_maxsim_of_float32_queries(cli, float16_index, minilm_path):
    rows = read_index(float16_index)  # float16 -> float32, exact
    query_flags = [arg for text in QUERIES for arg in ("--query", text)]
    scored = cli("score", float16_index, *query_flags, "-f", "jsonl", "-k", len(rows))
    assert scored.exit_code == 0, scored.output
    records = [json.loads(line) for line in scored.stdout.splitlines()]
    for number, query in enumerate(model_queries(minilm_path), start=1):
        q = query.astype(np.float64)
        want = {doc: (q @ d.astype(np.float64).T).max(axis=1).sum() for doc, (d, _) in rows.items()}
        got = {r["doc_id"]: r["score"] for r in records if r["query_id"] == f"q{number}"}
        assert got.keys() == want.keys()
        for doc in want:
            assert got[doc] == pytest.approx(want[doc], abs=2e-6)


def test_the_scan_on_cuda_multiplies_a_float16_index_in_float32(float16_index):
    import torch

    from tokembed.index import open_index
    from tokembed.search import encode_queries
    from tokembed.search.maxsim import NumpyScorer, TorchScorer, scan

    scorer = TorchScorer("cuda", "float16")  # no GPU needed to build it
    assert scorer.buffer_dtype == np.float16  # a block crosses as stored...
    assert scorer.dtype == torch.float32  # ...and is multiplied in float32
    scorer.device = torch.device("cpu")  # the CUDA scorer's arithmetic, run here
    index = open_index(float16_index)
    queries = encode_queries(index, QUERIES)
    on_device, _ = scan(index, queries, len(DOCS), scorer=scorer)
    on_cpu, _ = scan(index, queries, len(DOCS), scorer=NumpyScorer())
    for got, want in zip(on_device, on_cpu):
        assert [doc for doc, _ in got] == [doc for doc, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=2e-6)
