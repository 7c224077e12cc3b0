"""A text backbone's forward in OpenVINO on the CPU: opt-in, ``TOKEMBED_CPU_RUNTIME=openvino``.

Why: on a 2-core Zen 4 CPU OpenVINO runs MiniLM's forward 1.16-1.20x faster than torch 2.13 (fused attention at
head dim 32 and fused elementwise ops; ``bench/openvino_peer.py``), with float32 outputs within ~1e-6 of torch's.
The backbone is converted once per checkpoint (5-20 s) and the converted model kept under
``$TOKEMBED_CACHE/openvino`` (default ``~/.cache/tokembed/openvino``), named by the checkpoint's fingerprint and
OpenVINO's version; later runs read it (~0.2 s). Compiled with one stream per lane, the precision the run asked
for (f32, or bf16 for ``--dtype bfloat16``). Only for backbones that trace: the native BERT (``bert.py``).
"""

from __future__ import annotations

import os
import tempfile
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

RUNTIME_VARIABLE = "TOKEMBED_CPU_RUNTIME"


def wanted() -> bool:
    """Whether the user asked for OpenVINO; any value but ``openvino`` / ``torch`` is refused."""
    value = os.environ.get(RUNTIME_VARIABLE, "torch")
    if value not in ("torch", "openvino"):
        from tokembed.errors import UsageError

        raise UsageError(f"{RUNTIME_VARIABLE}={value!r}: must be torch or openvino")
    return value == "openvino"


class OpenVinoBackbone(torch.nn.Module):
    """Called as the torch backbone is (``input_ids``, ``attention_mask`` -> ``.last_hidden_state``), float32 out."""

    def __init__(self, compiled) -> None:
        super().__init__()
        self.compiled = compiled  # no torch weights kept: nothing could patch them (e.g. LoRA) without effect
        self.requests = threading.local()  # one infer request per lane (thread)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> SimpleNamespace:
        request = getattr(self.requests, "request", None)
        if request is None:
            request = self.requests.request = self.compiled.create_infer_request()
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        request.infer({"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()})
        return SimpleNamespace(last_hidden_state=torch.from_numpy(request.get_output_tensor(0).data.copy()))


class LastHiddenState(torch.nn.Module):
    """A backbone as a module of two tensors in and the last hidden state out: what a converter traces."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def cache_folder() -> Path:
    from tokembed.cache import cache_root

    return cache_root() / "openvino"


def openvino_backbone(backbone: torch.nn.Module, key: str, dtype: torch.dtype, lanes: int) -> OpenVinoBackbone:
    """``backbone`` compiled by OpenVINO for this CPU, converted once per ``key`` (checkpoint and weight dtype)."""
    import openvino as ov

    core = ov.Core()
    path = cache_folder() / f"{key}-{ov.__version__.split('-')[0]}.xml"
    source = _cached(core, path)
    if source is None:
        source = _converted(backbone, ov)
        try:
            _keep(source, path, ov)
        except (OSError, RuntimeError) as exc:  # a read-only or full cache (OpenVINO raises RuntimeError)
            _log().warning("cannot keep the OpenVINO model in %s (%s): it is converted again on every run", path.parent, exc)
    compiled = core.compile_model(source, "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16" if dtype == torch.bfloat16 else "f32",
        "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": max(1, lanes), "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    converted = OpenVinoBackbone(compiled)
    first_inference_here(converted)
    return converted


def _log():
    import logging

    return logging.getLogger("tokembed")


def _cached(core, path: Path):
    """The converted model kept at ``path``; None when there is none, or it cannot be read (converted again)."""
    if not path.is_file():
        return None
    try:
        return core.read_model(str(path))
    except RuntimeError as exc:
        _log().warning("the cached OpenVINO model %s cannot be read (%s): converting it again", path, str(exc).splitlines()[0])
        return None


def _converted(backbone: torch.nn.Module, ov):
    example_ids = torch.tensor([[101, 2023, 102], [101, 102, 0]])  # with padding: the mask's branch is traced
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the mask branch it records
        return ov.convert_model(LastHiddenState(backbone).eval().float(), example_input=(example_ids, (example_ids > 0).long()),
                                input=[("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)])


def _keep(model, path: Path, ov) -> None:
    """Write the converted model to the cache atomically: the .xml last, so present means complete."""
    from tokembed.index.atomic import publish

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as staging:
        ov.save_model(model, str(Path(staging) / path.name), compress_to_fp16=False)
        publish(Path(staging) / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        publish(Path(staging) / path.name, path)


def first_inference_here(backbone: OpenVinoBackbone) -> None:
    """One tiny inference on the loading thread, before any lane runs.

    OpenVINO's Python binding initialises pybind11's numpy API lazily, inside a C++ function-local static whose
    initialiser releases the GIL. Two lanes making their first inference at the same moment can deadlock there
    (one holds the static's guard and waits for the GIL, the other holds the GIL and waits for the guard): seen
    once in ~60 runs of ``bench/encode.py``'s pass, both lanes stuck in ``tensor.data``. Once this call has
    initialised it, no lane waits on it again."""
    ids = torch.tensor([[101, 102]])
    backbone(input_ids=ids, attention_mask=torch.ones_like(ids))
