"""Several queries at once: spread over query threads with numpy's BLAS held to one thread meanwhile; the
structure's and the index's lazily built parts are safe to build from several threads at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import threadpoolctl

from tokembed.index.reader import open_index
from tokembed.search.plaid import open_searchable, plaid_search
from tokembed.search.plaid import threads


def blas_threads() -> list[int]:
    """Threads of each process-wide (pthreads) BLAS, such as numpy's OpenBLAS. (An OpenMP one, such as the
    OpenBLAS faiss brings, keeps its thread count per calling thread: a query thread sees its own.)"""
    return [info["num_threads"] for info in threadpoolctl.threadpool_info()
            if info["user_api"] == "blas" and info.get("threading_layer") != "openmp"]


@pytest.fixture
def two_cores(monkeypatch):  # numpy's BLAS would use 2 threads (whatever this machine has)
    monkeypatch.setattr(threads, "_blas_threads", lambda: 2)


def test_queries_run_in_order_on_query_threads_with_one_blas_thread(two_cores):
    before = blas_threads()
    seen = []

    def work(q):
        seen.append((threading.current_thread().name, blas_threads()))
        return q * 2

    assert threads.map_queries(work, list(range(50))) == [q * 2 for q in range(50)]
    assert all(name.startswith("tokembed-query") for name, _ in seen)
    assert all(set(counts) <= {1} for _, counts in seen)
    assert blas_threads() == before  # restored


def test_one_query_stays_in_the_callers_thread(two_cores):
    names = threads.map_queries(lambda q: threading.current_thread().name, [0])
    assert names == [threading.current_thread().name]


def test_callers_in_several_threads_share_one_limit_and_restore_it(two_cores):
    before = blas_threads()
    barrier = threading.Barrier(4)

    def caller(_):
        barrier.wait()
        return threads.map_queries(lambda q: q + 1, list(range(20)))

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(caller, range(4))) == [list(range(1, 21))] * 4
    assert blas_threads() == before


def test_a_caller_beside_another_callers_query_threads_still_gets_query_threads(monkeypatch):
    # the other caller's query threads hold numpy's BLAS at one thread (process-wide); read then, this caller
    # would run its batch one query at a time (10-35x slower beside a busy thread, its OpenMP threads fighting
    # the others). A BLAS of 2 threads that reads 1 while any caller limits it:
    monkeypatch.setattr(threads, "_blas_threads_now", lambda: 1 if threads._STATE["users"] else 2)
    monkeypatch.setattr(threads, "_controller", lambda: _NoLimit())
    inside, leave = threading.Event(), threading.Event()

    def other_caller():
        with threads._one_blas_thread():
            inside.set()
            leave.wait()

    assert threads._workers(10) == 2
    other = threading.Thread(target=other_caller)
    other.start()
    try:
        inside.wait()
        assert threads._blas_threads_now() == 1
        assert threads._workers(10) == 2
    finally:
        leave.set()
        other.join()


class _NoLimit:
    def limit(self, **_):
        return self

    def restore_original_limits(self):
        pass


def test_an_error_in_one_query_is_raised_and_the_limit_restored(two_cores):
    before = blas_threads()

    def work(q):
        if q == 7:
            raise ValueError("query 7")
        return q

    with pytest.raises(ValueError, match="query 7"):
        threads.map_queries(work, list(range(20)))
    assert blas_threads() == before


def test_a_batch_of_queries_gets_what_each_alone_gets(compressed, two_cores):  # noqa: F811
    folder, docs, queries = compressed
    index, structure = open_searchable(folder)
    alone = [plaid_search(index, structure, [q], 10)[0] for q in queries]
    assert plaid_search(index, structure, queries, 10) == alone


def test_first_searches_from_several_threads_on_a_fresh_structure(compressed):  # noqa: F811
    folder, docs, queries = compressed
    index, structure = open_searchable(folder)
    expected = plaid_search(*open_searchable(folder), queries, 10)
    barrier = threading.Barrier(4)

    def search(i):
        barrier.wait()  # all four reach the lazily built lists and shard batches together
        return [plaid_search(index, structure, [q], 10)[0] for q in queries[i::4]]

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(search, range(4)))
    got = [None] * len(queries)
    for i, part in enumerate(parts):
        got[i::4] = part
    assert got == expected


def test_shards_open_from_several_threads_at_once(compressed):  # noqa: F811
    folder, _, _ = compressed
    index = open_index(folder)

    def open_all(_):
        return [index.open_shard(shard).num_record_batches for shard in index.shards for _ in range(50)]

    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(open_all, range(4)))
    assert all(c == counts[0] for c in counts) and min(counts[0]) > 0


def test_query_threads_follow_the_blas_thread_setting():
    caller = threading.current_thread().name
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):  # as OPENBLAS_NUM_THREADS=1 would
        assert threads._blas_threads() == 1
        assert set(threads.map_queries(lambda q: threading.current_thread().name, list(range(10)))) == {caller}
    if min(max(blas_threads(), default=1), threads.os.cpu_count() or 1) >= 2:
        assert threads._blas_threads() >= 2
