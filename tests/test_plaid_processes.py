"""Many queries at once in forked query processes (plaid/processes.py): the same hits as one query at a time,
errors carried back, a killed process reported rather than waited on, and query threads where forking is unsafe."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import threadpoolctl
import torch

from helpers import write_parquet
from plaid_support import corpus_rows
from tokembed.errors import IndexCorruptError
from tokembed.search.plaid import open_searchable, plaid_search, processes, threads

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="query processes are forked on Linux only")


OTHER_THREADS_ALIVE = processes._other_threads_alive


@pytest.fixture
def forking(monkeypatch):
    """numpy's BLAS would use 2 threads, 4 queries are enough for processes, and the threads earlier tests left
    in this pytest process (idle pools, servers) do not stop the fork (a ``tokembed score`` has none)."""
    monkeypatch.setattr(threads, "_blas_threads", lambda: 2)
    monkeypatch.setattr(processes, "PROCESS_MIN_QUERIES", 4)
    monkeypatch.setattr(processes, "_other_threads_alive", lambda: False)


def test_queries_run_in_order_in_other_processes_each_on_one_thread(forking):
    def work(q):
        blas = [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]
        return q * 2, os.getpid(), torch.get_num_threads(), set(blas)

    got = threads.map_queries(work, list(range(30)), processes=True)
    assert [value for value, *_ in got] == [q * 2 for q in range(30)]
    assert os.getpid() not in {pid for _, pid, _, _ in got}
    assert all(torch_threads == 1 and blas <= {1} for _, _, torch_threads, blas in got)


def test_few_queries_stay_on_query_threads(forking):
    assert set(threads.map_queries(lambda q: os.getpid(), [0, 1, 2], processes=True)) == {os.getpid()}


def test_without_processes_the_queries_stay_in_this_process(forking):
    assert set(threads.map_queries(lambda q: os.getpid(), list(range(10)))) == {os.getpid()}


def test_a_caller_outside_the_main_thread_gets_query_threads(forking):
    def caller(_):
        return threads.map_queries(lambda q: (os.getpid(), threading.current_thread().name), list(range(10)), processes=True)

    with ThreadPoolExecutor(1) as pool:
        seen = pool.submit(caller, None).result()
    assert {pid for pid, _ in seen} == {os.getpid()}
    assert all(name.startswith("tokembed-query") for _, name in seen)


def test_the_main_thread_does_not_fork_while_another_thread_is_alive(forking, monkeypatch):
    # another thread may hold a lock (the import lock, say) at the moment of the fork: the children would wait
    # for it forever (seen: a library caller's thread importing numpy.random lazily)
    monkeypatch.setattr(processes, "_other_threads_alive", OTHER_THREADS_ALIVE)
    release = threading.Event()
    other = threading.Thread(target=release.wait, name="a library caller's thread")
    other.start()
    try:
        assert not processes.can_fork()
        assert {pid for pid in threads.map_queries(lambda q: os.getpid(), list(range(30)), processes=True)} == {os.getpid()}
    finally:
        release.set()
        other.join()


def test_only_tokembeds_own_query_threads_are_not_other_threads(monkeypatch):
    query_thread = threading.Thread(name=processes.QUERY_THREAD_PREFIX + "_0")
    for alive, other in (([query_thread], False), ([query_thread, threading.Thread(name="tokembed-decode_0")], True)):
        monkeypatch.setattr(threading, "enumerate", lambda: [threading.current_thread(), *alive])
        assert OTHER_THREADS_ALIVE() is other


def test_an_error_in_a_query_process_is_raised_here_with_its_class_and_message(forking):
    def work(q):
        if q == 7:
            raise IndexCorruptError("shard 7: shorter than its record batches say", hint="run encode again")
        return q

    with pytest.raises(IndexCorruptError, match="shard 7") as raised:
        threads.map_queries(work, list(range(20)), processes=True)
    assert raised.value.hint == "run encode again"
    assert threads.map_queries(lambda q: q, list(range(8)), processes=True) == list(range(8))  # the next batch works


def test_a_killed_query_process_is_reported_not_waited_on(forking):
    assert processes.can_fork()  # else the query below would kill this process

    def work(q):
        if q == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return q

    with pytest.raises(processes.QueryWorkerError, match="ended before it answered"):
        threads.map_queries(work, list(range(12)), processes=True)
    assert threads.map_queries(lambda q: q + 1, list(range(8)), processes=True) == list(range(1, 9))


def test_a_batch_in_processes_gets_what_each_query_alone_and_the_query_threads_get(compressed, forking, monkeypatch):  # noqa: F811
    folder, _, queries = compressed
    index, structure = open_searchable(folder)
    alone = [plaid_search(index, structure, [q], 10)[0] for q in queries]
    forks, fork = [], processes.map_in_processes
    monkeypatch.setattr(processes, "map_in_processes", lambda *args: forks.append(1) or fork(*args))
    for rerank in ("vectors", "codes"):
        monkeypatch.setattr(processes, "PROCESS_MIN_QUERIES", 4)
        forked = plaid_search(index, structure, queries, 10, rerank=rerank)
        monkeypatch.setattr(processes, "PROCESS_MIN_QUERIES", 10**9)
        assert forked == plaid_search(index, structure, queries, 10, rerank=rerank)
        if rerank == "vectors":
            assert forked == alone
    assert len(forks) == 2


def test_a_fresh_structure_searched_first_in_processes(compressed, forking):  # noqa: F811
    folder, _, queries = compressed
    expected = [plaid_search(*open_searchable(folder), [q], 10)[0] for q in queries]
    assert plaid_search(*open_searchable(folder), queries, 10) == expected


def test_score_answers_a_queries_file_in_processes_as_on_query_threads(tmp_path, cli, monkeypatch):
    monkeypatch.setattr(threads, "_blas_threads", lambda: 2)
    monkeypatch.setattr(processes, "_other_threads_alive", lambda: False)  # earlier tests' threads (see forking)
    index = tmp_path / "index"
    corpus = write_parquet(tmp_path / "corpus.parquet", corpus_rows(80))
    assert cli("encode", corpus, "-o", index, "--shard-rows", 10, "--nbits", 2, "-q").exit_code == 0
    queries = tmp_path / "queries.txt"
    queries.write_text("".join(row["text"].split(" ", 1)[-1] + "\n" for row in corpus_rows(30, version=1)))
    forks, fork = [], processes.map_in_processes
    monkeypatch.setattr(processes, "map_in_processes", lambda *args: forks.append(1) or fork(*args))
    answers = []
    for least in (24, 10**9):
        monkeypatch.setattr(processes, "PROCESS_MIN_QUERIES", least)
        result = cli("score", queries, index, "-k", 5, "-f", "tsv", "--device", "cpu")
        assert result.exit_code == 0, result.output
        answers.append(result.stdout)
    assert forks == [1]
    assert answers[0] == answers[1] and len(answers[0].splitlines()) == 1 + 30 * 5  # a header, 5 hits a query


ORPHAN_SCRIPT = """
import os, sys, time
from tokembed.search.plaid import processes, threads
threads._blas_threads = lambda: 2
processes.PROCESS_MIN_QUERIES = 2

def work(q):
    os.write(1, f"{os.getpid()}\\n".encode())  # one write: print's two (text, then newline) interleaved between the children
    time.sleep(120)

threads.map_queries(work, [0, 1], processes=True)
"""


def alive(pid: int) -> bool:
    """Running or sleeping: not gone and not a zombie waiting for a reaper."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_query_processes_end_when_their_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        children = [int(parent.stdout.readline()) for _ in range(2)]
        assert all(alive(pid) for pid in children)
    finally:
        parent.kill()  # SIGKILL, as a cron timeout would
        parent.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if alive(pid)], "a query process outlived its killed parent"


def _pids_in_a_pool_worker(_):
    return os.getpid(), threads.map_queries(lambda q: os.getpid(), list(range(10)), processes=True)


def test_a_daemonic_process_gets_query_threads_of_its_own(forking):  # a multiprocessing.Pool worker may not have children
    assert threads.map_queries(lambda q: q, list(range(4))) == list(range(4))  # this process's query threads exist
    with multiprocessing.get_context("fork").Pool(1) as pool:
        worker, pids = pool.map(_pids_in_a_pool_worker, [0])[0]
    assert set(pids) == {worker}
