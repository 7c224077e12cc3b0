"""Parse ``--devices`` into the devices a run uses.

    auto                 every visible CUDA device (one worker process each when there are several), else the CPU
    cpu                  the CPU, in this process (no worker process)
    cpu:N                N worker processes on the CPU, sharing its cores (how the multi-device path is tested)
    cuda                 the first CUDA device (torch's meaning of "cuda"), in this process
    cuda:0,cuda:2,...    those CUDA devices; one worker process each when more than one is listed

A device *label* names one worker for logs and progress (``cpu:0``, ``cuda:2``); ``torch_device`` maps
it to what torch accepts (every ``cpu:K`` label is the one ``cpu`` device).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from tokembed.cpu import glibc as _glibc
from tokembed.cpu import user_set_malloc
from tokembed.errors import DeviceError, UsageError

_EXPECTED = "expected auto, cpu, cpu:N, cuda or cuda:0,cuda:1,..."
_EXPECTED_ONE = "expected auto, cpu, cuda or cuda:N"  # score, serve: one device


@dataclass(frozen=True)
class DevicePlan:
    labels: tuple[str, ...]  # one per worker, e.g. ("cuda:0", "cuda:2") or ("cpu:0", "cpu:1", "cpu:2")
    workers: bool  # True: one worker process per label; False: the single device runs in this process

    @property
    def first(self) -> str:
        return torch_device(self.labels[0])


def parse_devices(spec: str | None, flag: str = "--devices", expected: str = _EXPECTED) -> DevicePlan:
    """``--devices`` -> the worker labels and whether they run in worker processes. Raises ``DeviceError``
    naming ``flag`` (``score`` calls its option ``--device``) and what it ``expected``."""
    spec = given_spec(spec, flag, expected)
    if spec == "cpu":
        return DevicePlan(("cpu",), workers=False)
    if spec.startswith("cpu:"):
        count, most = cpu_workers(spec, flag), 4 * max(1, os.cpu_count() or 1)
        if count > most:  # each worker process holds a copy of the model: cpu:99 would exhaust memory
            raise DeviceError(f"{flag} {spec}: at most {most} CPU worker processes here (4 per core; each loads the model)")
        return DevicePlan(tuple(f"cpu:{i}" for i in range(count)), workers=True)
    if spec == "auto":
        count = _cuda_count()
        if count == 0:
            return DevicePlan(("cpu",), workers=False)
        return DevicePlan(tuple(f"cuda:{i}" for i in range(count)), workers=count > 1)
    if spec.startswith("cuda"):
        labels = cuda_devices(spec, _cuda_count(), flag, expected)
        return DevicePlan(labels, workers=len(labels) > 1)
    raise DeviceError(f"{flag} {spec!r}: {expected}")


def check_form(spec: str | None, flag: str = "--devices", expected: str = _EXPECTED) -> str:
    """``spec`` as ``given_spec`` returns it, its form checked as ``parse_devices`` checks it but without looking
    for a device: ``--engine ray`` counts the cluster's once connected, after the model loads."""
    spec = given_spec(spec, flag, expected)
    if spec.startswith("cpu:"):
        cpu_workers(spec, flag)
    elif spec.startswith("cuda"):
        cuda_labels(spec, flag, expected)
    elif spec not in ("auto", "cpu"):
        raise DeviceError(f"{flag} {spec!r}: {expected}")
    return spec


def cpu_workers(spec: str, flag: str = "--devices") -> int:
    """N of ``cpu:N``, a positive number."""
    count = spec[4:]
    if "," in count:
        raise DeviceError(f"{flag} {spec}: cpu:N takes one N, the number of worker processes (not a list)")
    if not (count.isascii() and count.isdigit()) or int(count) < 1:  # int() refuses "²"
        raise DeviceError(f"{flag} {spec}: N in cpu:N must be a positive number of worker processes")
    return int(count)


def cuda_labels(spec: str, flag: str = "--devices", expected: str = _EXPECTED) -> tuple[str, ...]:
    """The devices ``cuda`` (the first: torch's meaning) or ``cuda:0,cuda:2,...`` names, each listed once; whether
    they exist is for the caller, who knows what is visible."""
    if spec == "cuda":
        return ("cuda:0",)
    labels = []
    for label in (part.strip() for part in spec.split(",")):
        index = label[5:] if label.startswith("cuda:") else ""
        if not (index.isascii() and index.isdigit()):
            raise DeviceError(f"{flag} {spec}: {label!r} is not cuda:N ({expected})")
        labels.append(f"cuda:{int(index)}")  # cuda:00 is cuda:0, as torch would refuse the other spelling
    if len(set(labels)) != len(labels):
        raise DeviceError(f"{flag} {spec}: a device is listed twice")
    return tuple(labels)


def cuda_devices(spec: str, count: int, flag: str = "--devices", expected: str = _EXPECTED,
                 on_cluster: bool = False) -> tuple[str, ...]:
    """``cuda_labels``, each one of the ``count`` CUDA devices visible here (or ``on_cluster``: a Ray cluster's, on
    any node). ``expected`` tells a command that takes ``cpu:N`` (encode) from one that runs on one device."""
    labels = cuda_labels(spec, flag, expected)
    where = "on the Ray cluster" if on_cluster else "visible"
    if count == 0:
        raise DeviceError(f"{flag} {spec}: no CUDA device {where if on_cluster else 'is visible'}",
                          hint=f"use {flag} cpu" + (" (or cpu:N)" if expected == _EXPECTED else ""))
    for label in labels:
        if int(label[5:]) >= count:
            raise DeviceError(f"{flag} {spec}: {label} does not exist ({count} CUDA device(s) {where})")
    return labels


def given_spec(spec: str | None, flag: str = "--devices", expected: str = _EXPECTED) -> str:
    """The spec lower-cased; None (not given) is ``auto``. A blank one is refused: ``--devices "$GPUS"`` with the
    variable unset must not quietly mean every device."""
    if spec is None:
        return "auto"
    if not isinstance(spec, str):  # a library caller's number: not an AttributeError from strip
        raise UsageError(f"{flag}: {expected} (a str), got {type(spec).__name__}")
    if not spec.strip():
        raise DeviceError(f"{flag} {spec!r}: empty ({expected})")
    return spec.strip().lower()


def resolve_one_device(spec: str | None, flag: str, command: str) -> str:
    """The one torch device of a command that runs on one (``score``, ``serve``): ``cpu:N`` (worker processes) or
    several CUDA devices are a usage error; any N, ``cpu:0`` too, whose count ``parse_devices`` would refuse first."""
    given = given_spec(spec, flag, _EXPECTED_ONE)
    workers = given.startswith("cpu:") and given[4:].isascii() and given[4:].isdigit()
    plan = None if workers else parse_devices(spec, flag, _EXPECTED_ONE)
    if workers or plan.workers:
        asked = "worker processes" if workers else f"{len(plan.labels)} devices"
        raise UsageError(f"{flag} {spec}: asks for {asked}; tokembed {command} runs in its own process on one device",
                         hint="pass one device (cpu, cuda or cuda:N); cpu:N and several devices are for encode's --devices")
    return plan.first


def resolve_device(spec: str, flag: str = "--devices") -> str:
    """The torch device the main process loads the model on (the first device of ``--devices``)."""
    return parse_devices(spec, flag).first


def torch_device(label: str) -> str:
    return "cpu" if label.startswith("cpu") else label


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def release_freed_memory() -> None:
    """Hand memory freed by the last chunk back to the OS (glibc keeps it otherwise, and varied tensor
    shapes fragment it: measured ~25% lower peak RSS on long CPU runs). A no-op off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
KEEP_FREED_BYTES = 1 << 30


@functools.cache
def keep_freed_blocks() -> bool:
    """Have glibc reuse freed blocks of up to 1 GiB instead of mapping each one afresh; returns whether it did.

    glibc serves a block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on
    ``free``, so a CPU forward faulted its activations in page by page, op after op: a 16k-token MiniLM batch's
    [16384, 1536] float32 GELU input is 100 MB. Measured on a 2-core AMD EPYC VM (~1.2 us a fault): a process
    that loads MiniLM and encodes 1,200 docstrings twice, 680k -> 240k page faults and 1.8-2.0 -> 0.9-1.0 s of
    system time; one 16k-token forward 7-17% faster in five alternating pairs. Freed blocks now
    stay in the heap; ``release_freed_memory`` still returns them at each chunk's end (peak RSS +3% on 20k
    short rows, +12% for that process). Blocks freed in other threads are kept too since ``import tokembed``
    gives the process one malloc arena (``tokembed.cpu.one_malloc_arena``). The process-wide setting is left
    alone when the user set glibc's own variables for it."""
    libc = _glibc()
    if libc is None or user_set_malloc("MALLOC_MMAP_THRESHOLD_"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, KEEP_FREED_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
