"""``tokembed serve`` at its edges: option values no server can run with, API keys beyond ASCII, a failure of the
batcher's wait, and a shutdown during a forward pass or a tokenization longer than the grace (live servers from
``serve_support``)."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from helpers import serve_process  # noqa: E402


@pytest.mark.parametrize(
    "args, says",
    [
        (["--batch-window-ms", "nan"], "--batch-window-ms must be a number from 0 to 60000, got nan"),
        (["--batch-window-ms", "inf"], "--batch-window-ms must be a number from 0 to 60000, got inf"),
        (["--batch-window-ms", "1e300"], "--batch-window-ms must be a number from 0 to 60000"),
        (["--max-body-mb", "inf"], "--max-body-mb must be a finite number of MiB, got inf"),
        (["--max-body-mb", "nan"], "--max-body-mb"),  # typer's own minimum check refuses it
        (["--api-key", " s3cret "], "--api-key starts or ends with whitespace"),
        (["--api-key", "s3cret\n"], "--api-key starts or ends with whitespace"),
        (["--api-key", ""], "--api-key is empty"),
        (["--api-key", "s3c\x00ret"], "--api-key holds a control character"),
        (["--log-level", "loud"], "--log-level 'loud': must be one of critical, error, warning, info, debug, trace"),
    ],
)
def test_options_no_server_could_run_with_are_usage_errors(cli, colbert_ckpt, args, says):
    # a busy port: without the check the command fails later, at the bind, instead of serving forever
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        result = cli("serve", "--model", colbert_ckpt, "--port", busy.getsockname()[1], *args)
    assert result.exit_code == 2 and says in result.stderr, result.stderr
    assert "Traceback" not in result.output


def test_an_empty_api_key_variable_is_refused_not_taken_for_unset(cli, colbert_ckpt, monkeypatch):
    """click reads TOKEMBED_API_KEY="" as unset: the server ran without a key (KEY=$(cat missing-file))."""
    monkeypatch.setenv("TOKEMBED_API_KEY", "")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        result = cli("serve", "--model", colbert_ckpt, "--port", busy.getsockname()[1])
    assert result.exit_code == 2 and "TOKEMBED_API_KEY is set but empty" in result.stderr, result.stderr


def test_a_non_ascii_api_key_matches_the_utf8_header_a_client_sends(colbert_ckpt):
    from serve_support import LiveServer, _service

    key = "clé-ünïcode-鍵"
    server = LiveServer(_service(colbert_ckpt), api_key=key)
    try:
        def status(token: bytes) -> int:  # curl and httpx send a non-ASCII header value as its UTF-8 bytes
            headers = {"Authorization": b"Bearer " + token}
            return httpx.post(server.url + "/pooling", json={"input": "hello"}, headers=headers, timeout=30).status_code

        assert status(key.encode("utf-8")) == 200
        assert status(b"  " + key.encode("utf-8")) == 200  # spaces around the token are not part of it
        assert status(key.encode("utf-8")[:-1]) == 401
        assert status(key.encode("utf-8").decode("latin-1").encode("utf-8")) == 401  # the key's mojibake
    finally:
        server.stop()


def test_a_failure_while_waiting_for_a_round_answers_the_queued_requests():
    from tokembed.engine.runner import BatchOutput
    from tokembed.models.steps import Tokenized
    from tokembed.serve.batcher import DynamicBatcher

    class Echo:
        encoder = None

        def run(self, items):
            return BatchOutput([(np.zeros((len(i.ids), 2), np.float32), i.ids) for i in items], 0, 0)

    batcher = DynamicBatcher({"raw": Echo()}, budget=1000, window=float("inf"))  # its wait raises OverflowError
    item = Tokenized(np.arange(3), 3)

    async def submit():
        return await asyncio.wait_for(batcher.submit("raw", [item]), timeout=10)

    try:
        with pytest.raises(OverflowError):
            asyncio.run(submit())
        batcher.window = 0.01
        rows = asyncio.run(submit())  # the worker goes on
    finally:
        batcher.close()
    assert len(rows) == 1 and batcher.stats.failed_requests == 1


def test_a_batcher_failure_reaches_the_client_as_a_json_500(colbert_ckpt, monkeypatch):
    from serve_support import LiveServer, _service

    server = LiveServer(_service(colbert_ckpt))
    try:
        monkeypatch.setattr(server.service.batcher, "window", float("inf"))
        failed = httpx.post(server.url + "/pooling", json={"input": "hello"}, timeout=15)
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "InternalServerError"
        assert failed.json()["error"]["message"].startswith("OverflowError")
        monkeypatch.undo()
        assert httpx.post(server.url + "/pooling", json={"input": "hello"}, timeout=15).status_code == 200
    finally:
        server.stop()


# the server process with a forward pass that computes in torch for a minute: longer than the shutdown grace (5 s)
# and the batcher's wait (10 s); the interpreter finalizing under torch's busy threads aborted (exit 134)
_SLOW_FORWARD_SERVER = """
import sys, time, torch
from tokembed.engine.runner import BatchExecutor
run = BatchExecutor.run
def slow_run(self, items):
    print("test: forward started", file=sys.stderr, flush=True)
    a, deadline = torch.randn(600, 600), time.monotonic() + 60
    while time.monotonic() < deadline:
        a = torch.tanh(a @ a)
    return run(self, items)
BatchExecutor.run = slow_run
from cli.main import main
main()
"""


def _sigterm_while_running(server_code: str, checkpoint, started: str):
    """A server from ``server_code``, one request, SIGTERM once its stderr says ``started``: (the response, the exit
    status, seconds from the signal to the exit, the rest of stderr)."""

    process = subprocess.Popen(
        [sys.executable, "-c", server_code, "serve", "--model", str(checkpoint), "--port", "0", "--log-level", "warning"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stderr.readline()
        assert "tokembed: serving" in line, line
        url = line.rsplit(" at ", 1)[1].strip()
        answers = {}
        client = threading.Thread(
            target=lambda: answers.setdefault("pooling", httpx.post(url + "/pooling", json={"input": "hello"}, timeout=60))
        )
        client.start()
        while started not in line:
            line = process.stderr.readline()
            assert line, f"the server ended before {started!r}"
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        client.join(30)
        status = process.wait(timeout=30)
        return answers["pooling"], status, time.monotonic() - signalled, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.slow
def test_sigterm_during_a_forward_longer_than_the_grace_answers_503_and_exits_0(colbert_ckpt):
    response, status, _, rest = _sigterm_while_running(_SLOW_FORWARD_SERVER, colbert_ckpt, "test: forward started")
    assert response.status_code == 503 and response.json()["error"]["type"] == "ServiceUnavailableError"
    assert status == 0
    assert "tokembed: server stopped" in rest and "terminate called" not in rest, rest


# the server process with a tokenization that sleeps for a minute (as a 15 MB single word takes half of one): the
# lane's thread cannot be stopped, and the interpreter's exit waited for it (the process gone 25-32 s after SIGTERM)
_SLOW_TOKENIZER_SERVER = """
import sys, time
from tokembed.serve.service import EmbeddingService
tokenize = EmbeddingService._tokenize_now
def slow_tokenize(self, *args):
    print("test: tokenizing", file=sys.stderr, flush=True)
    time.sleep(60)
    return tokenize(self, *args)
EmbeddingService._tokenize_now = slow_tokenize
from cli.main import main
main()
"""


@pytest.mark.slow
def test_sigterm_during_a_tokenization_longer_than_the_grace_exits_within_15_s(colbert_ckpt):
    response, status, seconds, rest = _sigterm_while_running(_SLOW_TOKENIZER_SERVER, colbert_ckpt, "test: tokenizing")
    assert response.status_code == 503 and status == 0
    assert seconds < 20  # the 5 s grace, then 10 s for the tokenization
    assert "tokembed: server stopped (a tokenization still running was abandoned)" in rest, rest


def test_a_second_signal_on_an_idle_server_stops_it_without_a_traceback(colbert_ckpt):
    """SIGTERM then SIGINT (or Ctrl-C twice): uvicorn's force exit skipped the lifespan's shutdown, and its task,
    cancelled at the end, was logged as an ERROR with a KeyboardInterrupt traceback; the app has no lifespan."""
    with serve_process(colbert_ckpt) as (process, _):
        process.send_signal(signal.SIGTERM)
        time.sleep(0.02)  # apart: Python runs pending handlers by signal number, SIGINT's first
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        rest = process.stderr.read()
        assert "tokembed: server stopped" in rest and "Traceback" not in rest, rest
