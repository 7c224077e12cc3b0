"""A hub id -> its snapshot folder in the Hugging Face cache (``huggingface_hub.snapshot_download``).

Online, every request to the hub waits at most ``HF_HUB_ETAG_TIMEOUT`` seconds (10 by default; a file's bytes
``HF_HUB_DOWNLOAD_TIMEOUT``): huggingface_hub's client has no timeout of its own, so a network or mirror that
accepts connections and stops answering (before the first question, or at the file listing after it) hung the run.
A request that timed out is not asked again (``_BoundedClients``: huggingface_hub would retry it five times, with
waits). Any failure of the network layer (refused, a proxy's refusal, no answer in time) falls back to the
cache, as ``HF_HUB_OFFLINE=1`` does.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path

from tokembed.errors import ModelNotFoundError
from tokembed.models.hub_cache import not_cached, partial_snapshot

# Formats tokembed never reads: not downloaded for a hub id (saves GBs on multi-format repos), and not part of a
# checkpoint's fingerprint (``resolve.checkpoint_files``), so a full `hf download` of the same commit changes nothing.
IGNORED_ON_HUB = ["*.onnx", "onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*", "*.tflite",
                  "rust_model*", "coreml/*", "*.gguf"]
# The transport errors of the HTTP client huggingface_hub uses: httpx2 (2.x), httpx (1.x), requests (before).
_TRANSPORT_ERRORS = (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError"),
                     ("requests", "Timeout"))


def never_read(relative: str) -> bool:
    """Whether a checkpoint file (its path relative to the folder, with ``/``) is of a format tokembed never reads:
    the rule ``snapshot_download(ignore_patterns=IGNORED_ON_HUB)`` applies."""
    return any(fnmatch.fnmatch(relative, pattern) for pattern in IGNORED_ON_HUB)


def hub_snapshot(repo_id: str, revision: str | None) -> Path:
    """The cached snapshot folder of ``repo_id`` at ``revision`` (downloaded first when the hub answers). A snapshot
    that huggingface_hub's file listing says is incomplete is used when only files tokembed does not read are
    missing (a README after `hf download --include`), and refused naming the others."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = offline_setting()
    unreachable: list[str] = []
    try:
        return Path(_snapshot(repo_id, revision, offline, unreachable))
    except LocalEntryNotFoundError as exc:
        if getattr(exc, "snapshot_path", None):  # huggingface_hub 2.x: IncompleteSnapshotError
            return partial_snapshot(repo_id, Path(exc.snapshot_path))
        raise not_cached(repo_id, revision, offline, unreachable[0] if unreachable else None) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelNotFoundError(f"--model {repo_id!r}: {exc}") from exc


def offline_setting() -> str | None:
    """The variable that puts huggingface_hub in offline mode, read by its own rule (``constants.HF_HUB_OFFLINE``):
    HF_HUB_OFFLINE, or TRANSFORMERS_OFFLINE when that is unset, true when 1, ON, YES or TRUE in any case."""
    from huggingface_hub import constants

    name = next((name for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(name)), None)
    return name if name and os.environ[name].upper() in constants.ENV_VARS_TRUE_VALUES else None


def _snapshot(repo_id: str, revision: str | None, offline: str | None, unreachable: list[str]) -> str:
    from huggingface_hub import snapshot_download

    if not offline:
        bound_hub_requests()
        try:
            _ask_hub(repo_id, revision)
            return snapshot_download(repo_id, revision=revision, ignore_patterns=IGNORED_ON_HUB)
        except network_errors() as exc:
            unreachable.append(why_unreachable(exc))  # down, or stalled before or after its first answer: the cache
    return snapshot_download(repo_id, revision=revision, local_files_only=True, ignore_patterns=IGNORED_ON_HUB)


def _ask_hub(repo_id: str, revision: str | None) -> None:
    """Ask the hub about the repo with a bounded wait (huggingface_hub before 1.0 has no client to bound); raises
    ``network_errors()`` when it does not answer. An error status is an answer: ``snapshot_download`` reports it,
    or falls back to the cache, as it always did."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().repo_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:
        pass


def network_errors() -> tuple[type[BaseException], ...]:
    """The errors of a network that does not answer (refused, a proxy's refusal, a timeout), of whichever HTTP
    client huggingface_hub imported, and its refusal in offline mode."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    loaded = [getattr(sys.modules[module], name, None) for module, name in _TRANSPORT_ERRORS if module in sys.modules]
    return (OfflineModeIsEnabled, *[error for error in loaded if isinstance(error, type)])


def bound_hub_requests() -> None:
    """huggingface_hub's clients from now on wait at most ``HF_HUB_ETAG_TIMEOUT`` seconds for an answer (a request
    that sets its own timeout, a file download's, keeps it), and do not ask again what timed out."""
    from huggingface_hub import constants

    try:
        from huggingface_hub.utils import set_client_factory
        from huggingface_hub.utils._http import default_client_factory
    except ImportError:  # before 1.0 (requests): only _ask_hub's question is bounded
        return
    set_client_factory(_BoundedClients(default_client_factory, constants.HF_HUB_ETAG_TIMEOUT))


class _BoundedClients:
    """huggingface_hub's own client (event hooks, proxies from the environment) with a timeout. A request that
    timed out (no answer at all: a body that stalls later is the downloader's to resume) is not sent again: its
    retry fails at once with the client library's plain ``TransportError``, which huggingface_hub neither retries
    (it retries a timeout five times, waiting up to 8 s between) nor reads as a network that is down, so
    ``hub_snapshot`` falls back to the cache. Each ``hub_snapshot`` installs new ones."""

    def __init__(self, default_factory, timeout: float) -> None:
        self.default_factory, self.timeout = default_factory, timeout
        self.timed_out: dict[tuple[str, str], str] = {}  # (method, url) -> why

    def __call__(self):
        client = self.default_factory()
        send, library = client.send, sys.modules[type(client).__module__.split(".")[0]]
        bounded = library.Timeout(self.timeout).as_dict()

        def bounded_send(request, **kwargs):
            waits = request.extensions.get("timeout") or {}
            request.extensions["timeout"] = {key: bounded[key] if waits.get(key) is None else waits[key]
                                             for key in bounded}  # huggingface_hub passes timeout=None
            asked = (request.method, str(request.url))
            if asked in self.timed_out:
                raise library.TransportError(self.timed_out[asked], request=request)
            try:
                return send(request, **kwargs)
            except library.TimeoutException as exc:
                self.timed_out[asked] = why_unreachable(exc)
                raise

        client.send = bounded_send
        return client


def why_unreachable(exc: BaseException) -> str:
    """What the hub did (or did not) answer, naming the setting that bounded the wait of a request that timed out."""
    from huggingface_hub import constants

    try:
        request = exc.request  # an httpx error's (it raises RuntimeError when it has none)
    except (AttributeError, RuntimeError):
        request = None
    if type(exc).__name__ == "TransportError":  # _BoundedClients' refusal to ask again: it says why
        return str(exc)
    seconds = None if request is None else (request.extensions.get("timeout") or {}).get("read")
    if seconds is None or "Timeout" not in type(exc).__name__:
        return f"{type(exc).__name__}: {exc}"
    setting = {constants.HF_HUB_DOWNLOAD_TIMEOUT: "HF_HUB_DOWNLOAD_TIMEOUT",
               constants.HF_HUB_ETAG_TIMEOUT: "HF_HUB_ETAG_TIMEOUT"}.get(seconds, "its own timeout")
    return f"no answer to {request.method} {request.url} within {seconds:g} s ({setting})"
