"""Identical centroids: k-means on a sample that repeats vectors (duplicate documents) with about a centroid per
distinct vector made some, and ``Codec.assign`` codes every token of a tie to the lowest id while the probe kept
the highest: with ``--centroids`` equal to the token count, 40 copies of one document were found by nothing (0
hits from the structure, exit 0; ``--exact`` ranked them first). Training now drops the repeats, and the probe
takes the lowest of equally good centroids, so a structure an earlier release trained finds them too."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from helpers import manifest
from plaid_support import clustered_docs
from test_score import write_index
from tokembed.index import open_index
from tokembed.search import api
from tokembed.search.plaid import codec as codec_mod
from tokembed.search.plaid import compress_index
from tokembed.search.plaid.build import load_codec


COPIES = 40


def duplicate_heavy_docs() -> list[np.ndarray]:
    """50 documents, then ``COPIES`` copies of a 1-token one."""
    rng = np.random.default_rng(3)
    return clustered_docs(rng, 50) + [clustered_docs(rng, 1)[0][:1]] * COPIES


def compressed(tmp_path, docs):
    """An index of ``docs`` compressed with one centroid per token (the most allowed)."""
    folder = write_index(tmp_path / "index", docs, shard_rows=40, batch_rows=8)
    compress_index(folder, nbits=2, centroids=manifest(folder)["totals"]["tokens"])
    return folder


def own_text_misses(folder, docs) -> list[int]:
    """Rows that the structure search (default probe and candidates) of their own vectors does not return."""
    hits = api.search_vectors(folder, [doc.astype(np.float32) for doc in docs], top_k=len(docs))
    return [row for row, found in enumerate(hits) if f"d{row}" not in {hit.id for hit in found}]


def test_every_document_is_found_by_its_own_text_with_a_centroid_per_token(tmp_path):
    docs = duplicate_heavy_docs()
    folder = compressed(tmp_path, docs)
    search = manifest(folder)["search"]
    tokens = manifest(folder)["totals"]["tokens"]
    assert search["training"]["kmeans_centroids"] == tokens and search["centroids"] < tokens  # the repeats dropped
    centroids = load_codec(folder, search, open_index(folder)).centroids
    assert len(np.unique(centroids, axis=0)) == len(centroids) == search["centroids"]
    assert own_text_misses(folder, docs) == []
    compress_index(folder, centroids=tokens)  # the count asked for again: the centroids are kept, not retrained
    assert manifest(folder)["search"]["codec"] == search["codec"]


def test_identical_centroids_of_an_earlier_release_are_probed_where_their_tokens_are(tmp_path, monkeypatch):
    """A codec as an earlier release could train: the copied document's centroid in the middle, then 200 more of
    it at the highest ids. ``assign`` codes the copies' token to the first of the 201; the probe took any 24."""
    docs, train = duplicate_heavy_docs(), codec_mod.train

    def with_copies(sample, k, nbits):
        codec = train(sample, k, nbits)
        ids = codec.assign(docs[-1].astype(np.float32))
        others = np.delete(codec.centroids, ids, axis=0)
        middle = len(others) // 2
        centroids = [others[:middle], codec.centroids[ids], others[middle:], np.repeat(codec.centroids[ids], 200, axis=0)]
        return replace(codec, centroids=np.concatenate(centroids))

    monkeypatch.setattr(codec_mod, "train", with_copies)
    folder = compressed(tmp_path, docs)
    search = manifest(folder)["search"]
    centroids = load_codec(folder, search, open_index(folder)).centroids
    assert len(centroids) - len(np.unique(centroids, axis=0)) == 200
    assert own_text_misses(folder, docs) == []
