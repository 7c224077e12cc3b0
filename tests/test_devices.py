"""``--devices``: worker processes, one per device, give the same index as one device, survive a worker
death and out-of-memory batches, and never leave a process behind.

The multi-device path runs on CPU workers (``cpu:N``) with the tiny PyLate checkpoint (fast to load in
each spawned worker). Every run is a real ``python -m cli.main encode`` subprocess tagged with a marker
in its environment, which its workers inherit: after each run no process may still carry it. The GPU
tests at the end compare CUDA against the CPU and are skipped where no CUDA device exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import torch

from helpers import manifest, read_index, write_parquet

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
# 60 rows, 3 chunks (one per shard), batches of a few rows each: every worker gets several batches.
COMMON = ("--shard-rows", 20, "--batch-tokens", 64, "--store-dtype", "float32")
NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: torch.cuda.is_available() is false")


def corpus_rows(count: int) -> list[dict]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    return [{"id": f"doc{i:04d}", "text": " ".join(words[(i * 5 + j) % 12] for j in range(2 + (i * 7) % 23))} for i in range(count)]


def live_processes(marker: str) -> list[int]:
    """Pids of processes whose environment carries ``marker`` (the run and every worker it spawned)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        found = []
        for process in psutil.process_iter():
            try:
                if process.environ().get("TOKEMBED_TEST_MARKER") == marker and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(process.pid)
            except (psutil.Error, OSError):
                continue
        return found
    needle = f"TOKEMBED_TEST_MARKER={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":  # a zombie has exited
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def encode(corpus, out, *extra, env=None, model) -> subprocess.CompletedProcess:
    """Run ``tokembed encode``; fail the test if any process of the run outlives it (5 s grace)."""
    marker = uuid.uuid4().hex
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "encode", str(corpus), "-o", str(out), "-m", str(model), *map(str, COMMON), *map(str, extra)],
        capture_output=True, text=True, env={**ENV, **(env or {}), "TOKEMBED_TEST_MARKER": marker}, timeout=120,
    )
    deadline = time.monotonic() + 5
    while (left := live_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes left behind: {left}\n{result.stderr}"
    return result


def assert_same_rows(actual, expected, atol: float = 0.0) -> None:
    rows, reference = read_index(actual), read_index(expected)
    assert list(rows) == list(reference)  # every id, in corpus order
    for key, (vectors, ids) in reference.items():
        assert np.array_equal(rows[key][1], ids), key
        if atol:
            assert rows[key][0].shape == vectors.shape and np.abs(rows[key][0] - vectors).max() <= atol, key
        else:
            assert np.array_equal(rows[key][0], vectors), key


def shard_digests(folder) -> list[str]:
    return [shard["sha256"] for shard in manifest(folder)["shards"]]


@pytest.fixture(scope="module")
def work(tmp_path_factory, checkpoint_store):
    """The corpus, the tiny ColBERT checkpoint, and the index ``--devices cpu`` (in process) writes."""
    root = tmp_path_factory.mktemp("devices")
    corpus = write_parquet(root / "corpus.parquet", corpus_rows(60))
    model = checkpoint_store("pylate_bert")
    reference = root / "reference"
    from cli.main import run  # in this process: a subprocess would only add startup time

    assert run(["encode", str(corpus), "-o", str(reference), "-m", str(model), "--devices", "cpu", "-q", *map(str, COMMON)]) == 0
    return corpus, model, reference


@pytest.mark.parametrize("devices", ["cpu:1", "cpu:2", "cpu:3"])
def test_worker_count_does_not_change_the_index(work, tmp_path, devices):
    corpus, model, reference = work
    out = tmp_path / "index"
    result = encode(corpus, out, "--devices", devices, model=model)
    assert result.returncode == 0, result.stderr
    workers = int(devices.split(":")[1])
    assert f"devices: {', '.join(f'cpu:{i}' for i in range(workers))}: one worker process each" in result.stderr
    assert_same_rows(out, reference)
    assert shard_digests(out) == shard_digests(reference)  # byte-identical shards, whatever the worker count


def test_the_workers_model_load_is_load_seconds_not_encode_seconds(work, tmp_path):
    """Workers load their model after the lock is taken, while the first chunks are read: that load was counted in
    encode_seconds (cpu:2: load 1.7 s, encode 3.3 s, against 1.9 / 0.3 s in process) and so in tokens/s."""
    corpus, model, reference = work
    pause = 3.0  # each worker sleeps this long before loading its model: far longer than the tiny run's encoding
    hook = {"TOKEMBED_TEST_PAUSE_AT": "load", "TOKEMBED_TEST_PAUSE_SECONDS": str(pause)}
    result = encode(corpus, tmp_path / "index", "--devices", "cpu:2", "--log-format", "json", env=hook, model=model)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["load_seconds"] > pause and summary["encode_seconds"] < pause
    assert abs(summary["load_seconds"] + summary["encode_seconds"] - summary["seconds"]) < 0.01


def test_killed_worker_batches_go_to_the_others(work, tmp_path):
    """Worker 1 dies on its 2nd batch while both workers also run out of memory on batches over 100 tokens."""
    corpus, model, reference = work
    out = tmp_path / "index"
    faults = {"TOKEMBED_TEST_WORKER_DIE_AT": "1:2", "TOKEMBED_TEST_OOM_ABOVE": "100"}
    result = encode(corpus, out, "--devices", "cpu:2", "--batch-tokens", 256, env=faults, model=model)
    assert result.returncode == 0, result.stderr
    assert "worker 1 (cpu:1) died (killed by SIGKILL) holding batch" in result.stderr
    assert "re-queued" in result.stderr
    assert "cpu:0: out of memory on a batch of" in result.stderr  # the worker's log reaches the main process
    assert_same_rows(out, reference, atol=1e-6)  # no row missing; split batches only move the last bits


def test_last_worker_dying_fails_with_exit_9_and_keeps_the_index(work, tmp_path):
    corpus, model, reference = work
    out = tmp_path / "index"
    shutil.copytree(reference, out)  # the last good index, which the failed run must leave whole
    result = encode(corpus, out, "--devices", "cpu:1", "--full", env={"TOKEMBED_TEST_WORKER_DIE_AT": "0:1"}, model=model)
    assert result.returncode == 9, result.stderr
    assert "device error: worker 0 (cpu:0) died (killed by SIGKILL)" in result.stderr and "no worker is left" in result.stderr
    assert_same_rows(out, reference)  # the manifest still lists exactly the old shards, all readable
    listed = {shard["file"].split("/")[-1] for shard in manifest(out)["shards"]}
    assert {path.name for path in (out / "data").iterdir()} == listed
    assert not (out / "run-journal.json").exists()


@pytest.mark.slow  # three cpu:2 runs, one killed (~20-30 s); the exit-9 and resume paths run by default elsewhere
def test_finished_shards_of_a_run_whose_last_worker_died_are_resumed(work, tmp_path):
    """The devices failing (exit 9) threw the run's finished shards away with its journal: a long run whose
    workers the out-of-memory killer stopped started over. Now kept, as after a kill or Ctrl-C."""
    corpus, model, reference = work
    out = tmp_path / "index"
    failed = encode(corpus, out, "--devices", "cpu:1", env={"TOKEMBED_TEST_WORKER_DIE_AT": "0:45"}, model=model)
    assert failed.returncode == 9, failed.stderr
    assert (out / "run-journal.json").is_file() and not (out / "manifest.json").exists()
    resumed = encode(corpus, out, "--devices", "cpu:1", "--log-format", "json", model=model)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_shards"] >= 1
    assert_same_rows(out, reference)


def _encode_in_pool_worker(args: list[str]) -> tuple[int, str]:
    """Runs in a ``multiprocessing.Pool`` worker: ``cli.main.run(args)``'s exit code and its stderr."""
    import contextlib
    import io

    from cli.main import run

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        return run(args), stderr.getvalue()


def test_a_daemonic_caller_runs_the_devices_in_process(work, tmp_path):
    """A ``multiprocessing.Pool`` worker may not have children: ``--devices cpu:2`` raised an AssertionError
    ("daemonic processes are not allowed to have children"). It now runs in process, with a warning."""
    import multiprocessing

    corpus, model, reference = work
    out = tmp_path / "index"
    args = ["encode", str(corpus), "-o", str(out), "-m", str(model), "--devices", "cpu:2", *map(str, COMMON)]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        code, stderr = pool.apply(_encode_in_pool_worker, (args,))
    assert code == 0, stderr
    assert "warning: --devices cpu:2: this is a daemonic process" in stderr and "running in this process on cpu" in stderr
    assert shard_digests(out) == shard_digests(reference)


def test_out_of_memory_batches_are_split_and_retried(work, tmp_path, cli, monkeypatch):
    """In process (LocalRunner); worker processes use the same executor (see the test above)."""
    corpus, model, reference = work
    monkeypatch.setenv("TOKEMBED_TEST_OOM_ABOVE", "100")
    result = cli("encode", corpus, "-o", tmp_path / "index", "-m", model, *COMMON, "--devices", "cpu", "--batch-tokens", 256)
    assert result.exit_code == 0, result.stderr
    assert "cpu: out of memory on a batch of" in result.stderr and "split in half and retried" in result.stderr
    assert "cut to at most" in result.stderr  # the device's budget shrank for later batches
    # every row; smaller batches only change float rounding in the last bits
    assert_same_rows(tmp_path / "index", reference, atol=1e-6)
    monkeypatch.setenv("TOKEMBED_TEST_OOM_ABOVE", "10")  # below one item: nothing left to split
    result = cli("encode", corpus, "-o", tmp_path / "index", "-m", model, *COMMON, "--devices", "cpu", "--full")
    assert result.exit_code == 9 and "out of memory on a single item" in result.stderr
    assert_same_rows(tmp_path / "index", reference, atol=1e-6)  # the failed run left the index as it was


def test_device_specs(monkeypatch):
    from tokembed.engine.device import parse_devices, resolve_device
    from tokembed.engine.pool import worker_threads
    from tokembed.errors import DeviceError

    assert parse_devices("cpu").labels == ("cpu",) and not parse_devices("cpu").workers
    assert parse_devices("cpu:3").labels == ("cpu:0", "cpu:1", "cpu:2") and parse_devices("cpu:3").workers
    assert resolve_device("cpu:3") == "cpu"
    for bad in ("cpu:0", "cpu:x", "tpu", "gpu:1", "", "  "):  # blank: an unset "$GPUS", not every device
        with pytest.raises(DeviceError):
            parse_devices(bad)
    assert worker_threads(1) >= worker_threads(2) >= worker_threads(64) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert len(parse_devices("cpu:8").labels) == 8
    with pytest.raises(DeviceError, match="cpu:N takes one N"):  # said "must be a positive number"
        parse_devices("cpu:1,cpu:1")
    with pytest.raises(DeviceError, match="at most 8 CPU worker processes"):  # cpu:99: 99 model copies
        parse_devices("cpu:9")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # no GPU here: the parser's own rules
    assert parse_devices("cuda:00,cuda:1").labels == ("cuda:0", "cuda:1")  # torch refuses "cuda:00" itself
    with pytest.raises(DeviceError, match="listed twice"):
        parse_devices("cuda:0,cuda:00")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parse_devices("auto").labels == ("cpu",)
    with pytest.raises(DeviceError, match="no CUDA device") as refused:
        parse_devices("cuda:0,cuda:1")
    assert refused.value.hint == "use --devices cpu (or cpu:N)"


def test_a_one_device_command_is_not_told_to_use_cpu_workers(monkeypatch):
    """serve's flag is --devices too, but it runs on one device: cpu:N there is exit 2."""
    from tokembed.engine.device import resolve_one_device
    from tokembed.errors import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA device") as refused:
        resolve_one_device("cuda", "--devices", "serve")
    assert refused.value.hint == "use --devices cpu"


def test_import_caps_the_per_shape_kernel_caches_unless_the_user_set_them():
    """Uncapped, oneDNN's and ideep's per-shape caches grew with the corpus in bfloat16 on a CPU."""
    probe = "import os, tokembed; print(os.environ['ONEDNN_PRIMITIVE_CACHE_CAPACITY'], os.environ['LRU_CACHE_CAPACITY'])"
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    default = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert default.stdout.split() == ["16", "16"]
    user = subprocess.run([sys.executable, "-c", probe], env={**env, "LRU_CACHE_CAPACITY": "4"},
                          capture_output=True, text=True, check=True)
    assert user.stdout.split() == ["16", "4"]


def test_bad_devices_spec_exits_9(cli, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(3))
    result = cli("encode", corpus, "-o", tmp_path / "index", "--devices", "cpu:0")
    assert result.exit_code == 9 and "cpu:N must be a positive number" in result.stderr


def test_progress_shows_tokens_per_device(capsys):
    import io
    import re

    from rich.console import Console

    from cli.progress import LineProgress, TerminalProgress

    line = LineProgress(every=0)
    line.start(10)
    line.device_tokens("cuda:0", 300)
    line.device_tokens("cuda:1", 100)
    line.advance(10, 400)
    assert re.search(r"progress: 10/10 rows, [\d,]+ tokens/s \(cuda:0 [\d,]+, cuda:1 [\d,]+\)", capsys.readouterr().err)
    buffer = io.StringIO()
    terminal = TerminalProgress(Console(file=buffer, force_terminal=True, width=150))
    terminal.start(10)
    terminal.device_tokens("cuda:0", 300)
    terminal.advance(5, 300)
    terminal.bar.refresh()
    terminal.stop()
    screen = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", buffer.getvalue())
    assert re.search(r"cuda:0\s+[\d,]+ tok/s", screen) and "5/10 rows" in screen


# -- on a CUDA machine only ------------------------------------------------------------------------
@pytest.mark.gpu
@NO_CUDA
def test_cuda_matches_cpu(tmp_path, minilm_path):
    """Default dtype on CUDA (bfloat16, or float16) against float32 on the CPU: per-token cosine >= 0.999."""
    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(60))
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    assert encode(corpus, cpu, "--devices", "cpu", model=minilm_path).returncode == 0
    result = encode(corpus, gpu, "--devices", "cuda", model=minilm_path)
    assert result.returncode == 0, result.stderr
    assert manifest(gpu)["settings"]["dtype"] in ("bfloat16", "float16")
    _assert_cosine(gpu, cpu, 0.999)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@NO_CUDA  # evaluated first
def test_every_gpu_gives_the_one_gpu_index(tmp_path, minilm_path):
    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(60))
    one, every = tmp_path / "one", tmp_path / "every"
    assert encode(corpus, one, "--devices", "cuda:0", model=minilm_path).returncode == 0
    result = encode(corpus, every, "--devices", "auto", model=minilm_path)
    assert result.returncode == 0, result.stderr
    assert "one worker process each" in result.stderr
    _assert_cosine(every, one, 0.9999)


@pytest.mark.gpu
@NO_CUDA
def test_cuda_out_of_memory_is_split(tmp_path, minilm_path):
    corpus = write_parquet(tmp_path / "c.parquet", corpus_rows(60))
    plain, split = tmp_path / "plain", tmp_path / "split"
    assert encode(corpus, plain, "--devices", "cuda", "--batch-tokens", 256, model=minilm_path).returncode == 0
    result = encode(corpus, split, "--devices", "cuda", "--batch-tokens", 256, env={"TOKEMBED_TEST_OOM_ABOVE": "100"}, model=minilm_path)
    assert result.returncode == 0 and "split in half" in result.stderr
    _assert_cosine(split, plain, 0.999)


def _assert_cosine(actual, expected, floor: float) -> None:
    rows, reference = read_index(actual), read_index(expected)
    assert list(rows) == list(reference)
    for key, (vectors, ids) in reference.items():
        assert np.array_equal(rows[key][1], ids)
        a, b = rows[key][0], vectors
        cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        assert cosine.min() >= floor, (key, float(cosine.min()))


@pytest.mark.parametrize("native", [False, True])
def test_bfloat16_on_a_cpu_without_bfloat16_instructions_warns(monkeypatch, capsys, native):
    import torch

    from tokembed.settings import _warn_if_bfloat16_is_emulated, resolve_dtype

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    _warn_if_bfloat16_is_emulated.cache_clear()
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_dtype("float32", "cpu") == "float32"
    warned = "no bfloat16 instructions" in capsys.readouterr().err
    _warn_if_bfloat16_is_emulated.cache_clear()
    assert warned is not native
