"""Pick the compute device from ``--devices`` (``auto`` = the first CUDA device, else the CPU)."""

from __future__ import annotations

from tokembed.errors import DeviceError


def resolve_device(spec: str) -> str:
    import torch

    spec = (spec or "auto").strip()
    if spec == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if spec == "cpu" or spec.startswith("cpu:"):
        return "cpu"
    if spec == "cuda" or spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--devices {spec}: no CUDA device is visible", hint="use --devices cpu")
        first = spec.split(",")[0]
        return "cuda:0" if first == "cuda" else first
    raise DeviceError(f"--devices {spec!r}: expected auto, cpu, cpu:N, cuda or cuda:0,cuda:1,...")
