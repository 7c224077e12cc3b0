"""A PEFT adapter's folder as tokembed reads it: ``adapter_config.json`` (options it cannot apply exactly refused by
name) and the adapter's tensors (floating-point only). ``adapters`` places them on the base's modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokembed.errors import ModelError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# Options that change what the adapter computes in ways tokembed does not reproduce: refused when set.
_REFUSED_OPTIONS = {
    "target_parameters": "LoRA on parameters (target_parameters)",
    "layer_replication": "layer replication",
    "use_qalora": "QA-LoRA",
    "trainable_token_indices": "trainable token indices",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "megatron_config": "Megatron layers",
    "arrow_config": "Arrow routing",
}


def is_adapter(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_adapter_config(path: Path) -> dict:
    file = Path(path) / ADAPTER_CONFIG
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{file}: not a readable adapter config ({exc})") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{file}: not a JSON object")
    return config


def check_supported(path: Path, config: dict) -> None:
    """Refuse, by name, adapter types and options that would not be applied exactly."""
    file = Path(path) / ADAPTER_CONFIG
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise ModelError(f"{file}: peft_type {peft_type!r} is not supported (tokembed applies LoRA adapters)")
    if config.get("bias", "none") != "none":
        raise ModelError(
            f"{file}: bias {config['bias']!r}: the adapter trains biases of the base layers, which tokembed refuses "
            "rather than guess which ones", hint="only bias 'none' adapters (the published ColPali adapters) are read",
        )
    for key, what in _REFUSED_OPTIONS.items():
        if config.get(key):
            raise ModelError(f"{file}: {key} is set ({what}): tokembed does not apply it, so it refuses the adapter")
    # a newer peft writes its new options at their inert defaults (peft 0.21's kasa_config: null): only a set one
    # could change what the adapter computes
    for key in ("r", "lora_alpha"):
        if key in config and (isinstance(config[key], bool) or not isinstance(config[key], (int, float))):
            raise ModelError(f"{file}: {key} is {config[key]!r}, not a number (peft refuses it too)")
    unknown = sorted(key for key in set(config) - _known_options() if config[key])
    if unknown:
        raise ModelError(f"{file}: options this peft does not know ({', '.join(unknown)}): written by a newer peft? "
                         "tokembed refuses what it cannot apply exactly", hint="upgrade peft, or remove them if they are inert")


def _known_options() -> set[str]:
    from dataclasses import fields

    from peft import LoraConfig

    return {field.name for field in fields(LoraConfig)}


def require_peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise ModelError(
            "this checkpoint is a PEFT adapter (adapter_config.json) and the peft package is not installed",
            hint="pip install 'tokembed[peft]'",
        ) from exc
    return peft


def read_adapter_tensors(path: Path) -> dict:
    import torch

    for name in ADAPTER_WEIGHTS:
        file = Path(path) / name
        if not file.is_file():
            continue
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                tensors = load_file(str(file))
            else:
                tensors = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # safetensors raises its own error types for truncated or garbled files
            raise ModelError(f"{file}: cannot read the adapter's tensors ({exc})") from exc
        _require_floating(file, tensors)
        return tensors
    raise ModelError(f"{path}: adapter_config.json but no {' or '.join(ADAPTER_WEIGHTS)}")


def _require_floating(file: Path, tensors: dict) -> None:
    """Every adapter tensor is a trained parameter: one stored as an integer or boolean type (a quantized or damaged
    adapter) would be cast by peft into other numbers, so it is refused as ``weights.check_float`` refuses a base's."""
    for name, tensor in tensors.items():
        if hasattr(tensor, "is_floating_point") and not tensor.is_floating_point():
            raise ModelError(f"{file}: adapter tensor {name} is stored as {tensor.dtype}, not a floating-point type "
                             "(a quantized or damaged adapter: tokembed would only be guessing its values)")


def weights_file(path: Path) -> Path:
    for name in ADAPTER_WEIGHTS:
        if (Path(path) / name).is_file():
            return Path(path) / name
    return Path(path)
