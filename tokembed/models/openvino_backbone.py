"""A text backbone's forward in OpenVINO on the CPU: opt-in, ``TOKEMBED_CPU_RUNTIME=openvino``.

Why: on a 2-core Zen 4 CPU OpenVINO runs MiniLM's forward 1.16-1.20x faster than torch 2.13 (fused attention at
head dim 32 and fused elementwise ops; ``bench/openvino_peer.py``), with float32 outputs within ~1e-6 of torch's.
The backbone is converted once per checkpoint (5-20 s) and the converted model kept under
``$TOKEMBED_CACHE/openvino`` (default ``~/.cache/tokembed/openvino``), named by a sha256 of the checkpoint's
fingerprint (its configs) and its weights' sha256 (every byte: a tensor changed in place is another model), the
weight dtype, tokembed's and OpenVINO's versions; later runs read it (~0.2 s) after checking both its files (the
.xml and the weights) against the sha256s kept beside them. Compiled with one stream per lane, the precision the run asked
for (f32, or bf16 for ``--dtype bfloat16``). Only for backbones that trace: the native BERT (``bert.py``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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

    def __init__(self, compiled, embedding_rows: int) -> None:
        super().__init__()
        self.embedding_rows = embedding_rows  # what the token-id checks (token_ids.embedding_rows) read
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


def cache_folder() -> Path | None:
    from tokembed.cache import cache_root

    root = cache_root()
    return None if root is None else root / "openvino"


def openvino_backbone(backbone: torch.nn.Module, model_key: str, dtype: torch.dtype, lanes: int) -> torch.nn.Module:
    """``backbone`` compiled by OpenVINO for this CPU, converted once per checkpoint and dtype; ``backbone`` itself
    where it does not convert (a warning says why). ``model_key`` names the checkpoint: its fingerprint (configs,
    an adapter's ``lora_alpha`` ...) and its weights' sha256, since either changes what the conversion computes."""
    try:
        ov = import_openvino()
    except ImportError as exc:
        from tokembed.errors import UsageError

        raise UsageError(f"{RUNTIME_VARIABLE}=openvino: the openvino package is not installed ({exc})",
                         hint="pip install 'tokembed[openvino]', or unset " + RUNTIME_VARIABLE) from exc
    from tokembed import __version__

    core = ov.Core()
    folder = cache_folder()
    key = hashlib.sha256(model_key.encode()).hexdigest()
    name = f"{key}-{str(dtype).removeprefix('torch.')}-tokembed{__version__}-ov{ov.__version__.split('-')[0]}.xml"
    path = None if folder is None else folder / name
    source = None if path is None else _cached(core, path)
    if source is None:
        try:
            source = _converted(backbone, ov)
        except Exception as exc:  # the tracer's and converter's many errors: torch runs it as it would without
            _log().warning("%s=openvino: the backbone does not convert (%s): it keeps torch", RUNTIME_VARIABLE,
                           str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return backbone
        if path is not None:
            _keep_or_say_why(source, path, ov)
    compiled = core.compile_model(source, "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16" if dtype == torch.bfloat16 else "f32",
        "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": max(1, lanes), "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    converted = OpenVinoBackbone(compiled, backbone.get_input_embeddings().num_embeddings)
    first_inference_here(converted)
    return converted


def _log():
    import logging

    return logging.getLogger("tokembed")


def _cached(core, path: Path):
    """The converted model kept at ``path``; None when there is none, or it cannot be read or its .xml or weights
    file is not the one kept (converted again)."""
    from tokembed.index.verified import VerifiedFiles

    if not path.is_file():
        return None
    try:  # hashed once per change of the file's stat key, not on every load
        _check_against_kept(path, VerifiedFiles(path.parent).sha256_of)
        return core.read_model(str(path))
    except (OSError, RuntimeError) as exc:
        _log().warning("the cached OpenVINO model %s cannot be read (%s): converting it again", path, str(exc).splitlines()[0])
        return None


def _kept_checksums(path: Path, sha256_of) -> list[str]:
    """The lines of the ``.sha256`` kept beside the converted model: the .xml's and the weights' (an .xml changed
    where it still parses, a constant's offset or an ``eps``, computes other vectors as surely as other weights)."""
    return [f"{sha256_of(name)}  {name}" for name in (path.name, path.with_suffix(".bin").name)]


def _check_against_kept(path: Path, sha256_of) -> None:
    kept = path.with_suffix(".sha256").read_text().splitlines()
    if len(kept) == 1:
        raise RuntimeError("its .sha256 holds one digest, the weights file's alone (an earlier format), not its .xml's")
    for line in _kept_checksums(path, sha256_of):
        if line not in kept:  # the path is in the warning already: its suffix says which file
            raise RuntimeError(f"its {Path(line.split()[-1]).suffix} is not the file that was kept (its sha256 differs)")


def _converted(backbone: torch.nn.Module, ov):
    """The converted model. The converter traces in float32: ``backbone`` is widened in place (a copy would cost a
    big model's memory again) and, where the conversion fails, narrowed back, bit for bit, to the dtypes it was
    loaded in, since the caller then runs it in torch as the run asked (not float32 on bfloat16-rounded weights)."""
    vocabulary = backbone.get_input_embeddings().num_embeddings
    example_ids = torch.tensor([[1, 2, 3], [1, 2, 0]]).clamp(max=vocabulary - 1)  # with padding: the mask's branch is traced
    loaded_dtypes = _floating_dtypes(backbone)
    try:
        with torch.no_grad(), warnings.catch_warnings(), _without_telemetry():
            warnings.simplefilter("ignore")  # the tracer's notes on the mask branch it records
            return ov.convert_model(LastHiddenState(backbone).eval().float(), example_input=(example_ids, (example_ids > 0).long()),
                                    input=[("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)])
    except BaseException:
        _restore_dtypes(loaded_dtypes)
        raise


def import_openvino():
    """``import openvino`` without its telemetry: importing it already sends an event (``openvino.tools.ovc``'s
    ``send_event("ov", "import", ...)``, from a forked process) unless the telemetry package cannot be imported,
    where OpenVINO takes its own stand-in (``telemetry_stub``); so it cannot be, during the import."""
    import sys

    if "openvino" in sys.modules or "openvino_telemetry" in sys.modules:
        import openvino

        return openvino
    sys.modules["openvino_telemetry"] = None  # an ImportError for ``import openvino_telemetry``
    try:
        import openvino

        return openvino
    finally:
        del sys.modules["openvino_telemetry"]


@contextmanager
def _without_telemetry() -> Iterator[None]:
    """OpenVINO's converter sends usage telemetry (to Google Analytics) unless a consent file in the user's home
    declines it, from a process it forks off a thread: a cron job would report to a third party and, offline, leave
    those processes behind (a fork off a threaded process may hang). The converter's modules get OpenVINO's own
    stand-in (``telemetry_stub``, what they use where the telemetry package is absent) for the call."""
    try:
        from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils, utils
    except ImportError:  # another layout of the package: nothing known to replace
        yield
        return
    modules = [module for module in (convert_impl, telemetry_utils, utils) if hasattr(module, "tm")]
    previous = [module.tm for module in modules]
    for module in modules:
        module.tm = telemetry_stub
    try:
        yield
    finally:
        for module, kept in zip(modules, previous):
            module.tm = kept


def _floating_dtypes(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.dtype]]:
    return [(owner, name, tensor.dtype) for owner in module.modules()
            for name, tensor in (*owner.named_parameters(recurse=False), *owner.named_buffers(recurse=False))
            if tensor.is_floating_point()]


def _restore_dtypes(dtypes: list[tuple[torch.nn.Module, str, torch.dtype]]) -> None:
    with torch.no_grad():
        for owner, name, dtype in dtypes:
            tensor = getattr(owner, name)
            if isinstance(tensor, torch.nn.Parameter):
                tensor.data = tensor.data.to(dtype)  # the same Parameter object: whatever holds it sees the change
            else:
                setattr(owner, name, tensor.to(dtype))


def _keep_or_say_why(model, path: Path, ov) -> None:
    from tokembed.open_files import refuse_out_of_descriptors

    try:
        _keep(model, path, ov)
    except (OSError, RuntimeError) as exc:  # a read-only or full cache (OpenVINO raises RuntimeError)
        refuse_out_of_descriptors(path, exc)  # not the cache's fault, and the run would not get far
        _log().warning("cannot keep the OpenVINO model in %s (%s): it is converted again on every run", path.parent, exc)


def _keep(model, path: Path, ov) -> None:
    """Write the converted model to the cache atomically: the weights and both files' sha256s first, the .xml last, so
    present means complete. Staging folders of processes that were killed while saving are removed."""
    from tokembed.index.atomic import publish, sha256_file
    from tokembed.index.held import HeldEntry, held_pattern, remove_abandoned

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(path.parent, held_pattern("staging-"))  # a cache shared by containers: only dead saves' ones
    with HeldEntry(path.parent, "staging-") as staging:
        staging.mkdir()
        staged = staging / path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        staged.with_suffix(".sha256").write_text("".join(
            f"{line}\n" for line in _kept_checksums(staged, lambda name: sha256_file(staging / name))))
        for suffix in (".bin", ".sha256", ".xml"):
            publish(staged.with_suffix(suffix), path.with_suffix(suffix))



def first_inference_here(backbone: OpenVinoBackbone) -> None:
    """One tiny inference on the loading thread, before any lane runs.

    OpenVINO's Python binding initialises pybind11's numpy API lazily, inside a C++ function-local static whose
    initialiser releases the GIL. Two lanes making their first inference at the same moment can deadlock there
    (one holds the static's guard and waits for the GIL, the other holds the GIL and waits for the guard): seen
    once in ~60 runs of ``bench/encode.py``'s pass, both lanes stuck in ``tensor.data``. Once this call has
    initialised it, no lane waits on it again."""
    ids = torch.tensor([[101, 102]])
    backbone(input_ids=ids, attention_mask=torch.ones_like(ids))
