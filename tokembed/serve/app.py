"""The HTTP face of ``tokembed serve``: a FastAPI app over an ``EmbeddingService``.

    POST /pooling  /v1/pooling           token embeddings (vLLM's pooling API, task token_embed)
    POST /score    /v1/score             MaxSim scores, 1:1, 1:N or N:N
    POST /rerank   /v1/rerank /v2/rerank documents by MaxSim to one query, best first
    POST /search   /v1/search            with --index: each query's best documents of the index (as score)
    GET  /v1/models                      the served model
    GET  /health                         200 while the batch worker is alive, else 503
    GET  /metrics                        Prometheus text: requests, batches, tokens, dropped requests
    GET  /version

Every error is a JSON body in vLLM's envelope ``{"error": {"message", "type", "param", "code"}}``:
malformed JSON and wrong types 400, unknown model 404, body over the size limit 413, missing or wrong
API key 401 (everything but ``/health`` is protected when a key is set), shutting down 503, an index folder that
holds no complete generation and none was opened before (a deploy swapping it) 503, the server's own failures
500: an index damaged or rebuilt with other settings (until a restart), a device failure, a forward that gives NaN
or inf (each message logged once at error level, not at every request it answers), anything unexpected (logged
with its traceback; the server goes on). Client errors (4xx) are the client's to read: not logged. A client that disconnects while its
request waits cancels it: the batcher drops its inputs before their batch runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import hashlib
import json
import logging
import secrets

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokembed.errors import BadInputError, IndexUnavailableError, TokembedError, UsageError
from tokembed.serve.batcher import BatcherClosed
from tokembed.serve.input_checks import inputs_limit
from tokembed.serve.schemas import (
    APIError,
    ErrorResponse,
    PoolingRequest,
    PoolingResponse,
    RerankRequest,
    RerankResponse,
    ScoreRequest,
    ScoreResponse,
    SearchRequest,
)
from tokembed.serve.service import EmbeddingService

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
log = logging.getLogger("tokembed.serve")
_ERRORS = {400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 500: {"model": ErrorResponse}}


def create_app(
    service: EmbeddingService, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> FastAPI:
    """The ASGI app serving ``service``. ``api_key``: required as ``Authorization: Bearer KEY``."""
    from tokembed import __version__

    app = FastAPI(title="tokembed", version=__version__, description="Late-interaction token embeddings, vLLM-compatible.")
    app.router.route_class = _ParsingRoute
    app.state.service = service
    app.state.failures = ServerFailures()
    _install_error_handlers(app)

    @app.post("/pooling", responses={200: {"model": PoolingResponse}, **_ERRORS})
    @app.post("/v1/pooling", include_in_schema=False)
    async def pooling(body: PoolingRequest, request: Request) -> Response:
        return await _answer(request, service.pool(body))

    @app.post("/score", responses={200: {"model": ScoreResponse}, **_ERRORS})
    @app.post("/v1/score", include_in_schema=False)
    async def score(body: ScoreRequest, request: Request) -> Response:
        return await _answer(request, service.score(body))

    @app.post("/rerank", responses={200: {"model": RerankResponse}, **_ERRORS})
    @app.post("/v1/rerank", include_in_schema=False)
    @app.post("/v2/rerank", include_in_schema=False)
    async def rerank(body: RerankRequest, request: Request) -> Response:
        return await _answer(request, service.rerank(body))

    @app.post("/search", responses={200: {"description": "per query: rank, id, score of its best documents"}, **_ERRORS})
    @app.post("/v1/search", include_in_schema=False)
    async def search(body: SearchRequest, request: Request) -> Response:
        return await _answer(request, service.search(body))

    @app.get("/v1/models")
    async def models() -> Response:
        return _json(service.model_list())

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if service.batcher.alive else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(_prometheus(service.stats()), media_type="text/plain; version=0.0.4")

    @app.get("/version")
    async def version() -> Response:
        return _json({"version": __version__})

    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes, max_inputs=service.options.max_inputs)
    return app


# -- answering -------------------------------------------------------------------------------------------


async def _answer(request: Request, work) -> Response:
    """Run ``work`` unless the client goes away first (then cancel it, so queued inputs are dropped)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server's shutdown grace ran out: say so, in JSON, instead of a bare 500
        task.cancel()
        return _error(503, "ServiceUnavailableError", "the server is shutting down; retry the request elsewhere")
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return Response(status_code=499)  # nobody reads it: the connection is gone
    try:
        body = await asyncio.get_running_loop().run_in_executor(None, _dumps, task.result())
    except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
        return error_response(exc, request.app.state.failures)
    return Response(body, media_type="application/json")


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects; never, if the connection cannot tell."""
    try:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return
    except Exception:  # noqa: BLE001 - a transport that cannot report disconnects: just wait for the work
        await asyncio.Event().wait()


def error_response(exc: BaseException, failures: ServerFailures) -> Response:
    if isinstance(exc, APIError):
        return _error(exc.status, exc.type, str(exc), exc.param)
    if isinstance(exc, (BadInputError, UsageError)):
        return _error(400, "BadRequestError", str(exc))
    if isinstance(exc, (BatcherClosed, IndexUnavailableError)):  # temporary: a retry may be answered
        return _error(503, "ServiceUnavailableError", str(exc))
    if isinstance(exc, TokembedError):  # device or model failures, a damaged index: the server's fault
        failures.report(exc)
        return _error(500, "InternalServerError", str(exc))
    log.error("unexpected error while answering a request", exc_info=exc)
    return _error(500, "InternalServerError", f"{type(exc).__name__}: {exc}")


class ServerFailures:
    """Logs each distinct 500 a ``TokembedError`` answered once: its client alone read it, and a server left so (an
    index rebuilt with other settings, a damaged code file) answers every request with it. The ``remembered`` latest
    messages are kept; one answered again after those is logged again."""

    def __init__(self, remembered: int = 64) -> None:
        self.remembered = remembered
        self._logged: collections.OrderedDict = collections.OrderedDict()  # touched on the event loop alone

    def report(self, exc: TokembedError) -> None:
        message = str(exc)
        if message in self._logged:
            self._logged.move_to_end(message)
            return
        self._logged[message] = None
        if len(self._logged) > self.remembered:
            self._logged.popitem(last=False)
        hint = f" ({exc.hint})" if exc.hint else ""
        log.error("requests fail with a 500: %s%s (logged once, not for each request)", message, hint)


def _error(status: int, type_: str, message: str, param: str | None = None, headers: dict | None = None) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": status}}
    return Response(json.dumps(body).encode(), status_code=status, media_type="application/json", headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()
        if any(error.get("type") == "json_invalid" for error in errors):
            return _error(400, "BadRequestError", f"Malformed JSON body: {errors[0].get('msg', '')}")
        parts, param = [], None
        for error in errors[:5]:
            loc = [str(part) for part in error.get("loc", ()) if part != "body"]
            param = param or (loc[0] if loc else None)
            parts.append(f"{'.'.join(loc) or 'body'}: {error.get('msg', 'invalid')}")
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        return _error(400, "BadRequestError", "; ".join(parts) + more, param)

    @app.exception_handler(APIError)  # the count of inputs, refused while the body is validated
    async def refused(request: Request, exc: APIError) -> Response:
        return error_response(exc, request.app.state.failures)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        names = {404: "NotFoundError", 405: "MethodNotAllowedError"}
        return _error(exc.status_code, names.get(exc.status_code, "BadRequestError"), str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return error_response(exc, request.app.state.failures)


def _json(data: dict) -> Response:
    return Response(_dumps(data), media_type="application/json")


def _dumps(data: dict) -> bytes:
    # NaN or inf never reach here (the service refuses such vectors and scores): orjson would write them as null,
    # json would raise, so the two would answer a 200 and a 500
    try:
        import orjson
    except ImportError:
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    return orjson.dumps(data)


def _prometheus(stats: dict) -> str:
    lines = []
    for endpoint, count in stats["requests"].items():
        lines.append(f'tokembed_requests_total{{endpoint="{endpoint}"}} {count}')
    for name, value in stats["batcher"].items():
        lines.append(f"tokembed_batcher_{name} {value}")
    return "\n".join(lines) + "\n"


# -- parsing: JSON bodies with the garbage collector paused ----------------------------------------------------


def loads_uncollected(body: bytes):
    """``json.loads`` with the cyclic garbage collector paused: a body of millions of small lists (12 MiB of
    ``[[0],[0],...]``) set it off again and again over the server's own objects, 3.1 s of the event loop against
    0.4 s without it. A decoded document holds no reference cycle, so there is nothing in it to collect."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return json.loads(body)
    finally:
        if collecting:
            gc.enable()


class _ParsedRequest(Request):
    async def json(self):
        if not hasattr(self, "_json"):
            self._json = loads_uncollected(await self.body())
        return self._json


class _ParsingRoute(APIRoute):
    """FastAPI's route, reading JSON bodies with ``loads_uncollected`` (FastAPI's documented custom-request hook)."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def parsing_handler(request: Request) -> Response:
            return await handler(_ParsedRequest(request.scope, request.receive))

        return parsing_handler


# -- guard: API key and body size, before FastAPI sees the request -----------------------------------------


class _BodyTooLarge(Exception):
    pass


class _Guard:
    """ASGI wrapper: checks the API key, then reads the body up to ``max_body_bytes`` and hands it on, with the
    request models' ``inputs_limit`` set to ``max_inputs``.

    A body over the limit (by Content-Length, or while streaming it in) is answered 413 without reading
    the rest. After the body, ``receive`` goes to the client connection again (disconnect detection).
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int, max_inputs: int) -> None:
        self.app = app
        self.max_inputs = max_inputs
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        # compared as SHA-256 digests of UTF-8 bytes, as vLLM's AuthenticationMiddleware does (equal lengths:
        # the comparison's time tells nothing about the key's length)
        self._key_digest = None if api_key is None else hashlib.sha256(api_key.encode("utf-8")).digest()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", ())}
        if self.api_key is not None and scope.get("path") != "/health" and not self._authorized(headers):
            response = _error(401, "AuthenticationError", "Unauthorized: missing or wrong API key",
                              headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._too_large(scope, receive, send)
        try:
            body = await self._read_body(receive)
        except _BodyTooLarge:
            return await self._too_large(scope, receive, send)
        if body is None:  # the client left while sending
            return None
        with inputs_limit(self.max_inputs):
            return await self.app(scope, _replay(body, receive), send)

    def _authorized(self, headers: dict) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        # the header was decoded as Latin-1, byte for byte: encoding it back gives the bytes the client sent (UTF-8
        # from curl or httpx for a non-ASCII key); vLLM re-encodes the Latin-1 text as UTF-8 and never matches those
        sent = hashlib.sha256(token.strip().encode("latin-1")).digest()
        return scheme.lower() == "bearer" and secrets.compare_digest(sent, self._key_digest)

    async def _read_body(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope, receive, send) -> None:
        response = _error(413, "RequestEntityTooLarge", f"request body larger than {self.max_body_bytes} bytes",
                          headers={"Connection": "close"})
        await response(scope, receive, send)


def _replay(body: bytes, receive):
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
