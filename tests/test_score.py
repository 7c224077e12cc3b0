"""MaxSim scan (``tokembed.search``) against an independent float64 brute force, on synthetic indexes.

Indexes are written directly with ``IndexWriter`` (no model): 1-token and 0-token documents, all-negative
similarities, several shards and blocks, ties, an empty index. Also: query file readers, load_document.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tokembed.errors import BadInputError, IndexCorruptError, IndexNotFoundError, ModelMismatchError, UsageError
from tokembed.index import open_index
from tokembed.index.format import FORMAT, FORMAT_VERSION
from tokembed.index.writer import IndexWriter
from tokembed.search import load_document, read_queries, search_vectors
from tokembed.search.maxsim import TorchScorer, iter_blocks, scan

DIM = 16


# ---------------------------------------------------------------------------------------------- helpers


def write_index(folder: Path, docs: list[np.ndarray], store_dtype: str = "float16", shard_rows: int = 50_000,
                batch_rows: int = 4, ids: list[str] | None = None) -> Path:
    """A model-less index holding ``docs`` (each [n_tokens, D]) in order, ``batch_rows`` rows per record batch."""
    dim = docs[0].shape[1] if docs else DIM
    ids = ids or [f"d{i}" for i in range(len(docs))]
    writer = IndexWriter(folder, dim, store_dtype, shard_rows=shard_rows)
    for start in range(0, len(docs), batch_rows):
        part = docs[start : start + batch_rows]
        writer.write(ids[start : start + batch_rows], part, [np.arange(len(d), dtype=np.int32) for d in part],
                     [bytes(32)] * len(part))
    writer.close_shard()
    shards = [s.to_json() for s in writer.shards]
    writer.commit({
        "format": FORMAT, "format_version": FORMAT_VERSION, "dim": dim, "embedding_dtype": store_dtype,
        "shards": shards, "totals": {"rows": len(docs), "tokens": sum(len(d) for d in docs),
                                     "bytes": sum(s["bytes"] for s in shards)},
    })
    return folder


def random_docs(rng, lengths, dim=DIM, dtype=np.float16) -> list[np.ndarray]:
    docs = []
    for n in lengths:
        v = rng.standard_normal((n, dim))
        docs.append((v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)).astype(dtype))
    return docs


def brute_force(query: np.ndarray, docs: list[np.ndarray]) -> np.ndarray:
    """float64 MaxSim of one query against every document; -inf for a 0-token document."""
    q = query.astype(np.float64)
    return np.array([(q @ d.astype(np.float64).T).max(axis=1).sum() if len(d) else -np.inf for d in docs])


def expected_hits(query, docs, ids, k) -> list[tuple[str, float]]:
    scores = brute_force(query, docs)
    order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))[:k]  # ties: earlier row first
    return [(ids[i], scores[i]) for i in order]


def assert_same_hits(got, expected, tol=1e-4) -> None:
    assert [h.id for h in got] == [doc_id for doc_id, _ in expected]
    assert [h.rank for h in got] == list(range(1, len(expected) + 1))
    for hit, (_, score) in zip(got, expected):
        assert hit.score == pytest.approx(score, abs=tol) if np.isfinite(score) else hit.score == -np.inf


LENGTHS = [1, 7, 0, 3, 1, 12, 5, 1, 9, 2, 30, 4, 1, 6, 0, 8, 2, 11]


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(7)
    docs = random_docs(rng, LENGTHS)
    queries = random_docs(rng, [4, 1, 9, 32])
    index = write_index(tmp_path / "index", docs, shard_rows=5, batch_rows=3)
    return index, docs, queries, [f"d{i}" for i in range(len(docs))]


# ---------------------------------------------------------------------------------------------- MaxSim


@pytest.mark.parametrize("top_k", [1, 3, 10, 100])
def test_scores_and_ranking_equal_brute_force(corpus, top_k):
    index, docs, queries, ids = corpus
    assert len(open_index(index).shards) == 3  # 6 rows each: a shard closes after the write that reaches 5
    hits = search_vectors(index, queries, top_k=top_k)
    assert len(hits) == len(queries)
    for query, got in zip(queries, hits):
        assert_same_hits(got, expected_hits(query, docs, ids, top_k))


def test_k_larger_than_index_returns_everything_with_empty_documents_last(corpus):
    index, docs, queries, ids = corpus
    hits = search_vectors(index, queries, top_k=1000)
    for got in hits:
        assert sorted(h.id for h in got) == sorted(ids)
        assert [h.id for h in got[-2:]] == ["d2", "d14"]  # the 0-token documents, in index order
        assert all(h.score == -np.inf for h in got[-2:])


@pytest.mark.parametrize("block_tokens", [1, 5, 17, 64])
def test_small_blocks_give_the_same_result_as_one_big_block(corpus, block_tokens):
    index, docs, queries, ids = corpus
    blocks = list(iter_blocks(open_index(index), block_tokens, np.float32))
    assert len(blocks) > 1
    assert all(len(b.vectors) <= block_tokens or len(b.lengths) == 1 for b in blocks)
    assert sum(len(b.lengths) for b in blocks) == len(docs)
    small = search_vectors(index, queries, top_k=100, block_tokens=block_tokens)
    big = search_vectors(index, queries, top_k=100, block_tokens=1 << 20)
    assert [[(h.id, h.rank) for h in q] for q in small] == [[(h.id, h.rank) for h in q] for q in big]
    for a, b in zip(small, big):
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("block_tokens", [3, 1 << 20])
def test_torch_path_equals_brute_force(corpus, block_tokens):
    """The scorer used on CUDA, run on the CPU in float32."""
    index, docs, queries, ids = corpus
    results, stats = scan(open_index(index), queries, 100, block_tokens, TorchScorer("cpu", "float16"))
    assert stats.rows == len(docs) and stats.tokens == sum(LENGTHS)
    for query, got in zip(queries, results):
        expected = expected_hits(query, docs, ids, 100)
        assert [doc_id for doc_id, _ in got] == [doc_id for doc_id, _ in expected]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-4)


@pytest.mark.parametrize("torch_path", [False, True])
def test_a_query_with_no_tokens_scores_zero(corpus, torch_path):
    index, docs, queries, ids = corpus
    empty = np.zeros((0, DIM), np.float16)
    scorer = TorchScorer("cpu", "float16") if torch_path else None
    results, _ = scan(open_index(index), [empty, queries[0]], 100, 16, scorer)
    filled = [i for i, d in zip(ids, docs) if len(d)]
    assert results[0] == [(i, 0.0) for i in filled] + [("d2", -np.inf), ("d14", -np.inf)]
    assert [doc_id for doc_id, _ in results[1]] == [doc_id for doc_id, _ in expected_hits(queries[0], docs, ids, 100)]


def test_all_negative_similarities_are_never_beaten_by_padding(tmp_path):
    """With every similarity negative, a zero pad would win the max; the scan must not pad."""
    rng = np.random.default_rng(3)
    axis = np.zeros(DIM)
    axis[0] = 1.0
    query = np.tile(axis, (4, 1)).astype(np.float32)

    def away(n, strength):  # tokens pointing away from the query: <q, d> = -strength for every token
        noise = rng.standard_normal((n, DIM)) * 0.1
        noise[:, 0] = -strength
        return noise.astype(np.float32)

    docs = [away(3, 0.9), away(1, 0.1), away(40, 0.5), away(2, 0.3), rng.standard_normal((5, DIM)).astype(np.float32)]
    index = write_index(tmp_path / "neg", docs, store_dtype="float32")
    for block_tokens in (2, 1 << 20):
        got = search_vectors(index, [query], top_k=5, block_tokens=block_tokens)[0]
        expected = expected_hits(query, docs, [f"d{i}" for i in range(5)], 5)
        assert_same_hits(got, expected)
        by_id = {h.id: h.score for h in got}
        assert by_id["d1"] == pytest.approx(-0.4, abs=1e-6)  # 4 query tokens x -0.1
        assert by_id["d0"] < by_id["d2"] < by_id["d3"] < by_id["d1"] < 0


def test_ties_break_by_index_order(tmp_path):
    # exactly representable values: every summation order gives the same float32 score
    same = np.array([[0.5, -0.25] + [0.0] * (DIM - 2), [0.0, 1.0] + [0.0] * (DIM - 2)], np.float32)
    other = np.array([[0.25, 0.0] + [0.0] * (DIM - 2)], np.float32)
    docs = [other, same, other, same.copy(), same.copy(), other]
    index = write_index(tmp_path / "ties", docs, shard_rows=2, batch_rows=1)
    query = np.array([[1.0, 0.0] + [0.0] * (DIM - 2), [0.0, 0.5] + [0.0] * (DIM - 2)], np.float32)
    for block_tokens in (1, 3, 1 << 20):
        got = search_vectors(index, [query], top_k=6, block_tokens=block_tokens)[0]
        assert [h.id for h in got] == ["d1", "d3", "d4", "d0", "d2", "d5"]
        assert got[0].score == got[1].score == got[2].score == pytest.approx(1.0)
    top1 = search_vectors(index, [query], top_k=1)[0]
    assert [(h.id, h.rank) for h in top1] == [("d1", 1)]


def test_empty_index_returns_no_hits(tmp_path):
    index = write_index(tmp_path / "empty", [])
    assert open_index(index).shards == []
    assert search_vectors(index, random_docs(np.random.default_rng(0), [3, 2]), top_k=5) == [[], []]


def test_float32_index_and_queries_of_different_lengths(tmp_path):
    rng = np.random.default_rng(11)
    docs = random_docs(rng, [5, 1, 8, 2, 3], dtype=np.float32)
    index = write_index(tmp_path / "f32", docs, store_dtype="float32", shard_rows=2)
    queries = random_docs(rng, [1, 6, 2], dtype=np.float32)
    for query, got in zip(queries, search_vectors(index, queries, top_k=4, block_tokens=4)):
        assert_same_hits(got, expected_hits(query, docs, [f"d{i}" for i in range(5)], 4), tol=1e-5)


def test_query_vectors_of_the_wrong_dimension_are_a_model_mismatch(corpus):
    index, *_ = corpus
    with pytest.raises(ModelMismatchError, match="16-dimensional"):
        search_vectors(index, [np.zeros((3, 8), np.float16)])


@pytest.mark.parametrize("make, message", [
    (lambda q: q, r"query_matrices: expected a list .* got an array of shape \(4, 16\)"),  # was read row by row
    (lambda q: q[0], r"query_matrices: expected a list .* got an array of shape \(16,\)"),
    (lambda q: None, "query_matrices: expected a list .* got NoneType"),
    (lambda q: [q[0]], r"query_matrices\[0\]: an array of shape \(16,\), expected a \[tokens, dim\] matrix"),
    (lambda q: [q, q[None]], r"query_matrices\[1\]: an array of shape \(1, 4, 16\)"),
    (lambda q: [np.zeros(0)], r"query_matrices\[0\]: an array of shape \(0,\)"),
    (lambda q: [np.full((2, DIM), "x")], r"query_matrices\[0\]: holds <U1 values"),
])
def test_query_matrices_must_be_a_list_of_token_matrices(corpus, make, message):
    index, _, queries, _ = corpus
    with pytest.raises(UsageError, match=message):
        search_vectors(index, make(queries[0]))
    assert len(search_vectors(index, [np.zeros((0, DIM), np.float16)], top_k=2)[0]) == 2  # 0 tokens: scores 0


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_query_matrices_holding_nan_or_inf_are_refused_by_name(corpus, bad):
    index, _, queries, _ = corpus
    broken = queries[1].astype(np.float32)
    broken[0, 3] = bad
    with pytest.raises(UsageError, match=r"query_matrices\[1\]: 1 of its 16 vector values are NaN or inf"):
        search_vectors(index, [queries[0], broken])  # was: hits with score nan, in index order


def test_bad_top_k_and_block_size(corpus):
    index, _, queries, _ = corpus
    with pytest.raises(UsageError, match="top-k"):
        search_vectors(index, queries, top_k=0)
    with pytest.raises(UsageError, match="block-tokens"):
        search_vectors(index, queries, block_tokens=0)
    for not_whole in (2.5, "3", True):  # a library caller's value: a tokembed error, not a bare TypeError
        with pytest.raises(UsageError, match="whole number"):
            search_vectors(index, queries, top_k=not_whole)
    assert len(search_vectors(index, queries, top_k=np.int64(2))[0]) == 2


def test_the_structures_options_are_checked_on_an_index_without_one(corpus):
    """The same command line must not pass on one index and fail on another (it did: only a structure checked them)."""
    index, _, queries, _ = corpus
    for option in ("probe", "candidates"):
        with pytest.raises(UsageError, match=f"--{option} -1: must be at least 1"):
            search_vectors(index, queries, **{option: -1})
        with pytest.raises(UsageError, match=f"--{option} -1: must be at least 1"):
            search_vectors(index, queries, exact=True, **{option: -1})


def test_a_block_larger_than_the_index_costs_only_the_index(corpus):
    """--block-tokens 100000000 on a small index tried to allocate ~143 GiB (a traceback, exit 1)."""
    index, _, queries, _ = corpus
    huge = search_vectors(index, queries, top_k=100, block_tokens=10**20)
    assert huge == search_vectors(index, queries, top_k=100)


def test_load_document_with_an_id_that_is_not_text(corpus):
    index, *_ = corpus
    with pytest.raises(UsageError, match="is a string"):
        load_document(index, 5)


# ---------------------------------------------------------------------------------------------- index faults


def test_missing_index(tmp_path):
    with pytest.raises(IndexNotFoundError):
        search_vectors(tmp_path / "nowhere", [np.zeros((1, DIM), np.float16)])


def test_missing_shard_and_changed_bytes_are_index_corruption(corpus):
    index, _, queries, _ = corpus
    shard = index / "data" / "part-000001.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="sha256"):
        search_vectors(index, queries)
    shard.unlink()
    with pytest.raises(IndexCorruptError, match="missing"):
        search_vectors(index, queries)


# ---------------------------------------------------------------------------------------------- load_document


def test_load_document_returns_the_stored_row(corpus):
    index, docs, _, _ = corpus
    for i in (0, 2, 10, 17):
        vectors, token_ids = load_document(index, f"d{i}")
        assert vectors.dtype == np.float16 and np.array_equal(vectors, docs[i])
        assert token_ids.dtype == np.int32 and np.array_equal(token_ids, np.arange(LENGTHS[i]))
    with pytest.raises(BadInputError, match="no document with id 'nope'"):
        load_document(index, "nope")


# ---------------------------------------------------------------------------------------------- query files


def test_txt_queries_ids_are_line_numbers_and_blank_lines_warn(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("first query\n\n  \nsecond\r\nthird\n", encoding="utf-8")
    queries = read_queries(path)
    assert queries.ids == ["1", "4", "5"]
    assert queries.texts == ["first query", "second", "third"]
    assert len(queries.warnings) == 1 and "2 blank line" in queries.warnings[0]


def test_tsv_jsonl_parquet_queries(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tsv = tmp_path / "q.tsv"
    tsv.write_text("id\ttext\nq7\tred apples\tand pears\nq9\tblue\n", encoding="utf-8")
    # a third column is ignored, as colbert-ai's load_queries ignores it (test_score_queries.py)
    assert (read_queries(tsv).ids, read_queries(tsv).texts) == (["q7", "q9"], ["red apples", "blue"])
    named = read_queries(tsv, id_column="qid", id_required=True)  # the id<TAB>text header is no query "id"
    assert (named.ids, named.texts) == (["q7", "q9"], ["red apples", "blue"])
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text(json.dumps({"qid": 3, "body": "hello"}) + "\n" + json.dumps({"qid": "x", "body": "world"}) + "\n")
    queries = read_queries(jsonl, id_column="qid", text_column="body")
    assert (queries.ids, queries.texts) == (["3", "x"], ["hello", "world"])
    parquet = tmp_path / "q.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one", "two"]}), parquet)
    assert (read_queries(parquet).ids, read_queries(parquet).texts) == (["a", "b"], ["one", "two"])
    pq.write_table(pa.table({"text": ["one", "two"]}), parquet)
    assert read_queries(parquet).ids == ["1", "2"]


@pytest.mark.parametrize("suffix", [".txt", ".tsv", ".jsonl"])
def test_bad_utf8_in_a_query_file_names_file_and_line(tmp_path, suffix):
    path = tmp_path / f"q{suffix}"
    good = {".txt": b"fine", ".tsv": b"1\tfine", ".jsonl": b'{"id": 1, "text": "fine"}'}[suffix]
    path.write_bytes(good + b"\n" + good.replace(b"fine", b"caf\xe9") + b"\n")
    with pytest.raises(BadInputError, match=rf"q\{suffix} line 2: not valid UTF-8"):
        read_queries(path)


def test_a_query_with_a_lone_surrogate_is_named_not_a_tokenizer_crash(tmp_path):
    """JSON's "\\udc00" escape, or a byte of argv Python could not decode, is a lone surrogate: no tokenizer
    takes it."""
    from tokembed.search.queries import as_queries

    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "\\udc00 x"}\n', encoding="utf-8")
    with pytest.raises(BadInputError, match=r"query 'b': text is not valid Unicode \(a lone surrogate, U\+DC00, at character 0\)"):
        read_queries(path)
    with pytest.raises(BadInputError, match="query 'q1': text is not valid Unicode"):
        as_queries(["caf\udcff"])  # the library's entry point
    path.write_text('{"id": "\\ud800", "text": "fine"}\n', encoding="utf-8")
    with pytest.raises(BadInputError, match="id is not valid Unicode"):
        read_queries(path)


def test_json_the_parser_gives_up_on_names_the_query_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"text": "fine"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(BadInputError, match="q.jsonl line 2: not valid JSON .*recursion"):
        read_queries(path)


def test_parquet_queries_are_read_as_a_corpus_is(tmp_path, monkeypatch):
    """A huge query cell is read page by page; a null or non-UTF-8 cell is named by its row (from 1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import tokembed.sources.parquet_pages as pages

    path = tmp_path / "q.parquet"
    texts = ["short query", "word " * 2000]
    pq.write_table(pa.table({"text": texts}), path)
    monkeypatch.setattr(pages, "HUGE_PAGE_BYTES", 5000)
    read = []
    monkeypatch.setattr("tokembed.sources.parquet.text_cells", lambda *args: read.append(args[2]) or pages.text_cells(*args))
    queries = read_queries(path)
    assert (queries.ids, queries.texts, read) == (["1", "2"], texts, [0])
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["fine", None]}), path)
    with pytest.raises(BadInputError, match=r"q\.parquet row 2: null text"):
        read_queries(path)
    pq.write_table(pa.table({"text": pa.array([b"caf\xe9"], pa.binary()).view(pa.string())}), path)
    with pytest.raises(BadInputError, match=r"q\.parquet row 1: text is not valid UTF-8 \(byte 3\)"):
        read_queries(path)


def test_query_file_errors(tmp_path):
    with pytest.raises(BadInputError, match="no such query file"):
        read_queries(tmp_path / "missing.txt")
    (tmp_path / "q.csv").write_text("a,b\n")
    with pytest.raises(BadInputError, match="unsupported query file type"):
        read_queries(tmp_path / "q.csv")
    (tmp_path / "dup.tsv").write_text("1\ta\n1\tb\n")
    with pytest.raises(BadInputError, match="appears more than once"):
        read_queries(tmp_path / "dup.tsv")
    (tmp_path / "notab.tsv").write_text("1 a\n")
    with pytest.raises(BadInputError, match="line 1: expected id<TAB>text"):
        read_queries(tmp_path / "notab.tsv")
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(BadInputError, match="no queries"):
        read_queries(tmp_path / "blank.txt")


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_cuda_scan_matches_cpu(corpus):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    index, docs, queries, ids = corpus
    cpu = search_vectors(index, queries, top_k=100, device="cpu")
    gpu = search_vectors(index, queries, top_k=100, device="cuda")
    for a, b in zip(cpu, gpu):  # float32 products on both: the same numbers to float32 rounding
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
