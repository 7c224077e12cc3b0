"""How the search structure's re-rank reads stored vectors: positioned reads (with and without ``preadv``), the
read-ahead advice, document blocks, the float16 cast, the pages it leaves resident and the memory ``info``
reports. The structure itself, compress and its cron guarantees are in ``test_plaid.py``."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from plaid_support import DIM, clustered_docs, queries_from
from test_score import write_index
from tokembed.search import search_vectors
from tokembed.search.plaid import compress_index, open_searchable, plaid_search


def test_searching_leaves_no_shard_pages_resident(compressed):
    from test_pages import mapped_rss

    folder, docs, queries = compressed
    index, structure = open_searchable(folder)
    exact = search_vectors(index, queries, top_k=10, exact=True)
    got = plaid_search(index, structure, queries, 10, probe=16, candidates=64)
    assert [h[0] for h in got[0]][:3] == [h.id for h in exact[0]][:3]  # ids and vectors read from the files
    # vectors and ids come by positioned reads, and the pages that reading the record batches' metadata mapped
    # are dropped, so a long-running search holds no shard memory however many documents it re-ranks
    assert sum(mapped_rss(index.shard_path(shard)) for shard in index.shards) == 0


def test_float32_vectors_and_unicode_ids_rerank_as_the_exhaustive_scan(tmp_path):
    rng = np.random.default_rng(5)
    docs = clustered_docs(rng, 120)
    ids = [f"dóc-{i}-{'é' * (i % 7)}" for i in range(len(docs))]
    folder = write_index(tmp_path / "index", docs, store_dtype="float32", shard_rows=50, batch_rows=7, ids=ids)
    compress_index(folder, nbits=2, centroids=32)
    queries = queries_from(rng, docs, 5)
    index, structure = open_searchable(folder)
    exact = search_vectors(index, queries, top_k=10, exact=True)
    got = plaid_search(index, structure, queries, 10, probe=32, candidates=len(docs))
    for e, g in zip(exact, got):
        assert [h[0] for h in g] == [h.id for h in e]
        assert [h[1] for h in g] == pytest.approx([h.score for h in e], abs=1e-5)


def test_without_preadv_the_rerank_reads_the_same_bytes(compressed, monkeypatch):
    folder, docs, queries = compressed
    index, structure = open_searchable(folder)
    expected = plaid_search(index, structure, queries[:4], 10)
    monkeypatch.delattr(os, "preadv")  # macOS has pread only
    index, structure = open_searchable(folder)
    assert plaid_search(index, structure, queries[:4], 10) == expected


def test_info_search_memory_is_what_a_search_holds(compressed):
    from tokembed.search.plaid.candidates import scratches
    from tokembed.search.plaid.lists import probed_lists
    from tokembed.search.plaid.report import structure_facts

    folder, docs, queries = compressed
    index, structure = open_searchable(folder)
    plaid_search(index, structure, queries[:1], 10, probe=structure.codec.k, candidates=len(docs))  # every shard read
    facts = structure_facts(index)
    parts = facts["bytes_by_part"]
    built = (probed_lists(structure).nbytes() + structure.codec.columns.nbytes
             + scratches.flags(structure.rows).nbytes + scratches.positions(structure.rows).nbytes
             + sum(b.row_starts.nbytes + b.row_ends.nbytes for b in structure._vectors.values())
             + sum(codes.doc_offsets.nbytes + codes.list_offsets.nbytes for codes in structure.shards))
    assert len(structure._vectors) == len(index.shards)
    assert facts["search_memory_bytes"] == parts["codec"] + parts["inverted_lists"] + parts["doc_offsets"] + built


@pytest.mark.parametrize("with_torch", [True, False])  # torch's cast where torch is imported, else a table
def test_float16_cast_equals_numpys_for_every_bit_pattern(monkeypatch, with_torch):
    import torch  # noqa: F401
    from tokembed.search.plaid import rerank as plaid_module

    if not with_torch:
        monkeypatch.delitem(sys.modules, "torch")
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    out = np.full(len(every), 7.0, np.float32)
    plaid_module.float16_to_float32(every, out)
    expected = every.astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(out), nan)
    assert np.array_equal(out[~nan].view(np.uint32), expected[~nan].view(np.uint32))  # signed zeros, subnormals, inf


def test_rerank_advises_every_read_before_the_first(compressed, monkeypatch):
    """The candidates' vector ranges are all handed to the kernel (POSIX_FADV_WILLNEED) before any is read, so
    that those not in the page cache come from disk together."""
    folder, docs, queries = compressed
    index, structure = open_searchable(folder)
    expected = plaid_search(index, structure, queries[:1], 10)  # also reads each shard's batches once
    events = []
    real_preadv = os.preadv
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, position, size, advice: events.append(("advise", (fd, position, size), advice)))
    monkeypatch.setattr(os, "preadv", lambda fd, views, position: events.append(("read", (fd, position, len(views[0])), None))
                        or real_preadv(fd, views, position))
    assert plaid_search(index, structure, queries[:1], 10) == expected
    advised = [where for kind, where, _ in events if kind == "advise"]
    reads = [where for kind, where, _ in events if kind == "read"]
    assert {advice for kind, _, advice in events if kind == "advise"} == {os.POSIX_FADV_WILLNEED}
    assert len(advised) == len(set(advised)) > 1
    assert sorted(r for r in reads if r in set(advised)) == sorted(advised)  # every range advised is read, once
    first_read = next(i for i, e in enumerate(events) if e[0] == "read")
    assert all(e[0] == "advise" for e in events[: len(advised)]) and first_read == len(advised)


def test_document_blocks_cover_every_document_once_in_order():
    from tokembed.search.plaid.rerank import document_blocks

    rng = np.random.default_rng(11)
    for size in (1, 5, 64, 1000):
        lengths = rng.integers(1, 40, 300)
        lengths[::37] = 200  # documents longer than a block
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        blocks = document_blocks(bounds, size)
        assert [a for a, _ in blocks] == [0] + [b for _, b in blocks[:-1]] and blocks[-1][1] == len(lengths)
        assert all(b > a for a, b in blocks)
        # a block passes the size only by its first document (the one that straddles a multiple of the size)
        assert all(bounds[b] - bounds[a + 1] < size for a, b in blocks)


@pytest.mark.parametrize("rerank", ["vectors", "codes"])
def test_reranking_in_blocks_scores_as_in_one_block(compressed, monkeypatch, rerank):
    from tokembed.search.plaid import rerank as rerank_module

    folder, docs, queries = compressed
    index, structure = open_searchable(folder)
    monkeypatch.setattr(rerank_module, "RERANK_BLOCK_TOKENS", 1 << 30)
    whole = plaid_search(index, structure, queries, 15, probe=structure.codec.k, candidates=len(docs), rerank=rerank)
    for size in (1, 37, 500):
        monkeypatch.setattr(rerank_module, "RERANK_BLOCK_TOKENS", size)
        got = plaid_search(index, structure, queries, 15, probe=structure.codec.k, candidates=len(docs), rerank=rerank)
        for w, g in zip(whole, got):
            assert [doc for doc, _ in g] == [doc for doc, _ in w]
            assert [score for _, score in g] == pytest.approx([score for _, score in w], abs=1e-6)


def test_a_record_batch_of_0_token_rows_only_is_searched_not_called_corrupt(tmp_path):
    """A batch without vectors (encode writes one per input: a scanned PDF of its own, all pages empty) has pyarrow's
    shared empty buffer for them, anywhere in memory: below the shard's mapping, the search said "its vectors are not
    stored uncompressed in the file" (exit 6) on a healthy index."""
    rng = np.random.default_rng(0)
    docs = [rng.standard_normal((n, DIM)).astype(np.float16) for n in (3, 2, 0, 0)]
    folder = write_index(tmp_path / "index", docs, batch_rows=2)  # the second record batch: two 0-token rows
    compress_index(folder, nbits=2, centroids=2)
    queries = [rng.standard_normal((3, DIM)).astype(np.float32)]
    exact = search_vectors(folder, queries, top_k=4, exact=True)
    index, structure = open_searchable(folder)
    got = plaid_search(index, structure, queries, 4, probe=2, candidates=4)
    assert [hit[0] for hit in got[0]] == [hit.id for hit in exact[0]][:2]  # the 0-token rows are never returned


def test_a_vector_longer_than_float16_holds_is_refused_where_the_structure_keeps_lengths():
    """A --no-normalize vector longer than 65504: its length was kept as inf, and the compressed-only search scored
    it inf or NaN (null in jsonl), exit 0."""
    from tokembed.errors import UsageError
    from tokembed.search.plaid.codes import vector_lengths

    fits = np.full((2, 4), 30000.0, np.float32)  # length 60000
    assert np.array_equal(vector_lengths(fits), np.full(2, 60000.0, np.float32).astype(np.float16))
    with pytest.raises(UsageError, match=r"a vector of length 78000 is past float16's range \(65504\)"):
        vector_lengths(np.array([[78000.0, 0, 0, 0], [1.0, 0, 0, 0]], np.float32))
