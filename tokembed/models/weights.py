"""Read individual tensors out of a checkpoint folder (safetensors first, then PyTorch ``.bin``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from tokembed.errors import ModelError


def weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    return files or sorted(folder.glob("pytorch_model*.bin"))


@contextmanager
def readable(file: Path) -> Iterator[None]:
    """A weight file that cannot be read (truncated, garbled: safetensors and torch raise their own error types)
    is a ``ModelError`` naming it, not a traceback."""
    try:
        yield
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{file}: cannot read the weights ({type(exc).__name__}: {exc})") from exc


def read_state(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's weight files (safetensors, else PyTorch ``.bin``)."""
    files = weight_files(folder)
    if not files:
        raise ModelError(f"{folder}: no weight files (*.safetensors or pytorch_model*.bin)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with readable(file):
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                state.update(load_file(str(file)))
            else:
                state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state


def tensor_names(folder: Path) -> set[str]:
    """Names of every tensor in the folder's weight files (safetensors headers; ``.bin`` files are mapped)."""
    names: set[str] = set()
    for file in weight_files(folder):
        with readable(file):
            names.update(_names_in(file))
    return names


def _names_in(file: Path) -> list[str]:
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            return list(handle.keys())
    try:
        return list(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
    except RuntimeError:  # a legacy (non-zip) .bin cannot be mapped: read it
        return list(torch.load(file, map_location="cpu", weights_only=True))


def find_tensors(folder: Path, names: set[str]) -> dict[str, torch.Tensor]:
    """Return the named tensors found in the folder's weight files (missing names are simply absent)."""
    found: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        with readable(file):
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(file), framework="pt") as handle:
                    for name in names & set(handle.keys()):
                        found[name] = handle.get_tensor(name)
            else:
                state = torch.load(file, map_location="cpu", weights_only=True)
                found.update({name: state[name] for name in names if name in state})
    return found


def load_tensors(folder: Path, names: set[str], required: set[str]) -> dict[str, torch.Tensor]:
    found = find_tensors(folder, names)
    missing = required - set(found)
    if missing:
        files = ", ".join(f.name for f in weight_files(folder)) or "no weight files"
        raise ModelError(f"{folder}: weights {sorted(missing)} not found ({files})")
    return {name: tensor.float() for name, tensor in found.items()}
