"""Running out of memory on the CPU is out of memory too. torch's CPU allocator raises a plain ``RuntimeError``
("DefaultCPUAllocator: can't allocate memory") and Python a ``MemoryError``; neither was split and retried: the
run ended in a traceback (exit 1), and a first run's finished shards and journal were deleted. Now both are
handled as ``torch.OutOfMemoryError`` is, in process (one lane or two) and in worker processes.

``TOKEMBED_TEST_OOM_FORM`` (``tokembed/_testhooks.py``) picks which error a batch over
``TOKEMBED_TEST_OOM_ABOVE`` padded tokens raises.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from helpers import write_parquet
from test_devices import COMMON, assert_same_rows, corpus_rows, encode, shard_digests

FORMS = ["cpu", "memory"]  # the CPU allocator's RuntimeError, Python's MemoryError


@pytest.fixture(scope="module")
def split_by_torch(tmp_path_factory, checkpoint_store):
    """The corpus, the tiny ColBERT checkpoint, and the index written while ``torch.OutOfMemoryError`` split batches."""
    root = tmp_path_factory.mktemp("cpu_oom")
    corpus = write_parquet(root / "corpus.parquet", corpus_rows(60))
    model = checkpoint_store("pylate_bert")
    index = root / "torch"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOKEMBED_CPU_LANES", "1")  # one lane: the splits, hence the bytes, never depend on timing
        patch.setenv("TOKEMBED_TEST_OOM_ABOVE", "100")
        from cli.main import run

        assert run(["encode", str(corpus), "-o", str(index), "-m", str(model), "-q", *map(str, COMMON),
                    "--devices", "cpu", "--batch-tokens", "256"]) == 0
    return corpus, model, index


@pytest.mark.parametrize("form", FORMS)
def test_cpu_out_of_memory_is_split_and_retried_as_torch_out_of_memory_is(split_by_torch, tmp_path, cli, monkeypatch,
                                                                          form):
    corpus, model, split = split_by_torch
    monkeypatch.setenv("TOKEMBED_CPU_LANES", "1")
    monkeypatch.setenv("TOKEMBED_TEST_OOM_ABOVE", "100")
    monkeypatch.setenv("TOKEMBED_TEST_OOM_FORM", form)
    out = tmp_path / "index"
    result = cli("encode", corpus, "-o", out, "-m", model, *COMMON, "--devices", "cpu", "--batch-tokens", 256)
    assert result.exit_code == 0, result.stderr
    assert "cpu: out of memory on a batch of" in result.stderr and "split in half and retried" in result.stderr
    assert shard_digests(out) == shard_digests(split)  # the same splits: the same bytes


def test_cpu_out_of_memory_on_two_lanes_loses_no_row(split_by_torch, tmp_path, cli, monkeypatch):
    corpus, model, split = split_by_torch
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # two lanes even on a one-core box
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)
    monkeypatch.setenv("TOKEMBED_CPU_LANES", "2")
    monkeypatch.setenv("TOKEMBED_TEST_OOM_ABOVE", "100")
    monkeypatch.setenv("TOKEMBED_TEST_OOM_FORM", "cpu")
    out = tmp_path / "index"
    result = cli("encode", corpus, "-o", out, "-m", model, *COMMON, "--devices", "cpu", "--batch-tokens", 256)
    assert result.exit_code == 0, result.stderr
    assert "split in half and retried" in result.stderr
    assert_same_rows(out, split, atol=1e-6)  # which lane split first may differ: only the last bits move


def test_cpu_out_of_memory_in_a_worker_process_is_split_there(split_by_torch, tmp_path):
    corpus, model, split = split_by_torch
    faults = {"TOKEMBED_TEST_OOM_ABOVE": "100", "TOKEMBED_TEST_OOM_FORM": "cpu"}
    result = encode(corpus, tmp_path / "index", "--devices", "cpu:2", "--batch-tokens", 256, env=faults, model=model)
    assert result.returncode == 0, result.stderr
    assert re.search(r"cpu:[01]: out of memory on a batch of", result.stderr) and "failed on batch" not in result.stderr
    assert_same_rows(tmp_path / "index", split, atol=1e-6)


@pytest.mark.parametrize("form", FORMS)
def test_a_single_item_out_of_cpu_memory_is_exit_9_and_the_first_run_can_resume(tmp_path, cli, checkpoint_store,
                                                                                 monkeypatch, form):
    """Two shards of short rows finish, then a long row alone is over the limit."""
    short = [{"id": f"s{i:03d}", "text": "alpha beta"} for i in range(40)]
    long = [{"id": f"l{i:03d}", "text": " ".join(["gamma"] * 60)} for i in range(20)]
    corpus = write_parquet(tmp_path / "corpus.parquet", short + long)
    model = checkpoint_store("pylate_bert")
    monkeypatch.setenv("TOKEMBED_TEST_OOM_ABOVE", "30")
    monkeypatch.setenv("TOKEMBED_TEST_OOM_FORM", form)
    out = tmp_path / "index"
    result = cli("encode", corpus, "-o", out, "-m", model, *COMMON, "--devices", "cpu")
    assert result.exit_code == 9, result.stderr
    assert "cpu: out of memory on a single item of" in result.stderr and "Traceback" not in result.stderr
    assert (out / "run-journal.json").is_file() and not (out / "manifest.json").exists()
    assert len(list((out / "data").iterdir())) == 2  # the short rows' shards, kept for the next run
    monkeypatch.delenv("TOKEMBED_TEST_OOM_ABOVE")
    resumed = cli("encode", corpus, "-o", out, "-m", model, *COMMON, "--devices", "cpu", "--log-format", "json")
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_shards"] == 2


@pytest.mark.parametrize("error", ["torch", "cpu", "memory"])
def test_out_of_memory_while_the_model_loads_is_exit_9_naming_it(cli, checkpoint, tmp_path, monkeypatch, error):
    """A torch.OutOfMemoryError while loading was a traceback, the CPU allocator's a model error (exit 4) calling a
    sound checkpoint unloadable."""
    import tokembed.models.registry as registry

    model = checkpoint("pylate_bert")
    raised = {"torch": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
              "cpu": RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"),
              "memory": MemoryError()}[error]

    def load(path, options):
        raise raised

    monkeypatch.setattr(registry, "family_class", lambda key: type("Family", (), {"load": staticmethod(load)}))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "alpha"}\n')
    result = cli("encode", corpus, "--model", model, "-o", tmp_path / "index", "--quiet")
    assert result.exit_code == 9, result.output
    assert f"{model}: out of memory loading the model on cpu" in result.output
    assert "Traceback" not in result.output
