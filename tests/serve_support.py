"""What the ``tokembed serve`` tests share: a live server on 127.0.0.1 (uvicorn in a thread, a free port), real
HTTP. The servers are module-scoped fixtures in ``conftest.py``.

Servers (each loads its model once per test module):
* ``colbert_server``  the tiny PyLate BERT checkpoint (raw + query + document profiles), no API key;
* ``guarded_server``  the same checkpoint, ``--api-key``, a 1 s batch window (to catch a client leaving
  while its request waits) and a small body limit;
* ``minilm_server``   the demo MiniLM (raw only), for parity with ``tokembed encode --mode raw``.

References are computed here: ``Embedder`` / ``tokembed encode`` for vectors, numpy for MaxSim.
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np

from tokembed.embedder import Embedder
from tokembed.settings import EncodeFlags

API_KEY = "s3cret-key"
QUERIES = ["what is the capital of france", "red planet", "hello world"]
DOCUMENTS = [
    "paris is the capital of france.",
    "berlin is the capital of germany, a large city.",
    "mars is known as the red planet!",
    "the cat and the dog read a book",
]


class LiveServer:
    """``create_app(service)`` served by uvicorn on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, service, **app_options) -> None:
        import uvicorn

        from tokembed.serve import bind_socket, create_app

        self.service = service
        sock = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(create_app(service, **app_options), log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.01)

    def post(self, path: str, body, **kwargs) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=30, **kwargs)

    def metrics(self, headers=None) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", headers=headers, timeout=10).text
        return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line}

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.service.close()


def _service(path, **options):
    from tokembed.serve import EmbeddingService, ServeOptions

    return EmbeddingService.load(str(path), "cpu", ServeOptions(**options))


def _pool(server, inputs, **options) -> list[np.ndarray]:
    response = server.post("/pooling", {"model": None, "input": inputs, **options})
    assert response.status_code == 200, response.text
    return [np.asarray(item["data"], dtype=np.float32) for item in response.json()["data"]]


def _reference(path, texts, **flags) -> list[tuple[np.ndarray, np.ndarray]]:
    embedder = Embedder.load(str(path), EncodeFlags(store_dtype="float32", **flags))
    return embedder.embed(texts)


def _maxsim(q: np.ndarray, d: np.ndarray) -> float:
    """Brute force: for every query token the best document token, summed."""
    return float(sum(max(float(np.dot(qv, dv)) for dv in d) for qv in q))
