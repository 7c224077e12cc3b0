"""Document token pooling, ``encode --pool-factor N``: exact to PyLate 1.6's ``pool_factor``.

* against PyLate's own ``ColBERT.pool_embeddings_hierarchical``: its outputs on stored inputs, written by
  ``tests/make_pylate_pooling_reference.py`` (PyLate itself cannot be installed next to torch 2.13);
* against scipy's linkage/fcluster run here on float64 cosine distances (``pdist``), an independent route;
* the CLI round trip: fewer vectors, the stored rows equal pooling of the unpooled rows, the manifest records
  the factor, another factor re-encodes every row, ``score`` equals brute-force MaxSim over the stored vectors;
* usage errors: queries are never pooled, ``--pool-factor 0``, ``--no-normalize``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import manifest, read_index, write_jsonl
from tokembed.models.pooling import PROTECTED_TOKENS, pool_document

REFERENCE = Path(__file__).with_name("pylate_pooling_reference.npz")


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_equals_pylate_1_6_on_its_own_outputs(factor):
    reference = np.load(REFERENCE)
    n_docs = sum(1 for key in reference.files if key.startswith("doc_"))
    assert n_docs >= 10
    for i in range(n_docs):
        doc, expected = reference[f"doc_{i}"], reference[f"pooled_{factor}_{i}"]
        pooled, ids = pool_document(torch.from_numpy(doc), np.arange(len(doc)), factor)
        assert pooled.shape == expected.shape, f"document {i} ({len(doc)} vectors), pool factor {factor}"
        np.testing.assert_allclose(pooled.numpy(), expected, rtol=0, atol=1e-6)
        assert len(ids) == len(pooled)


def _unit(rng, n, dim=16) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("n, factor", [(3, 2), (10, 2), (31, 3), (180, 2), (77, 5)])
def test_equals_scipy_ward_on_cosine_distances(n, factor):
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    rng = np.random.default_rng(n * 10 + factor)
    doc = _unit(rng, n)
    token_ids = rng.integers(1000, 2000, size=n)
    pooled, ids = pool_document(torch.from_numpy(doc), token_ids, factor)

    rest = doc[1:].astype(np.float64)
    labels = fcluster(linkage(pdist(rest, "cosine"), method="ward"), t=max(len(rest) // factor, 1), criterion="maxclust")
    clusters = [np.flatnonzero(labels == label) for label in sorted(set(labels))]
    means = [rest[members].mean(axis=0) for members in clusters]
    assert len(pooled) == 1 + len(clusters) < n
    np.testing.assert_array_equal(pooled[0].numpy(), doc[0])  # the protected first token, as it was
    np.testing.assert_allclose(pooled[1:].numpy(), np.stack(means), atol=1e-5)
    # token ids: the protected token's own, then per cluster its earliest member's
    assert ids[0] == token_ids[0]
    np.testing.assert_array_equal(ids[1:], [token_ids[1:][members[0]] for members in clusters])


def test_pooled_vectors_are_means_not_renormalized_as_in_pylate():
    doc = _unit(np.random.default_rng(0), 40)
    pooled, _ = pool_document(torch.from_numpy(doc), np.arange(40), 4)
    norms = np.linalg.norm(pooled.numpy(), axis=1)
    assert norms[0] == pytest.approx(1.0, abs=1e-6)
    assert np.all(norms <= 1 + 1e-6) and np.any(norms < 0.99)  # a mean of distinct unit vectors is shorter


def test_short_documents_are_unchanged():
    rng = np.random.default_rng(1)
    for n in (0, 1, 2):
        doc = _unit(rng, n)
        pooled, ids = pool_document(torch.from_numpy(doc), np.arange(n), 2)
        assert np.array_equal(pooled.numpy(), doc) and list(ids) == list(range(n))


def test_equal_vectors_whose_float32_dot_exceeds_one_do_not_fail():
    """PyLate fails here (scipy: negative linkage distance); tokembed clamps the rounding to 0."""
    from scipy.cluster.hierarchy import fcluster, linkage

    from tokembed.models.pooling import cluster_labels

    rng = np.random.default_rng(2)
    for _ in range(1000):  # a document holding one unit vector three times, whose float32 dot with itself is > 1
        v, others = _unit(rng, 1), _unit(rng, 5)
        doc = np.concatenate([_unit(rng, 1), v, others[:2], v, others[2:], v])
        rest = torch.from_numpy(doc[1:])
        unclamped = (1 - torch.mm(rest, rest.t()).numpy())[np.triu_indices(len(rest), k=1)]
        if unclamped.min() < 0:
            break
    else:
        pytest.fail("no float32 unit vector with a dot product above 1 with its copy found")
    with pytest.raises(ValueError, match="negative distances"):  # what PyLate's code runs into
        fcluster(linkage(unclamped, method="ward"), t=4, criterion="maxclust")
    pooled, ids = pool_document(torch.from_numpy(doc), np.arange(len(doc)), 2)
    assert len(pooled) == 1 + (len(doc) - 1) // 2
    labels = cluster_labels(rest, 4)
    assert labels[0] == labels[3] == labels[-1]  # the three copies of v: one cluster


def test_vision_encoder_pools_documents_like_pool_document():
    from tokembed.models.vision import Prepared, VisionEncoder
    from tokembed.settings import EncodeFlags, resolve

    class Model:  # the minimum a VisionEncoder reads
        architecture, projection, processor = "ColPaliForRetrieval", "proj", None
        tokenizer = type("T", (), {"pad_token_id": 0})()

    encoder = VisionEncoder(Model(), resolve(EncodeFlags(kind="document", pool_factor=3, store_dtype="float32"), None, 512))
    vectors = torch.nn.functional.normalize(torch.randn(2, 30, 8, generator=torch.Generator().manual_seed(3)), dim=-1)
    batch = [Prepared(np.arange(100, 130), 30), Prepared(np.arange(200, 221), 21)]
    rows = encoder.finish(vectors, batch)
    for row, item, (stored, ids) in zip(vectors, batch, rows):
        expected, expected_ids = pool_document(row[: item.n_attend], item.ids[: item.n_attend], 3)
        assert stored.dtype == np.float32 and ids.dtype == np.int32
        np.testing.assert_array_equal(stored, expected.numpy())
        np.testing.assert_array_equal(ids, expected_ids)
        assert len(stored) < item.n_attend


# -- settings -------------------------------------------------------------------------------------------

def test_settings_refuse_pooled_queries_zero_and_unnormalized():
    from tokembed.errors import UsageError
    from tokembed.settings import EncodeFlags, resolve

    for flags, message in (
        (EncodeFlags(kind="query", pool_factor=2), "queries are never pooled"),
        (EncodeFlags(pool_factor=0), "at least 1"),
        (EncodeFlags(pool_factor=2, normalize=False), "--no-normalize"),
    ):
        with pytest.raises(UsageError, match=message):
            resolve(flags, None, 128)
    assert resolve(EncodeFlags(kind="query", pool_factor=1), None, 128).pool_factor == 1


def test_pool_factor_is_part_of_the_settings_fingerprint():
    from tokembed.settings import EncodeFlags, resolve

    prints = {resolve(EncodeFlags(pool_factor=f), None, 128).fingerprint("model") for f in (1, 2, 3)}
    assert len(prints) == 3


# -- the CLI, as a user runs it --------------------------------------------------------------------------

DOCS = [
    "The cat sat on the warm mat by the door, and the dog slept.",
    "Quantum mechanics describes particles as waves; waves interfere.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "short",
]


@pytest.fixture
def pooled_run(cli, checkpoint, tmp_path):
    model = checkpoint("stanford")
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": f"doc{i}", "text": t} for i, t in enumerate(DOCS)])

    def encode(out: Path, *flags) -> dict:
        result = cli("encode", corpus, "--model", model, "-o", out, "--store-dtype", "float32", "--log-format", "json", *flags)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    return model, encode, tmp_path


def test_cli_pool_factor_round_trip(cli, pooled_run):
    model, encode, tmp_path = pooled_run
    plain, pooled = tmp_path / "plain", tmp_path / "pooled"
    encode(plain)
    first = encode(pooled, "--pool-factor", "2")
    unpooled_rows, pooled_rows = read_index(plain), read_index(pooled)
    assert list(pooled_rows) == list(unpooled_rows)
    for doc_id, (vectors, ids) in unpooled_rows.items():
        # pooling runs on the finished rows (projection, normalization, skiplist): the same as pooling the plain rows
        expected, expected_ids = pool_document(torch.from_numpy(vectors), ids, 2)
        got, got_ids = pooled_rows[doc_id]
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
        np.testing.assert_array_equal(got_ids, expected_ids)
        assert len(got) <= PROTECTED_TOKENS + max(1, (len(vectors) - PROTECTED_TOKENS) // 2)
        assert np.all(np.linalg.norm(got, axis=1) <= 1 + 1e-5)
    assert manifest(pooled)["totals"]["tokens"] < manifest(plain)["totals"]["tokens"]
    recorded = manifest(pooled)
    assert recorded["settings"]["pool_factor"] == 2 and recorded["flags"]["pool_factor"] == 2
    assert manifest(plain)["settings"]["pool_factor"] == 1

    again = encode(pooled, "--pool-factor", "2")
    assert again["unchanged"] == len(DOCS) and again["added"] == 0
    changed = encode(pooled, "--pool-factor", "3")
    assert changed["full_rebuild"] and changed["unchanged"] == 0 and first["rows"] == changed["rows"] == len(DOCS)
    assert manifest(pooled)["settings"]["pool_factor"] == 3
    assert manifest(pooled)["settings_fingerprint"] != recorded["settings_fingerprint"]


def test_cli_score_over_a_pooled_index_is_maxsim_over_the_stored_vectors(cli, pooled_run):
    from tokembed.embedder import Embedder

    model, encode, tmp_path = pooled_run
    index = tmp_path / "pooled"
    encode(index, "--pool-factor", "2")
    queries = tmp_path / "queries.txt"
    queries.write_text("where does the cat sleep\ncapital of France\n", encoding="utf-8")
    result = cli("score", queries, index, "--format", "jsonl", "--top-k", len(DOCS))
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.stdout.splitlines()]

    # queries rebuilt from the manifest are not pooled (a pooled-query setting would be refused)
    embedder = Embedder.for_index(manifest(index), kind="query")
    assert embedder.settings.pool_factor == 1
    stored = read_index(index)
    for qid, (q, _) in zip(("1", "2"), embedder.embed(["where does the cat sleep", "capital of France"])):
        scores = {doc_id: (q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum() for doc_id, (d, _) in stored.items()}
        hits = [r for r in printed if r["query_id"] == qid]
        assert [h["doc_id"] for h in hits] == sorted(scores, key=lambda d: (-scores[d], list(stored).index(d)))
        np.testing.assert_allclose([h["score"] for h in hits], [scores[h["doc_id"]] for h in hits], atol=1e-3)


def test_cli_refuses_pooled_queries(cli, pooled_run):
    model, _, tmp_path = pooled_run
    out = tmp_path / "queries-index"
    result = cli("encode", tmp_path / "corpus.jsonl", "--model", model, "-o", out, "--kind", "query", "--pool-factor", "2")
    assert result.exit_code == 2
    assert "--pool-factor" in result.output and "queries are never pooled" in result.output
    assert not (out / "manifest.json").exists()
