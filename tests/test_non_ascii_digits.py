"""A number typed with non-ASCII digits ("cpu:²") passed ``str.isdigit()`` and then crashed ``int()``: a traceback
(exit 1). Every such value is now refused as a word is ("cpu:x"), with the same error and exit code."""

from __future__ import annotations

import asyncio

import pytest

from helpers import write_parquet
from test_devices import COMMON, corpus_rows
from tokembed.errors import DeviceError, UsageError

SUPERSCRIPT_TWO = "\u00b2"  # "²": isdigit() is true, int() refuses it


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, checkpoint_store):
    """A corpus, the tiny ColBERT checkpoint and its index."""
    root = tmp_path_factory.mktemp("digits")
    corpus = write_parquet(root / "corpus.parquet", corpus_rows(6))
    model = checkpoint_store("pylate_bert")
    from cli.main import run

    assert run(["encode", str(corpus), "-o", str(root / "index"), "-m", str(model), "-q", "--devices", "cpu",
                *map(str, COMMON)]) == 0
    return corpus, model, root / "index"


def test_devices_and_score_device(tiny, tmp_path, cli):
    from tokembed.engine.device import parse_devices

    with pytest.raises(DeviceError, match="N in cpu:N must be a positive number"):
        parse_devices(f"cpu:{SUPERSCRIPT_TWO}")
    corpus, model, index = tiny
    for spec in ("cpu:x", f"cpu:{SUPERSCRIPT_TWO}"):
        result = cli("encode", corpus, "-o", tmp_path / "index", "-m", model, "--devices", spec)
        assert result.exit_code == 9 and "N in cpu:N must be a positive number" in result.stderr, result.stderr
        result = cli("score", "--query", "alpha", index, "--device", spec)
        assert result.exit_code == 9 and f"--device {spec}: N in cpu:N" in result.stderr, result.stderr


def test_cpu_lanes(tiny, tmp_path, cli, monkeypatch):
    from tokembed.engine.local import default_lanes

    monkeypatch.setenv("TOKEMBED_CPU_LANES", SUPERSCRIPT_TWO)
    with pytest.raises(UsageError, match="TOKEMBED_CPU_LANES must be a whole number"):
        default_lanes("cpu")
    monkeypatch.setenv("TOKEMBED_GPU_LANES", SUPERSCRIPT_TWO)
    with pytest.raises(UsageError, match="TOKEMBED_GPU_LANES must be a whole number"):
        default_lanes("cuda:0")
    corpus, model, _ = tiny
    result = cli("encode", corpus, "-o", tmp_path / "index", "-m", model, "--devices", "cpu")
    assert result.exit_code == 2 and "TOKEMBED_CPU_LANES must be a whole number" in result.stderr, result.stderr


def test_ray_address_port_and_ray_devices(monkeypatch):
    ray = pytest.importorskip("ray")
    from tokembed.engine import ray_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UsageError, match="expected auto or HOST:PORT"):
        ray_cluster.connect(f"10.1.2.3:63{SUPERSCRIPT_TWO}")
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 4.0}}])
    assert ray_cluster.plan_actors("cpu:2").count == 2
    with pytest.raises(DeviceError, match="N in cpu:N must be a positive number"):  # local's words
        ray_cluster.plan_actors(f"cpu:{SUPERSCRIPT_TWO}")
    with pytest.raises(DeviceError, match="empty"):  # an unset "$GPUS" is not every device of the cluster
        ray_cluster.plan_actors("")


def test_serve_content_length_is_read_as_no_declared_length():
    """The body limit then applies while the body is read, as for a request without Content-Length."""
    from tokembed.serve.app import _Guard

    seen = []

    async def app(scope, receive, send):
        seen.append(await receive())

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        raise AssertionError(f"the guard answered itself: {message}")

    scope = {"type": "http", "path": "/score", "headers": [(b"content-length", SUPERSCRIPT_TWO.encode("latin-1"))]}
    asyncio.run(_Guard(app, None, 1000, 1024)(scope, receive, send))
    assert seen == [{"type": "http.request", "body": b"{}", "more_body": False}]
