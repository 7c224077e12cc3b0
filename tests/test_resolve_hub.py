"""Hub ids: a network that fails or never answers falls back to the cache; an index records the snapshot it was built
on, and a commit that changes no file the model reads (a README) changes nothing, for an adapter's base too."""

from __future__ import annotations

import copy
import importlib
import shutil
import socket
import threading
import time

import pytest

from helpers import manifest
from tokembed.models.resolve import resolve_model

SHA_A, SHA_B, SHA_README = "a" * 40, "b" * 40, "7" * 40


@pytest.fixture
def online(monkeypatch):
    """HF_HUB_OFFLINE unset (as in README's crontab line), with no proxy from the environment."""
    from huggingface_hub.utils import close_session

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)  # huggingface_hub's other switch (conftest sets it)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # read at import time
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    close_session()  # the next request builds its client from this environment
    yield
    close_session()


def _client_error(name: str) -> type[Exception]:
    """An error class of the HTTP client huggingface_hub uses (httpx2, httpx, ...)."""
    from huggingface_hub.utils import get_session

    return getattr(importlib.import_module(type(get_session()).__module__.split(".")[0]), name)


def _docs(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "mars is the red planet"}\n{"id": "b", "text": "venus is hot"}\n')
    return docs


def test_a_proxy_error_falls_back_to_the_cache(checkpoint, hub_cache, tmp_path, cli, online, monkeypatch):
    """A proxy answering 407 to CONNECT: huggingface_hub re-raises httpx's ProxyError, which reached the user as a
    traceback (exit 1), although the model was cached."""
    snapshot = hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A)

    def refused(*args, **kwargs):
        raise _client_error("ProxyError")("407 Proxy Authentication Required")

    monkeypatch.setattr("huggingface_hub.HfApi.repo_info", refused)
    assert resolve_model("org/tiny").path == snapshot
    result = cli("encode", _docs(tmp_path), "--model", "org/missing", "-o", tmp_path / "index")
    assert result.exit_code == 4 and "the hub could not be reached" in result.stderr, result.output

    import huggingface_hub

    download = huggingface_hub.snapshot_download  # the hub answered, then the download's own request failed

    def failing_online(*args, local_files_only=False, **kwargs):
        return download(*args, local_files_only=True, **kwargs) if local_files_only else refused()

    monkeypatch.setattr("huggingface_hub.HfApi.repo_info", lambda *args, **kwargs: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing_online)
    assert resolve_model("org/tiny").path == snapshot


def test_a_network_that_never_answers_falls_back_to_the_cache_in_time(checkpoint, hub_cache, online, monkeypatch):
    """A connection accepted and never answered (a black-holing proxy, a hung mirror): snapshot_download asked the
    hub with no timeout and encode hung forever. HF_HUB_ETAG_TIMEOUT (1 s here) bounds the question."""
    snapshot = hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A)
    server, accepted = socket.create_server(("127.0.0.1", 0)), []
    threading.Thread(target=_accept_and_never_answer, args=(server, accepted), daemon=True).start()
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_ETAG_TIMEOUT", 1)
    result, started = [], time.monotonic()
    worker = threading.Thread(target=lambda: result.append(resolve_model("org/tiny")), daemon=True)
    worker.start()
    worker.join(timeout=20)
    took = time.monotonic() - started
    server.close()
    for connection in accepted:
        connection.close()  # ends a request that still waits (without the fix)
    assert result and result[0].path == snapshot, f"no answer after {took:.0f} s"
    assert took < 10  # 1 s, and huggingface_hub's own 3 s look-up of its agent registry


def test_a_hub_that_stalls_after_its_first_answer_falls_back_to_the_cache_in_time(checkpoint, hub_cache, online,
                                                                                 monkeypatch):
    """A mirror that answers the question about the repo, then never the file listing: snapshot_download asked for
    it with no timeout and encode hung forever. Uncached, the error names the wait that ran out."""
    from tokembed.errors import ModelNotFoundError

    snapshot = hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A)
    server, release = _hub_answering_only_repo_info(SHA_B)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_ETAG_TIMEOUT", 1)
    try:
        result, started = [], time.monotonic()
        worker = threading.Thread(target=lambda: result.append(resolve_model("org/tiny")), daemon=True)
        worker.start()
        worker.join(timeout=30)
        assert result and result[0].path == snapshot, f"no answer after {time.monotonic() - started:.0f} s"
        assert time.monotonic() - started < 10  # 1 s, and huggingface_hub's 1 s wait before its retry
        shutil.rmtree(snapshot.parent.parent)
        with pytest.raises(ModelNotFoundError, match=r"the hub could not be reached \(no answer to GET .*/tree/"
                                                     r".* within 1 s \(HF_HUB_ETAG_TIMEOUT\)\)"):
            resolve_model("org/tiny")
    finally:
        release.set()
        server.shutdown()


def _hub_answering_only_repo_info(sha: str):
    """A hub in a thread that answers what the repo is (its commit ``sha``), 404 to huggingface_hub's look-up of
    agent harnesses, and nothing else until ``release`` is set."""
    import http.server
    import json

    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith("/api/models/org/tiny") and "/tree/" not in self.path:
                self._answer(200, {"id": "org/tiny", "sha": sha, "siblings": [], "private": False})
            elif self.path.startswith("/api/agent-harnesses"):
                self._answer(404, {})
            else:
                release.wait(60)

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, release


def _accept_and_never_answer(server: socket.socket, accepted: list) -> None:
    while True:
        try:
            accepted.append(server.accept()[0])
        except OSError:  # closed
            return


def _changed_weights(folder, to):
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, to)
    tensors = load_file(to / "model.safetensors")
    name = sorted(tensors)[len(tensors) // 2]
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, to / "model.safetensors", metadata={"format": "pt"})
    return to


def _adapter_over(base, folder, base_name: str):
    from colpali_engine_checkpoints import build_adapter
    from tokembed.models.registry import load_model

    return build_adapter(copy.deepcopy(load_model(base).backbone), folder, base_name, seed=1,
                         target_modules=r".*attention\.(self\.(query|value)|output\.dense)$")


def _readme_commit(hub_cache, snapshot, sha: str):
    """refs/main moves to a commit that changes the README only."""
    moved = hub_cache("org/tiny", snapshot, sha)
    (moved / "README.md").write_text("a new model card\n")
    return moved


def test_an_adapter_over_a_hub_base_survives_a_readme_commit(checkpoint, hub_cache, tmp_path, cli):
    """The adapter's fingerprint hashed the base's commit sha: a README commit on the base made score exit 5 and the
    next encode re-encode every row (a plain hub model's index stayed unchanged). score also resolved the base at
    the moved refs/main, not at the commit the index was built on, still in the cache."""
    from tokembed.embedder import Embedder

    snapshot = hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A)
    adapter = _adapter_over(snapshot, tmp_path / "lora", "org/tiny")
    docs, index = _docs(tmp_path), tmp_path / "index"
    assert cli("encode", docs, "--model", adapter, "-o", index, "--quiet").exit_code == 0
    _readme_commit(hub_cache, snapshot, SHA_README)
    scored = cli("score", index, "--query", "red planet", "-f", "jsonl")
    assert scored.exit_code == 0, scored.stderr
    assert Embedder.for_index(manifest(index)).resolved.base.revision == SHA_A
    assert cli("encode", docs, "--model", adapter, "-o", index, "--quiet").exit_code == 0
    assert manifest(index)["stats"]["unchanged"] == 2 and manifest(index)["model"]["base"]["revision"] == SHA_README


def test_an_adapter_base_that_changed_is_named(checkpoint, hub_cache, tmp_path, cli):
    """The index's base commit gone from the cache and refs/main at other weights: exit 5 named the adapter on
    both sides; it names the base and the command that downloads the commit the index was built on."""
    snapshot = hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A)
    adapter = _adapter_over(snapshot, tmp_path / "lora", "org/tiny")
    index = tmp_path / "index"
    assert cli("encode", _docs(tmp_path), "--model", adapter, "-o", index, "--quiet").exit_code == 0
    hub_cache("org/tiny", _changed_weights(snapshot, tmp_path / "other"), SHA_B)
    shutil.rmtree(snapshot)
    result = cli("score", index, "--query", "red planet", "-f", "jsonl")
    assert result.exit_code == 5
    assert f"the base model 'org/tiny' at commit {SHA_B[:12]}" in result.stderr
    assert f"is not the base of adapter '{adapter}'" in result.stderr
    assert f"hf download org/tiny --revision {SHA_A}" in result.stderr


def test_a_hub_index_whose_snapshot_was_cleaned_says_what_to_download(checkpoint, hub_cache, tmp_path, cli):
    snapshot = hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A)
    index = tmp_path / "index"
    assert cli("encode", _docs(tmp_path), "--model", "org/tiny", "-o", index, "--quiet").exit_code == 0
    hub_cache("org/tiny", _changed_weights(snapshot, tmp_path / "other"), SHA_B)
    shutil.rmtree(snapshot)
    result = cli("score", index, "--query", "red planet", "-f", "jsonl")
    # the commit the index was built on is what score loads, not the one refs/main moved to (exit 5 named it too)
    assert result.exit_code == 4 and f"hf download org/tiny --revision {SHA_A}" in result.stderr, result.output
    shutil.rmtree(hub_cache.root / "models--org--tiny")  # the whole repo gone from the cache
    result = cli("score", index, "--query", "red planet", "-f", "jsonl")
    assert result.exit_code == 4 and f"hf download org/tiny --revision {SHA_A}" in result.stderr, result.output


def test_a_hub_index_is_scored_from_its_snapshot_with_its_revision_recorded(checkpoint, hub_cache, tmp_path, cli):
    """score loads the index's snapshot folder: the recorded --revision goes with the hub id only (a revision with a
    folder is refused), here and in a server that answers /search for the index."""
    from tokembed.serve.index_search import ServedIndex
    from tokembed.settings import EncodeFlags

    hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A, ref="v1")
    index = tmp_path / "index"
    encoded = cli("encode", _docs(tmp_path), "--model", "org/tiny", "--revision", "v1", "-o", index, "--quiet")
    assert encoded.exit_code == 0
    assert cli("score", index, "--query", "red planet", "-f", "jsonl").exit_code == 0
    where, flags, _ = ServedIndex(index).load_plan(None, EncodeFlags())
    assert where.endswith(SHA_A) and flags.revision is None
