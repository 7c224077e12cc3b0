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

import pytest

from helpers import manifest, write_parquet
from test_devices import COMMON, assert_same_rows, corpus_rows, encode, shard_digests

# Each cluster test (marked ray and slow) runs 1-3 real encodes (Ray connect, actor start-up, model load):
# ~30-60 s each on 2 shared cores. The in-process tests (test_ray_options.py) need neither Ray nor a cluster.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """HOST:PORT of a one-node, 2-CPU Ray cluster on 127.0.0.1, stopped (its whole process group) afterwards."""
    yield from _one_node_cluster(tmp_path_factory, os.environ)


@pytest.fixture
def c_locale_cluster(tmp_path_factory):
    """Another, for one test, started where file names are read as ASCII (a cron line's ``LC_ALL=C`` with
    ``PYTHONUTF8=0``): its actors' interpreters start with that environment."""
    yield from _one_node_cluster(tmp_path_factory, {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"})


def _one_node_cluster(tmp_path_factory, environ):
    port = _free_port()
    log = open(tmp_path_factory.mktemp("ray") / "ray-start.log", "w")
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        env={**environ, **LOOPBACK}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
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
def test_the_actors_model_load_is_load_seconds_not_encode_seconds(work, cluster, tmp_path):
    """As with ``--devices cpu:2`` (``test_devices``): the actors load their model once the driver holds the lock."""
    corpus, edited, model, local, _ = work
    pause = 6.0  # each actor sleeps this long before loading its model
    hook = {"TOKEMBED_TEST_PAUSE_AT": "load", "TOKEMBED_TEST_PAUSE_SECONDS": str(pause)}
    result = ray_encode(corpus, tmp_path / "index", cluster, "--devices", "cpu:2", "--log-format", "json", env=hook, model=model)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["load_seconds"] > pause and summary["encode_seconds"] < pause
    assert shard_digests(tmp_path / "index") == shard_digests(local)


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


@pytest.mark.ray
@pytest.mark.slow
def test_actors_of_a_cluster_started_under_lc_all_c_read_a_name_as_the_driver_does(work, c_locale_cluster, tmp_path):
    """Actors' interpreters started with `ray start`'s ``LC_ALL=C PYTHONUTF8=0`` and encoded ``idx-é`` as ASCII:
    exit 9 "the index's staging folder .../idx-é/staging is not there" (a video ``clîp.mp4``: exit 3)."""
    corpus, _, model, local, _ = work
    out = tmp_path / "idx-é"
    result = ray_encode(corpus, out, c_locale_cluster, "--devices", "cpu", model=model)
    assert result.returncode == 0, result.stderr
    assert shard_digests(out) == shard_digests(local)
    assert not (out / "staging").exists()


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
