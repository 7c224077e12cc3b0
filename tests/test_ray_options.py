"""The Ray engine's pieces in process, without a cluster (``ray.remote`` faked where an actor starts): a chunk
worker stages exactly the local rows, a full disk under a staged chunk, ranges of a chunk's batches,
``--ray-address`` / ``RAY_ADDRESS`` forms, the staging folder, path variables and UTF-8 mode the actors get, and
the actor plan for ``--devices`` (``ray.nodes`` faked), and a resumed run's count of the chunks a stopped run staged
(actors faked in process). The cluster tests are in ``test_ray_engine.py``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from helpers import write_parquet
from test_devices import corpus_rows


def test_a_chunk_worker_stages_exactly_the_local_rows_and_reuses_them(checkpoint_store, tmp_path):
    from tokembed.embedder import Embedder
    from tokembed.engine.ray import ChunkWorker
    from tokembed.engine.ray_staging import chunk_key, read_staged
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
    from tokembed.engine.ray_staging import write_staged
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
    from tokembed.engine.ray import ChunkWorker, RayRunner, batch_ranges
    from tokembed.engine.ray_staging import chunk_key, read_staged
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
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    with pytest.raises(DeviceError, match="--ray-address auto: no running Ray cluster found"):
        ray_engine.cluster_address("auto")
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.1.2.3:6379\n")
    assert ray_engine.cluster_address("auto") == "10.1.2.3:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6380")
    assert ray_engine.cluster_address("auto") == "10.9.9.9:6380"
    with pytest.raises(UsageError, match="expected auto or HOST:PORT"):
        ray_engine.connect("nohostport")


def test_ray_address_auto_reads_the_file_where_ray_start_wrote_it(monkeypatch, tmp_path):
    """``ray start`` records its address under ``$RAY_TMPDIR``, else ``$TMPDIR`` (Linux), else /tmp; a fixed
    /tmp/ray path missed a cluster started with TMPDIR set and took a stale /tmp record for it."""
    from tokembed.engine import ray_cluster as ray_engine

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    for name in ("ray_tmp", "tmp"):
        (tmp_path / name / "ray").mkdir(parents=True)
    (tmp_path / "tmp" / "ray" / "ray_current_cluster").write_text("10.0.0.1:6379\n")
    (tmp_path / "ray_tmp" / "ray" / "ray_current_cluster").write_text("10.0.0.2:6379\n")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    assert ray_engine.cluster_address("auto") == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray_tmp"))  # Ray's own variable wins
    assert ray_engine.cluster_address("auto") == "10.0.0.2:6379"


def test_ray_address_env_auto_is_the_local_cluster_and_a_bad_one_is_named_as_from_ray_address(monkeypatch, tmp_path):
    """``RAY_ADDRESS=auto`` (what Ray itself accepts) was refused as "--ray-address 'auto': expected auto or
    HOST:PORT", naming a flag that was not given."""
    from tokembed.engine import ray_cluster as ray_engine
    from tokembed.errors import DeviceError, UsageError

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    with pytest.raises(DeviceError, match="RAY_ADDRESS is auto and no `ray start` on this machine"):
        ray_engine.cluster_address("auto")
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.1.2.3:6379\n")
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
    assert env == {"TOKEMBED_CACHE": str(tmp_path / "cache"), "HF_HOME": "/abs/hf", "HF_HUB_OFFLINE": "1", "PYTHONUTF8": "1"}


def test_actors_start_in_utf8_mode_and_one_that_is_not_refuses_a_name_it_would_misread(monkeypatch, tmp_path):
    """An actor's interpreter starts with the environment of `ray start`: under ``LC_ALL=C PYTHONUTF8=0`` it
    encoded ``idx-é`` as ASCII (exit 9 "the index's staging folder .../idx-é/staging is not there", a false reason)
    and could not open ``clîp.mp4`` (exit 3), whatever the driver's locale. Actors get ``PYTHONUTF8=1``; one that
    still reads names otherwise (a worker started with ``-E``) says so, naming the node and the path."""
    from types import SimpleNamespace

    import torch

    from tokembed.engine import ray as ray_runner
    from tokembed.engine.ray_cluster import ActorPlan
    from tokembed.errors import DeviceError
    from tokembed.sources.video import Video

    ray = pytest.importorskip("ray")
    started = {}

    class ActorClass:
        def options(self, **options):
            started.update(options)
            return self

        def remote(self, *args):
            return SimpleNamespace(loaded=SimpleNamespace(remote=object))  # an actor handle: ``loaded`` is watched

    monkeypatch.setattr(ray_runner, "connect", lambda address: ("127.0.0.1:1", False))
    monkeypatch.setattr(ray_runner, "plan_actors", lambda devices: ActorPlan(1, 1, 0, 1, spread=False))
    monkeypatch.setattr(ray, "remote", lambda cls: ActorClass())
    monkeypatch.setattr(ray, "wait", lambda refs, num_returns, timeout: (refs, []))  # the runner's ready watch
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: None)
    spec = SimpleNamespace(fingerprint="f", weights_sha256="w", settings=None)
    job = SimpleNamespace(output=tmp_path / "index", batch_tokens=64, devices="cpu", ray_address=None)
    runner = ray_runner.RayRunner(spec, job, encoder=None)
    runner.close()
    assert started["runtime_env"]["env_vars"]["PYTHONUTF8"] == "1"  # the env Ray starts the actor's interpreter with
    # The ready watch called the real ray.wait, which ran ray.init() in its thread: a local Ray head, or a stale
    # /tmp/ray/ray_current_cluster retried, still going at interpreter exit (an abort, exit 134, after "passed").
    assert not runner._ready_watch.is_alive() and not ray.is_initialized()

    monkeypatch.setattr(ray_runner, "names_read_as_utf8", lambda: False)
    threads = torch.get_num_threads()
    def spec_of(model):
        return SimpleNamespace(model=model, flags=SimpleNamespace(base_model=None), load=lambda device: None)

    with pytest.raises(DeviceError, match="node .*: /ck/bërt: this Ray actor reads file names as .*, not as UTF-8"):
        ray_runner.ChunkWorker(spec_of("/ck/bërt"), 0, "cpu", threads).encode("k", ["text"], 64, str(tmp_path))
    worker = ray_runner.ChunkWorker(spec_of("/ck/bert"), 0, "cpu", threads)
    staging = tmp_path / "idx-é" / "staging"
    with pytest.raises(DeviceError, match=re.escape(f"{staging}: this Ray actor reads file names as")) as raised:
        worker.encode("k", ["text"], 64, str(staging))
    assert "ray start" in raised.value.hint
    video = Video("clîp.mp4", str(tmp_path / "clîp.mp4"), None, 1, 1.0, 2, 2, 0, 1)
    with pytest.raises(DeviceError, match="clîp.mp4: this Ray actor reads file names as"):
        worker.encode("k", [video], 64, str(tmp_path))


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


def test_an_unreachable_actor_is_not_reported_as_retries_exhausted(monkeypatch):
    """When the cluster's head died mid-run, every actor call raised Ray's ``ActorUnavailableError`` and the run said
    "died and its chunk's retries are exhausted", with the out-of-memory hint, though no restart was ever tried."""
    import ray
    from ray.exceptions import ActorUnavailableError

    from tokembed.engine.ray import RayRunner
    from tokembed.errors import DeviceError

    def unreachable(ref):
        raise ActorUnavailableError("RpcError: Connection refused", None)

    monkeypatch.setattr(ray, "get", unreachable)
    runner = object.__new__(RayRunner)
    runner._held = {0: 1}
    with pytest.raises(DeviceError, match="ray actor 0 became unreachable") as caught:
        runner._collect_part(0, object(), 1, "key")
    assert "retries are exhausted" not in str(caught.value) and "out-of-memory" not in caught.value.hint
    assert "resumes where this run stopped" in caught.value.hint
    assert runner._held == {0: 0}


def test_a_resumed_run_counts_the_chunks_the_killed_runs_actors_staged_as_resumed(monkeypatch, tmp_path):
    """A run that resumed a killed ``--engine ray`` run counted the chunks its actors had staged, which this run's
    actors only read back, in its ``encoded_tokens`` and tokens/s. They are the interrupted run's, as its journaled
    shards are: ``resumed_tokens_in``, in the useful-token fraction of the whole generation. (Ray faked: one actor,
    run in process; the first run stops after its first shard, the second chunk already staged.)"""
    from types import SimpleNamespace

    import torch

    import tokembed.encode as encode_module
    from tokembed import EncodeJob, encode_corpus
    from tokembed.engine import ray as ray_runner
    from tokembed.engine.ray_cluster import ActorPlan
    from tokembed.errors import DeviceError
    from tokembed.index.reader import read_manifest

    ray = pytest.importorskip("ray")

    class ActorClass:
        def options(self, **options):
            return self

        def remote(self, *args):  # an actor handle whose method calls run at once, the result its own "ref"
            worker = ray_runner.ChunkWorker(*args)
            return SimpleNamespace(**{name: SimpleNamespace(remote=getattr(worker, name)) for name in ("loaded", "encode")})

    monkeypatch.setattr(ray_runner, "connect", lambda address: ("127.0.0.1:1", False))
    monkeypatch.setattr(ray_runner, "plan_actors", lambda devices: ActorPlan(1, 1, 0, torch.get_num_threads(), spread=False))
    monkeypatch.setattr(ray, "remote", lambda cls: ActorClass())
    monkeypatch.setattr(ray, "get", lambda ref: ref)
    monkeypatch.setattr(ray, "wait", lambda refs, num_returns, timeout: (refs, []))
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: None)
    corpus = write_parquet(tmp_path / "corpus.parquet", corpus_rows(40))
    out = tmp_path / "index"

    def stop_at_first_shard(event, count):
        if (event, count) == ("shard", 1):
            raise DeviceError("simulated: the run stops after its first shard")

    with monkeypatch.context() as stopped:
        stopped.setattr(encode_module, "fault_point", stop_at_first_shard)
        with pytest.raises(DeviceError, match="simulated"):
            encode_corpus(EncodeJob([corpus], out, shard_rows=10, devices="cpu", engine="ray"))
    assert len(list((out / "staging").glob("chunk-*.arrow"))) == 2  # the journaled chunk, and the next one
    summary = encode_corpus(EncodeJob([corpus], out, shard_rows=10, devices="cpu", engine="ray"))
    # the demo model stores every token it encodes: a shard's tokens are those that went through the model for it
    tokens = [shard["tokens"] for shard in read_manifest(out)["shards"]]
    assert summary.resumed_shards == 1 and len(tokens) == 4
    assert (summary.resumed_tokens_in, summary.tokens_in) == (sum(tokens[:2]), sum(tokens[2:]))
    assert summary.to_json()["encoded_tokens"] == sum(tokens[2:])
    reference = encode_corpus(EncodeJob([corpus], tmp_path / "reference", shard_rows=10, devices="cpu"))
    assert summary.resumed_computed_tokens + summary.computed_tokens == reference.computed_tokens
    assert summary.useful_token_fraction == reference.useful_token_fraction
