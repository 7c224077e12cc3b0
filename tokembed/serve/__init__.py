"""``tokembed serve``: a vLLM-compatible HTTP API over one loaded checkpoint (optional extra ``serve``).

    service.py   EmbeddingService: the model, tokenization, pooling / score / rerank (no HTTP)
    batcher.py   DynamicBatcher: concurrent requests -> token-budget batches on one worker thread
    schemas.py   request / response bodies (pydantic), vLLM's field names
    app.py       create_app(service): FastAPI routes, error envelope, API key, body limit
    lora.py      --lora-modules: adapters injected unmerged, one batcher queue per adapter
    index_search.py  --index: POST /search over an index, queries encoded as ``score`` encodes them

``run_server`` is what the CLI calls: check the optional dependencies, bind the socket, load the model,
run uvicorn until interrupted. Nothing here imports FastAPI until it is used.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import socket
from collections.abc import Callable
from typing import NoReturn

from tokembed.errors import UsageError

_LAZY = {
    "create_app": "tokembed.serve.app",
    "EmbeddingService": "tokembed.serve.service",
    "ServeOptions": "tokembed.serve.options",
    "APIError": "tokembed.serve.schemas",
    "DynamicBatcher": "tokembed.serve.batcher",
}
_REQUIRED = ("fastapi", "uvicorn", "pydantic")


def __getattr__(name: str):
    if name in _LAZY:
        require_serve_deps()
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokembed.serve' has no attribute {name!r}")


def require_serve_deps() -> None:
    missing = [name for name in _REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"tokembed serve needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed",
            hint="pip install 'tokembed[serve]'",
        )


def run_server(
    model: str | None,
    host: str = "127.0.0.1",
    port: int = 8000,
    devices: str = "auto",
    options=None,
    api_key: str | None = None,
    max_body_bytes: int | None = None,
    trust_remote_code: bool = False,
    log_level: str = "info",
    announce: Callable[[str], None] = lambda line: None,
    index: str | None = None,
    abandon: Callable[[list[str]], NoReturn] | None = None,
    base_model: str | None = None,
) -> None:
    """Serve ``model`` on ``host:port`` until SIGINT/SIGTERM (``index``: also ``/search`` over that index, its
    model by default; ``base_model``: an adapter's base, as ``encode --base-model``). Raises ``UsageError`` /
    ``ModelError`` / ``DeviceError``.

    ``abandon``: called with what still runs (and expected not to return) when a forward pass or a tokenization
    outlives the shutdown grace and the service's 10 s wait (``EmbeddingService.close``). The CLI ends the process
    there: finalizing the interpreter while torch's threads compute aborts it (``std::terminate``), and it would
    wait for a tokenizer thread to finish (a 15 MB single word can take half a minute). In-process callers leave
    it None; the batcher's daemon thread then finishes its batch on its own, and the interpreter's exit waits for
    the tokenizer's."""
    require_serve_deps()
    import uvicorn

    from tokembed.engine.device import resolve_one_device
    from tokembed.serve.app import DEFAULT_MAX_BODY_BYTES, create_app
    from tokembed.serve.options import check_api_key
    from tokembed.serve.service import EmbeddingService, ServeOptions

    options = options or ServeOptions()
    options.check()
    check_api_key(api_key)
    device = resolve_one_device(devices, "--devices", "serve")  # one server per GPU behind a load balancer for more
    sock = bind_socket(host, port)
    try:
        service = EmbeddingService.load(model, device, options, trust_remote_code, index, base_model)
        try:
            app = create_app(service, api_key, max_body_bytes or DEFAULT_MAX_BODY_BYTES)
            profiles = ", ".join(service.profiles)
            announce(
                f"tokembed: serving {service.name!r} ({profiles}; dim {service.embedder.output_dim}, "
                f"max_model_len {service.max_model_len}) on {device} at http://{_url_host(host)}:{sock.getsockname()[1]}"
            )
            if index is not None:
                announce(f"tokembed: POST /search answers from the index at {index} ({service.index.manifest['totals']['rows']} documents "
                         "when it started; a new generation is picked up by the next request)")
            if api_key is None and not _is_loopback(host):
                announce(f"tokembed: warning: listening on {host} without --api-key: anyone who can reach it can use it")
            # lifespan "off": the app has no start-up or shut-down hooks, and a second Ctrl-C (uvicorn's force exit, which
            # skips the lifespan's shutdown) left its task to be cancelled, which uvicorn logged as an error with a traceback
            config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5, access_log=log_level == "debug",
                                    lifespan="off")
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            running = service.close()
            if running and abandon is not None:
                abandon(running)
    finally:
        sock.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port). Fails early, before the model loads."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, socket.gaierror) as exc:
        raise UsageError(f"--host {host}: cannot listen there ({exc})") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="pick another --port") from exc
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
