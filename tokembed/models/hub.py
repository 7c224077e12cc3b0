"""A hub id -> its snapshot folder in the Hugging Face cache (``huggingface_hub.snapshot_download``).

Online, the hub is first asked about the repo with a bounded wait (``HF_HUB_ETAG_TIMEOUT``, 10 s by default):
``snapshot_download``'s own first request waits forever on a network that accepts connections and never answers.
Any failure of the network layer (refused, a proxy's refusal, no answer in time) falls back to the cache, as
``HF_HUB_OFFLINE=1`` does.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path

from tokembed.errors import ModelNotFoundError

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
    """The cached snapshot folder of ``repo_id`` at ``revision`` (downloaded first when the hub answers)."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(_snapshot(repo_id, revision, offline))
    except LocalEntryNotFoundError as exc:
        raise _not_cached(repo_id, revision, offline) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelNotFoundError(f"--model {repo_id!r}: {exc}") from exc


def _snapshot(repo_id: str, revision: str | None, offline: bool) -> str:
    from huggingface_hub import snapshot_download

    if not offline and _hub_answers(repo_id, revision):
        try:
            return snapshot_download(repo_id, revision=revision, ignore_patterns=IGNORED_ON_HUB)
        except network_errors():
            pass  # the network failed after the hub answered: the cache, as when it is down
    return snapshot_download(repo_id, revision=revision, local_files_only=True, ignore_patterns=IGNORED_ON_HUB)


def _hub_answers(repo_id: str, revision: str | None) -> bool:
    """Whether the hub answers a question about the repo within ``HF_HUB_ETAG_TIMEOUT`` seconds; an error status is
    an answer (``snapshot_download`` reports it, or falls back to the cache, as it always did)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    try:
        HfApi().repo_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except network_errors():
        return False
    except HfHubHTTPError:
        pass  # an answer: snapshot_download reports it, or falls back to the cache, as it always did
    return True


def network_errors() -> tuple[type[BaseException], ...]:
    """The errors of a network that does not answer (refused, a proxy's refusal, a timeout), of whichever HTTP
    client huggingface_hub imported, and its refusal in offline mode."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    loaded = [getattr(sys.modules[module], name, None) for module, name in _TRANSPORT_ERRORS if module in sys.modules]
    return (OfflineModeIsEnabled, *[error for error in loaded if isinstance(error, type)])


def _not_cached(repo_id: str, revision: str | None, offline: bool) -> ModelNotFoundError:
    why = " (HF_HUB_OFFLINE is set)" if offline else ", and the hub could not be reached"
    download = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    if revision and _cached_at_other_revisions(repo_id):
        return ModelNotFoundError(
            f"model {repo_id!r}: revision {revision!r} is not in the Hugging Face cache{why} "
            "(other revisions of it are)",
            hint=f"download it once with network access: {download}")
    return ModelNotFoundError(
        f"model {repo_id!r}: not a local folder, not in the Hugging Face cache{why}",
        hint=f"download it once with network access ({download}), or pass a local folder with --model")


def _cached_at_other_revisions(repo_id: str) -> bool:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())
