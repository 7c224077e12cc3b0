"""In-process encoding runs a chunk's batches on two lanes (this thread and a helper; on a CPU torch's ops on
half the cores each, on a GPU, where they are opt-in, a CUDA stream each): the same bytes as one lane, both lanes busy, torch's thread
count restored, errors raised."""

from __future__ import annotations

import threading

import pytest
import torch

from helpers import write_parquet
from test_devices import COMMON, corpus_rows, shard_digests
from tokembed.engine import local
from tokembed.engine.local import ops_threads_per_lane, run_on_lanes


def test_jobs_run_on_every_lane_and_come_back_in_order():
    both_busy = threading.Barrier(2, timeout=10)  # only passes if two jobs run at the same time
    seen = []

    def run(job):
        if job < 2:
            both_busy.wait()
        seen.append(threading.current_thread().name)
        return job * job

    assert run_on_lanes(list(range(12)), run, 2) == [job * job for job in range(12)]
    assert {"MainThread", "tokembed-lane-1"} <= set(seen)


def test_the_first_error_stops_the_lanes_and_is_raised_once_they_ended():
    ran = []

    def run(job):
        ran.append(job)
        if job == 3:
            raise ValueError("bad batch 3")
        return job

    before = threading.active_count()
    with pytest.raises(ValueError, match="bad batch 3"):
        run_on_lanes(list(range(1000)), run, 2)
    assert threading.active_count() == before  # no helper left running
    assert len(ran) < 1000  # the lanes stopped taking batches


def test_torch_threads_are_split_between_lanes_and_restored():
    threads = torch.get_num_threads()
    with ops_threads_per_lane(2):
        assert torch.get_num_threads() == max(1, threads // 2)
    assert torch.get_num_threads() == threads
    with pytest.raises(RuntimeError), ops_threads_per_lane(2):
        raise RuntimeError("a failing chunk")
    assert torch.get_num_threads() == threads


@pytest.fixture
def lanes_seen(monkeypatch) -> set:
    """The names of the threads that ran ``LocalRunner`` batches."""
    seen: set = set()
    real_run = local.LocalRunner._run

    def recording_run(self, items):
        seen.add(threading.current_thread().name)
        return real_run(self, items)

    monkeypatch.setattr(local.LocalRunner, "_run", recording_run)
    return seen


def test_two_lanes_write_the_bytes_of_one(tmp_path, checkpoint_store, monkeypatch, lanes_seen):
    from cli.main import run

    corpus = write_parquet(tmp_path / "corpus.parquet", corpus_rows(60))
    model = checkpoint_store("pylate_bert")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # two lanes even on a one-core box
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)
    args = ["encode", str(corpus), "-m", str(model), "--devices", "cpu", "-q", *map(str, COMMON)]
    assert run([*args, "-o", str(tmp_path / "two")]) == 0
    assert {"MainThread", "tokembed-lane-1"} <= lanes_seen

    monkeypatch.setattr(local, "CPU_LANES", 1)
    lanes_seen.clear()
    assert run([*args, "-o", str(tmp_path / "one")]) == 0
    assert lanes_seen == {"MainThread"}
    assert shard_digests(tmp_path / "two") == shard_digests(tmp_path / "one")


def test_lanes_only_on_a_cpu_with_two_cores_or_more(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert local.default_lanes("cpu") == 2
    assert local.default_lanes("cuda:0") == 1  # opt-in on a GPU (TOKEMBED_GPU_LANES)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # OMP_NUM_THREADS=1, or one core
    assert local.default_lanes("cpu") == 1


def test_the_lanes_can_be_set_or_turned_off(monkeypatch):
    from tokembed.errors import UsageError

    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    monkeypatch.setenv("TOKEMBED_CPU_LANES", "1")
    assert local.default_lanes("cpu") == 1
    monkeypatch.setenv("TOKEMBED_CPU_LANES", "3")
    assert local.default_lanes("cpu") == 3
    monkeypatch.setenv("TOKEMBED_CPU_LANES", "8")
    assert local.default_lanes("cpu") == 4  # never more lanes than threads
    monkeypatch.setenv("TOKEMBED_CPU_LANES", "two")
    with pytest.raises(UsageError, match="TOKEMBED_CPU_LANES"):
        local.default_lanes("cpu")
    monkeypatch.setenv("TOKEMBED_GPU_LANES", "2")
    assert local.default_lanes("cuda:1") == 2  # a CUDA stream each, whatever the CPU threads
    monkeypatch.setenv("TOKEMBED_GPU_LANES", "0")
    with pytest.raises(UsageError, match="TOKEMBED_GPU_LANES"):
        local.default_lanes("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_gpu_lanes_write_the_bytes_of_one(tmp_path, minilm_path, monkeypatch, lanes_seen):
    """Each lane on its own CUDA stream; bfloat16, batches of a few rows: many batches overlap."""
    from cli.main import run

    corpus = write_parquet(tmp_path / "corpus.parquet", corpus_rows(200))
    args = ["encode", str(corpus), "-m", str(minilm_path), "--devices", "cuda", "-q", *map(str, COMMON)]
    monkeypatch.setenv("TOKEMBED_GPU_LANES", "2")
    assert run([*args, "-o", str(tmp_path / "two")]) == 0
    assert {"MainThread", "tokembed-lane-1"} <= lanes_seen
    monkeypatch.setenv("TOKEMBED_GPU_LANES", "1")
    assert run([*args, "-o", str(tmp_path / "one")]) == 0
    assert shard_digests(tmp_path / "two") == shard_digests(tmp_path / "one")


def test_planned_ahead_makes_the_next_item_while_the_caller_holds_this_one():
    made_second = threading.Event()

    def make(item):
        if item == 1:
            made_second.set()
        return item * 10

    out = []
    for value in local.planned_ahead(iter(range(4)), make):
        if value == 0:  # the helper makes item 1 while the caller still holds item 0
            assert made_second.wait(10)
        out.append(value)
    assert out == [0, 10, 20, 30]


def test_planned_ahead_raises_an_items_error_in_its_place_and_stops_reading():
    read = []

    def items():
        for item in range(100):
            read.append(item)
            yield item

    def make(item):
        if item == 2:
            raise ValueError("bad chunk 2")
        return item

    got = []
    with pytest.raises(ValueError, match="bad chunk 2"):
        for value in local.planned_ahead(items(), make):
            got.append(value)
    assert got == [0, 1] and max(read) == 2  # nothing read past the failing item


def test_closing_planned_ahead_early_leaves_no_helper_running():
    before = threading.active_count()
    plans = local.planned_ahead(iter(range(10)), lambda item: item)
    assert next(plans) == 0
    plans.close()
    assert threading.active_count() == before
