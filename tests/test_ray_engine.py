"""``encode --engine ray`` on a real Ray cluster on loopback: the same index bytes as ``--engine local``,
incremental runs, an actor killed mid-run, retries exhausted, the driver SIGKILLed, an unreachable cluster.

The module starts its own one-node cluster (``ray start --head --node-ip-address=127.0.0.1 --block`` in a
process group of its own) and kills that group when done, so nothing outlives the tests. Every run is a
real ``python -m cli.main encode`` subprocess (``test_devices.encode``: no process carrying the run's
marker may outlive it); an actor is a process of the cluster, so the tests also check that no
``ray::ChunkWorker`` process is left once a run ended.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import manifest, write_parquet
from test_devices import COMMON, assert_same_rows, corpus_rows, encode, shard_digests

# Each cluster test (marked ray and slow) runs 1-3 real encodes (Ray connect, actor start-up, model load):
# ~30-60 s each on 2 shared cores. The in-process tests at the end need neither Ray nor a cluster.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """HOST:PORT of a one-node, 2-CPU Ray cluster on 127.0.0.1, stopped (its whole process group) afterwards."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("ray") / "ray-start.log", "w")
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        env={**os.environ, **LOOPBACK}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert head.poll() is None, open(log.name).read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"the Ray head did not listen on {address}:\n{open(log.name).read()}")
        time.sleep(2)  # the raylet registers just after the GCS listens
        yield address
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(head.pid, sig)
            except ProcessLookupError:
                break
            try:
                head.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        log.close()


def chunk_workers() -> list[int]:
    """Pids of live Ray actor processes of tokembed's ``ChunkWorker`` (their title is ``ray::ChunkWorker...``)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if handle.read().startswith(b"ray::ChunkWorker"):
                        found.append(int(entry))
            except OSError:
                continue
    return found


def assert_no_actor_left(seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while (left := chunk_workers()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray actor processes left behind: {left}"


def ray_encode(corpus, out, address, *extra, env=None, model):
    result = encode(corpus, out, "--engine", "ray", "--ray-address", address, *extra, env={**LOOPBACK, **(env or {})}, model=model)
    assert_no_actor_left()
    return result


def without_timestamps(data: dict) -> dict:
    return {key: value for key, value in data.items() if key != "created_at"}


@pytest.fixture(scope="module")
def work(tmp_path_factory, checkpoint_store):
    """Corpus, edited corpus, the tiny ColBERT checkpoint, and ``--engine local`` indexes of both."""
    from cli.main import run
    from test_devices import COMMON

    root = tmp_path_factory.mktemp("ray-engine")
    rows = corpus_rows(60)
    corpus = write_parquet(root / "corpus.parquet", rows)
    edited_rows = [dict(row, text=row["text"] + " omega") if i % 7 == 0 else row for i, row in enumerate(rows) if i % 11 != 5]
    edited_rows += [{"id": f"new{i}", "text": f"alpha new row {i}"} for i in range(4)]
    edited = write_parquet(root / "edited.parquet", edited_rows)
    model = checkpoint_store("pylate_bert")
    local, local_edited = root / "local", root / "local-edited"
    for source, out in ((corpus, local), (edited, local_edited)):
        assert run(["encode", str(source), "-o", str(out), "-m", str(model), "--devices", "cpu", "-q", *map(str, COMMON)]) == 0
    # the local engine's incremental run: original corpus, then the edited one over it
    local_incremental = root / "local-incremental"
    shutil.copytree(local, local_incremental)
    assert run(["encode", str(edited), "-o", str(local_incremental), "-m", str(model), "--devices", "cpu", "-q", *map(str, COMMON)]) == 0
    return corpus, edited, model, local, (local_edited, local_incremental)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_writes_the_local_index_then_an_incremental_run_matches_a_local_rebuild(work, cluster, tmp_path):
    corpus, edited, model, local, (local_edited, local_incremental) = work
    out = tmp_path / "index"
    result = ray_encode(corpus, out, cluster, "--devices", "cpu:2", model=model)
    assert result.returncode == 0, result.stderr
    assert f"ray: {cluster}: 2 actor(s)" in result.stderr
    assert shard_digests(out) == shard_digests(local)  # byte-identical shards
    assert without_timestamps(manifest(out)) == without_timestamps(manifest(local))
    assert not (out / "staging").exists()  # staged chunks are removed once committed

    result = ray_encode(edited, out, cluster, "--devices", "cpu:2", "--log-format", "json", model=model)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    changed = sum(1 for i in range(60) if i % 7 == 0 and i % 11 != 5)
    assert (summary["added"], summary["updated"], summary["deleted"]) == (4, changed, 60 - 55)
    assert summary["unchanged"] == 55 - changed
    assert shard_digests(out) == shard_digests(local_incremental)  # the local engine's incremental run, byte for byte
    assert without_timestamps(manifest(out)) == without_timestamps(manifest(local_incremental))
    # and a full rebuild's rows: carried rows were encoded in other batches, so only the last bits may differ
    assert_same_rows(out, local_edited, atol=1e-6)


@pytest.mark.ray
@pytest.mark.slow
def test_an_actor_killed_on_its_second_chunk_is_restarted_and_its_chunk_retried(work, cluster, tmp_path):
    corpus, _, model, local, _ = work
    out = tmp_path / "index"
    # Actor 0 dies on its 2nd chunk (in its first life): restarted, its chunks (the 2nd, the 3rd queued) retried.
    result = ray_encode(corpus, out, cluster, "--devices", "cpu", env={"TOKEMBED_TEST_WORKER_DIE_AT": "0:2"}, model=model)
    assert result.returncode == 0, result.stderr
    assert manifest(out)["totals"]["rows"] == 60
    assert shard_digests(out) == shard_digests(local)  # no row lost, none twice


@pytest.mark.ray
@pytest.mark.slow
def test_retries_exhausted_exit_9_and_the_previous_index_stays(work, cluster, tmp_path):
    corpus, _, model, local, _ = work
    out = tmp_path / "index"
    shutil.copytree(local, out)
    before = (out / "manifest.json").read_bytes()
    result = ray_encode(corpus, out, cluster, "--devices", "cpu", "--full", env={"TOKEMBED_TEST_WORKER_DIE_AT": "0:1:every"}, model=model)
    assert result.returncode == 9, result.stderr
    assert "device error: ray actor 0 died and its chunk's retries are exhausted" in result.stderr
    assert (out / "manifest.json").read_bytes() == before
    listed = {shard["file"].split("/")[-1] for shard in manifest(out)["shards"]}
    assert {path.name for path in (out / "data").iterdir()} == listed
    assert_same_rows(out, local)


@pytest.mark.ray
@pytest.mark.slow
def test_driver_sigkill_then_rerun_resumes_to_the_same_index(work, cluster, tmp_path):
    corpus, _, model, local, _ = work
    out = tmp_path / "index"
    killed = ray_encode(corpus, out, cluster, "--devices", "cpu", env={"TOKEMBED_TEST_KILL_AT": "shard:1"}, model=model)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    assert any((out / "staging").glob("chunk-*.arrow"))  # staged chunks survive the driver
    result = ray_encode(corpus, out, cluster, "--devices", "cpu", model=model)
    assert result.returncode == 0, result.stderr
    assert "resuming: 1 finished shard(s)" in result.stderr
    assert shard_digests(out) == shard_digests(local)
    # the same staged chunks also resume a local run
    killed = ray_encode(corpus, tmp_path / "again", cluster, "--devices", "cpu", env={"TOKEMBED_TEST_KILL_AT": "shard:2"}, model=model)
    assert killed.returncode == -signal.SIGKILL
    result = encode(corpus, tmp_path / "again", "--devices", "cpu", model=model)
    assert result.returncode == 0 and "resuming: 2 finished shard(s)" in result.stderr, result.stderr
    assert shard_digests(tmp_path / "again") == shard_digests(local)


@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_stops_a_ray_run_as_ctrl_c_and_a_local_run_commits_and_clears_the_staging(work, cluster, tmp_path):
    """``ray.init`` installs a SIGTERM handler that exits 15, which used to end the run as a failure (journal and
    finished shards removed). And once any run commits, the chunks an earlier Ray run staged are removed."""
    from test_devices import ENV

    corpus, _, model, local, _ = work
    out = tmp_path / "index"
    command = [sys.executable, "-m", "cli.main", "encode", str(corpus), "-o", str(out), "-m", str(model), *map(str, COMMON),
               "--engine", "ray", "--ray-address", cluster, "--devices", "cpu", "--log-format", "json"]
    driver = subprocess.Popen(command, env={**ENV, **LOOPBACK, "TOKEMBED_TEST_PAUSE_AT": "shard:1"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "run-journal.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=60)
    assert_no_actor_left()
    assert driver.returncode == 130, stderr
    assert (out / "run-journal.json").exists() and any((out / "data").glob("part-*.arrow"))
    assert any((out / "staging").glob("chunk-*.arrow"))
    result = encode(corpus, out, "--devices", "cpu", model=model)  # the local engine finishes it
    assert result.returncode == 0 and "resuming: 1 finished shard(s)" in result.stderr, result.stderr
    assert shard_digests(out) == shard_digests(local)
    assert not (out / "staging").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_more_cpu_actors_than_cores_share_them_and_stdout_holds_only_the_summary(work, cluster, tmp_path):
    """``--devices cpu:3`` on a 2-CPU cluster: each actor reserves 2/3 of a CPU (the third used to wait forever for
    a whole one, holding the index's lock). With one actor killed on its first chunk, the cluster's error lines
    go to stderr: stdout is the JSON summary alone."""
    corpus, _, model, local, _ = work
    out = tmp_path / "index"
    result = ray_encode(corpus, out, cluster, "--devices", "cpu:3", "--log-format", "json",
                        env={"TOKEMBED_TEST_WORKER_DIE_AT": "0:1"}, model=model)
    assert result.returncode == 0, result.stderr
    assert "Task ChunkWorker.encode failed" in result.stderr  # the cluster's line about the killed actor
    assert json.loads(result.stdout)["rows"] == 60  # one JSON document, nothing else
    assert_same_rows(out, local)


def ray_encode_from(folder, *args, cluster):
    """``tokembed encode --engine ray`` run from ``folder`` (the cluster's actors run in the folder of `ray start`),
    with paths as typed there."""
    from test_devices import ENV

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**ENV, **LOOPBACK, "PYTHONPATH": os.pathsep.join(filter(None, [repo, ENV.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "cli.main", "encode", *map(str, args), *map(str, COMMON), "--engine", "ray",
                             "--ray-address", cluster], cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert_no_actor_left()
    return result


@pytest.mark.ray
@pytest.mark.slow
def test_a_relative_output_folder_is_the_drivers(work, cluster, tmp_path):
    """Actors resolved a relative ``-o`` against their own folder: exit 9 ("staging folder ... is not there")."""
    corpus, _, model, local, _ = work
    result = ray_encode_from(tmp_path, corpus, "-o", "index", "-m", model, "--devices", "cpu:2", cluster=cluster)
    assert result.returncode == 0, result.stderr
    assert shard_digests(tmp_path / "index") == shard_digests(local)
    assert not (tmp_path / "index" / "staging").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_an_adapter_over_a_relative_base_folder(checkpoint, cluster, tmp_path):
    """Actors resolved a relative ``--base-model`` against their own folder: exit 4. Same rows as the local engine."""
    from test_adapters import _text_adapter

    base = checkpoint("pylate_bert")
    adapter = _text_adapter(base, tmp_path / "lora")
    corpus = write_parquet(tmp_path / "corpus.parquet", corpus_rows(12))
    flags = ("-m", adapter, "--base-model", base.name, "--devices", "cpu")
    result = ray_encode_from(tmp_path, corpus, "-o", tmp_path / "ray", *flags, cluster=cluster)
    assert result.returncode == 0, result.stderr
    assert manifest(tmp_path / "ray")["flags"]["base_model"] == str(base.resolve())
    assert encode(corpus, tmp_path / "local", "--base-model", base, "--devices", "cpu", model=adapter).returncode == 0
    assert shard_digests(tmp_path / "ray") == shard_digests(tmp_path / "local")


@pytest.mark.ray
def test_a_ray_address_that_is_a_url_or_not_a_ray_cluster(work, tmp_path):
    import http.server
    import threading

    corpus, _, model, _, _ = work
    for address in ("ray://127.0.0.1:10001", "http://127.0.0.1:8265"):
        result = encode(corpus, tmp_path / "index", "--engine", "ray", "--ray-address", address, model=model)
        assert result.returncode == 2 and "not a URL" in result.stderr, result.stderr
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        result = encode(corpus, tmp_path / "index", "--engine", "ray", "--ray-address", address, model=model)
    finally:
        server.shutdown()
    assert result.returncode == 9 and "not a Ray cluster's GCS" in result.stderr, result.stderr
    assert not (tmp_path / "index" / "staging").exists()


@pytest.mark.ray
def test_an_unreachable_cluster_is_a_device_error_naming_the_address(work, tmp_path):
    corpus, _, model, _, _ = work
    address = f"127.0.0.1:{_free_port()}"
    result = encode(corpus, tmp_path / "index", "--engine", "ray", "--ray-address", address, model=model)
    assert result.returncode == 9, result.stderr
    assert f"--ray-address {address}: cannot reach the Ray cluster" in result.stderr
    assert not (tmp_path / "index" / "manifest.json").exists()


# -- in process: the actor's work without Ray ------------------------------------------------------
def test_a_chunk_worker_stages_exactly_the_local_rows_and_reuses_them(checkpoint_store, tmp_path):
    from tokembed.embedder import Embedder
    from tokembed.engine.ray import ChunkWorker, chunk_key, read_staged
    from tokembed.engine.runner import run_chunk
    from tokembed.errors import DeviceError
    from tokembed.settings import EncodeFlags

    flags = EncodeFlags(store_dtype="float16")
    embedder = Embedder.load(str(checkpoint_store("pylate_bert")), flags)
    texts = [row["text"] for row in corpus_rows(12)] + [""]
    staging = tmp_path / "staging"
    staging.mkdir()
    worker = ChunkWorker(embedder.spec(flags), 0, "cpu", 1)
    key = chunk_key(b"settings", texts)
    assert key != chunk_key(b"settings", texts[:-1]) and key != chunk_key(b"other", texts)
    done = worker.encode(key, texts, 64, str(staging))
    assert not done["reused"] and done["batches"] > 1
    staged = read_staged(staging / f"chunk-{key}.arrow", len(texts), embedder.output_dim, key)
    local = run_chunk(embedder.encoder, texts, 64, "cpu")
    for got, want in zip(staged.vectors + staged.token_ids, local.vectors + local.token_ids, strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert (staged.real_tokens, staged.computed_tokens) == (local.real_tokens, local.computed_tokens)
    assert [p.name for p in staging.iterdir()] == [f"chunk-{key}.arrow"]  # no temp file left
    assert worker.encode(key, texts, 64, str(staging))["reused"]  # a retried chunk reuses the staged file
    with pytest.raises(DeviceError, match="rows, expected"):
        read_staged(staging / f"chunk-{key}.arrow", len(texts) + 1, embedder.output_dim, key)
    with pytest.raises(DeviceError, match=f"staging folder {tmp_path / 'elsewhere'} is not there"):
        worker.encode(key, texts, 64, str(tmp_path / "elsewhere"))


def test_a_full_disk_under_a_staged_chunk_is_a_write_error(tmp_path, monkeypatch):
    """An actor's ENOSPC was reported as a device error (exit 9, finished shards kept as after a dead GPU)
    where the local engine says write error (exit 8)."""
    import errno

    import pyarrow as pa

    from cli._errors import exit_code_for
    from tokembed.engine.ray import write_staged
    from tokembed.engine.runner import ChunkResult
    from tokembed.errors import IndexWriteError

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pa, "OSFile", full_disk)
    result = ChunkResult([np.ones((2, 4), np.float32)], [np.arange(2, dtype=np.int32)], 2, 2, 2)
    with pytest.raises(IndexWriteError, match="No space left on device") as raised:
        write_staged(tmp_path / "chunk-x.arrow", result, 4, "float16", "x")
    assert exit_code_for(raised.value)[0] == 8
    assert list(tmp_path.iterdir()) == []  # no temp file left


def test_a_chunk_shared_out_by_ranges_of_its_batches_gives_the_local_rows(checkpoint_store, tmp_path):
    from types import SimpleNamespace

    from tokembed.embedder import Embedder
    from tokembed.engine.ray import ChunkWorker, RayRunner, batch_ranges, chunk_key, read_staged
    from tokembed.engine.runner import plan_chunk, run_chunk
    from tokembed.settings import EncodeFlags

    flags = EncodeFlags(store_dtype="float32")
    embedder = Embedder.load(str(checkpoint_store("pylate_bert")), flags)
    texts = [row["text"] for row in corpus_rows(40)] + [""]
    plan = plan_chunk(embedder.encoder, texts, 64)
    spans = batch_ranges(plan, 3)
    assert len(spans) == 3 and spans[0][0] == 0 and spans[-1][1] == len(plan.batches)
    assert all(first < end for first, end in spans) and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    staging = tmp_path / "staging"
    staging.mkdir()
    worker = ChunkWorker(embedder.spec(flags), 0, "cpu", 1)
    staged = {}
    for span in spans:
        key = chunk_key(f"{span}".encode(), texts)
        assert worker.encode(key, texts, 64, str(staging), span)["batches"] == span[1] - span[0]
        rows = sum(len(batch.rows) for batch in plan.batches[span[0] : span[1]])
        staged[span] = read_staged(staging / f"chunk-{key}.arrow", rows, embedder.output_dim, key)
    # the driver's reassembly, with each part's staged file standing in for Ray
    driver = SimpleNamespace(encoder=embedder.encoder, _collect_part=lambda actor, span, rows, key: staged[span])
    got = RayRunner._collect(driver, plan, [(0, span, None, None, span) for span in spans])
    local = run_chunk(embedder.encoder, texts, 64, "cpu")
    assert (got.real_tokens, got.computed_tokens, got.largest_batch) == (local.real_tokens, local.computed_tokens, local.largest_batch)
    for a, b in zip(got.vectors + got.token_ids, local.vectors + local.token_ids, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_ray_address_auto_without_a_cluster_names_what_it_looked_for(monkeypatch, tmp_path):
    from tokembed.engine import ray_cluster as ray_engine
    from tokembed.errors import DeviceError, UsageError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_engine, "CURRENT_CLUSTER_FILE", tmp_path / "ray_current_cluster")
    with pytest.raises(DeviceError, match="--ray-address auto: no running Ray cluster found"):
        ray_engine.cluster_address("auto")
    (tmp_path / "ray_current_cluster").write_text("10.1.2.3:6379\n")
    assert ray_engine.cluster_address("auto") == "10.1.2.3:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6380")
    assert ray_engine.cluster_address("auto") == "10.9.9.9:6380"
    with pytest.raises(UsageError, match="expected auto or HOST:PORT"):
        ray_engine.connect("nohostport")


def test_ray_address_env_auto_is_the_local_cluster_and_a_bad_one_is_named_as_from_ray_address(monkeypatch, tmp_path):
    """``RAY_ADDRESS=auto`` (what Ray itself accepts) was refused as "--ray-address 'auto': expected auto or
    HOST:PORT", naming a flag that was not given."""
    from tokembed.engine import ray_cluster as ray_engine
    from tokembed.errors import DeviceError, UsageError

    monkeypatch.setattr(ray_engine, "CURRENT_CLUSTER_FILE", tmp_path / "ray_current_cluster")
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with pytest.raises(DeviceError, match="RAY_ADDRESS is auto and no `ray start` on this machine"):
        ray_engine.cluster_address("auto")
    (tmp_path / "ray_current_cluster").write_text("10.1.2.3:6379\n")
    assert ray_engine.cluster_address("auto") == "10.1.2.3:6379"
    assert ray_engine.cluster_address(None) == "10.1.2.3:6379"
    for value, why in (("local", "expected auto or HOST:PORT"), ("ray://10.1.2.3:10001", "not a URL")):
        monkeypatch.setenv("RAY_ADDRESS", value)
        with pytest.raises(UsageError, match=f"^RAY_ADDRESS '{value}': .*{why}"):
            ray_engine.connect("auto")
    with pytest.raises(UsageError, match="^--ray-address 'nohostport'"):  # the flag wins, and is named
        ray_engine.connect("nohostport")


def test_ray_address_without_engine_ray_is_a_usage_error(cli, tmp_path):
    """It was ignored: the run encoded locally, with no word that the cluster was never asked."""
    corpus = write_parquet(tmp_path / "corpus.parquet", corpus_rows(3))
    for extra in ((), ("--engine", "local")):
        result = cli("encode", corpus, "-o", tmp_path / "index", "--ray-address", "10.1.2.3:6379", *extra)
        assert result.exit_code == 2, result.stderr
        assert "usage error: --ray-address 10.1.2.3:6379: only --engine ray connects to a cluster" in result.stderr
        assert not (tmp_path / "index").exists()


def test_the_staging_folder_and_path_variables_reach_the_actors_absolute(monkeypatch, tmp_path):
    """An actor runs in the folder `ray start` ran in: a relative ``-o`` sent as typed was looked for there (exit 9
    "staging folder ... is not there", or chunks staged into another index of the same name)."""
    from types import SimpleNamespace

    from tokembed.engine import ray as ray_runner
    from tokembed.engine.ray_cluster import ActorPlan

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ray_runner, "connect", lambda address: ("127.0.0.1:1", False))
    monkeypatch.setattr(ray_runner, "plan_actors", lambda devices: ActorPlan(1, 1, 0, 1, spread=False))
    monkeypatch.setattr(ray_runner.RayRunner, "_start_actors", lambda self, spec, plan: None)
    spec = SimpleNamespace(fingerprint="f", weights_sha256="w", settings=None)
    job = SimpleNamespace(output=Path("rel") / "index", batch_tokens=64, devices="cpu", ray_address=None)
    runner = ray_runner.RayRunner(spec, job, encoder=None)
    try:
        assert runner.staging == tmp_path / "rel" / "index" / "staging" and runner.staging.is_dir()
    finally:
        runner.close()
    env = ray_runner.actor_env({"TOKEMBED_CACHE": "cache", "HF_HOME": "/abs/hf", "HF_HUB_OFFLINE": "1", "HOME": "/root"})
    assert env == {"TOKEMBED_CACHE": str(tmp_path / "cache"), "HF_HOME": "/abs/hf", "HF_HUB_OFFLINE": "1"}


def test_auto_leaves_out_a_head_without_cpus_and_cpu_n_is_bounded_as_locally(monkeypatch):
    """A head started with --num-cpus=0 (so that it runs no work) made ``auto`` start an actor for it too, each
    reserving min(0, ...) = 0 CPUs with one torch thread; ``cpu:30000`` reserved 0.0 CPUs each (unbounded)."""
    ray = pytest.importorskip("ray")
    from tokembed.engine import ray_cluster
    from tokembed.errors import DeviceError

    nodes = [{"Alive": True, "Resources": {"memory": 1e9}}, {"Alive": True, "Resources": {"CPU": 16.0}},
             {"Alive": True, "Resources": {"CPU": 16.0}}, {"Alive": False, "Resources": {"CPU": 64.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    plan = ray_cluster.plan_actors("auto")
    assert (plan.count, plan.num_cpus, plan.threads, plan.spread) == (2, 16, 16, True)
    assert ray_cluster.plan_actors("cpu:128").num_cpus == 0.25
    with pytest.raises(DeviceError, match="at most 128 CPU actors"):
        ray_cluster.plan_actors("cpu:129")
    monkeypatch.setattr(ray, "nodes", lambda: nodes[:1])
    with pytest.raises(DeviceError, match="no node with a CPU"):
        ray_cluster.plan_actors("auto")


def test_cuda_specs_are_checked_as_locally_and_numbered_within_the_clusters_gpus(monkeypatch):
    """Only ``startswith("cuda")`` and the number of comma-separated parts were read: ``cuda:x``, ``cudafoo``,
    ``cuda:``, ``cuda:-1``, ``cuda:0,cpu`` and ``cuda:5`` (2 GPUs) started GPU actors, ``cuda:0,cuda:0`` two of them;
    the local engine refuses each (exit 9)."""
    ray = pytest.importorskip("ray")
    from tokembed.engine import ray_cluster
    from tokembed.errors import DeviceError

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}},
                                               {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}])
    for bad in ("cuda:x", "cudafoo", "cuda:", "cuda:-1", "cuda:0,cpu", "cuda:0,cuda"):
        with pytest.raises(DeviceError, match="is not cuda:N"):
            ray_cluster.plan_actors(bad)
    with pytest.raises(DeviceError, match="listed twice"):
        ray_cluster.plan_actors("cuda:0,cuda:00")
    with pytest.raises(DeviceError, match=r"cuda:2 does not exist \(2 CUDA device\(s\) on the Ray cluster\)"):
        ray_cluster.plan_actors("cuda:0,cuda:2")
    assert ray_cluster.plan_actors("cuda:0,cuda:1").count == 2  # on any nodes: here one GPU each
    assert ray_cluster.plan_actors("cuda:1").count == ray_cluster.plan_actors("cuda").count == 1
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 8.0}}])
    with pytest.raises(DeviceError, match="no CUDA device on the Ray cluster") as refused:
        ray_cluster.plan_actors("cuda")
    assert refused.value.hint == "use --devices cpu (or cpu:N)"


def test_a_malformed_devices_value_is_refused_before_the_model_loads_or_the_cluster_is_asked(cli, tmp_path):
    """It was refused once connected, after the model loaded and "re-encoding everything" was printed."""
    corpus = write_parquet(tmp_path / "corpus.parquet", corpus_rows(3))
    result = cli("encode", corpus, "-o", tmp_path / "index", "-m", tmp_path / "no-model", "--engine", "ray",
                 "--ray-address", "127.0.0.1:1", "--devices", "cuda:0,cuda:0")
    assert result.exit_code == 9, result.stderr
    assert "--devices cuda:0,cuda:0: a device is listed twice" in result.stderr
    assert "no-model" not in result.stderr and not (tmp_path / "index").exists()
