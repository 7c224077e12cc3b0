"""Run one chunk of items through the model, in two pieces every runner shares:

* ``plan_chunk`` (texts -> ``ChunkPlan``): tokenize, sort by length, cut token-budget batches. It needs
  only the tokenizer and runs where the texts are (the main process), so the plan never depends on how
  many devices compute it. ``plan_items`` is its second half, for items tokenized elsewhere (the pool
  has its workers run image models' processors).
* ``BatchExecutor.run`` (one batch of token ids -> ``BatchOutput``): collate, copy to the device, forward,
  finish. A batch that runs out of memory (``is_out_of_memory``: a CUDA device's, or the CPU's) is split in
  half and retried (recursively), and the executor's padded-token cap shrinks so later batches are cut
  before they fail.

``assemble`` puts the per-batch rows back in input order as a ``ChunkResult``; ``run_chunk`` is the three
in a row on one device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tokembed._testhooks import simulated_oom
from tokembed.engine.batching import Batch, plan_batches
from tokembed.engine.device import keep_freed_blocks
from tokembed.errors import DeviceError
from tokembed.models.steps import TextEncoder, Tokenized

Row = tuple[np.ndarray, np.ndarray]  # (vectors [n_kept, D] in the store dtype, token ids [n_kept] int32)


@dataclass
class ChunkResult:
    vectors: list[np.ndarray]  # per item [n_tokens, D] in the store dtype, input order
    token_ids: list[np.ndarray]  # per item [n_tokens] int32
    real_tokens: int  # tokens that went through the model in this run
    computed_tokens: int  # positions computed, padding included
    largest_batch: int  # the most padded positions in one batch
    # Rows an interrupted run computed (a Ray actor's reused staged chunk): none of the above, counted apart
    resumed_real_tokens: int = 0
    resumed_computed_tokens: int = 0


@dataclass
class ChunkPlan:
    """A chunk tokenized and cut into batches (rows index ``items``; items with no token are in no batch)."""

    items: list[Tokenized]  # input order
    batches: list[Batch]
    real_tokens: int

    def batch_items(self, batch: Batch) -> list[Tokenized]:
        return [self.items[row] for row in batch.rows]


@dataclass
class BatchOutput:
    rows: list[Row]  # one per batch row, in the batch's order
    computed_tokens: int  # padded positions actually computed (after any out-of-memory split)
    largest_batch: int
    busy_seconds: float = 0.0  # wall time of the whole batch on its device (collate, copy, forward, finish)
    forward_seconds: float = 0.0  # of which the model forward


@dataclass
class DeviceStats:
    """What one device did: ``real_tokens / busy_seconds`` is its throughput."""

    batches: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    busy_seconds: float = 0.0
    forward_seconds: float = 0.0

    def add(self, output: BatchOutput, real_tokens: int) -> None:
        self.batches += 1
        self.real_tokens += real_tokens
        self.computed_tokens += output.computed_tokens
        self.busy_seconds += output.busy_seconds
        self.forward_seconds += output.forward_seconds


def plan_chunk(encoder: TextEncoder, texts: list[str], budget: int) -> ChunkPlan:
    if not texts:
        return ChunkPlan([], [], 0)
    return plan_items(encoder.tokenize(texts), budget)


def plan_items(tokenized: list[Tokenized], budget: int) -> ChunkPlan:
    """Already tokenized (or processed) items -> their batches: the plan depends on nothing but their lengths."""
    lengths = np.fromiter((len(item.ids) for item in tokenized), dtype=np.int64, count=len(tokenized))
    nonempty = np.flatnonzero(lengths)  # a text with no tokens at all (possible without special tokens) stays empty
    batches = [Batch(nonempty[batch.rows], batch.width) for batch in plan_batches(lengths[nonempty], budget)]
    return ChunkPlan(tokenized, batches, int(lengths.sum()))


def assemble(encoder: TextEncoder, plan: ChunkPlan, outputs: list[BatchOutput]) -> ChunkResult:
    """Per-batch outputs (in ``plan.batches`` order) -> rows back in input order."""
    vectors: list = [np.zeros((0, encoder.output_dim), dtype=encoder.store_dtype)] * len(plan.items)
    token_ids: list = [np.zeros(0, dtype=np.int32)] * len(plan.items)
    for batch, output in zip(plan.batches, outputs, strict=True):
        for row, (vecs, ids) in zip(batch.rows, output.rows, strict=True):
            vectors[row], token_ids[row] = vecs, ids
    computed = sum(output.computed_tokens for output in outputs)
    largest = max((output.largest_batch for output in outputs), default=0)
    return ChunkResult(vectors, token_ids, plan.real_tokens, computed, largest)


def run_chunk(encoder: TextEncoder, texts: list[str], budget: int, device: str) -> ChunkResult:
    plan = plan_chunk(encoder, texts, budget)
    executor = BatchExecutor(encoder, device)
    return assemble(encoder, plan, [executor.run(plan.batch_items(batch)) for batch in plan.batches])


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA device's ``torch.OutOfMemoryError``, or the CPU's: torch's CPU allocator raises a plain
    ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory"), Python a ``MemoryError``."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "CPUAllocator: can't allocate memory" in str(exc)


@dataclass
class BatchExecutor:
    """Runs batches on one device. ``log`` receives one line per out-of-memory split."""

    encoder: TextEncoder
    device: str  # torch device
    log: Callable[[str], None] = field(default=lambda message: None)
    label: str | None = None  # the device's name in logs (a worker's ``cpu:1``); default: ``device``
    # Padded tokens a batch may have on this device: unlimited until an out-of-memory error teaches otherwise.
    budget: int | None = None
    lane_streams: bool = False  # a CUDA stream per concurrent caller (``LocalRunner``'s GPU lanes); else the current one
    _streams: list = field(default_factory=list, repr=False)  # lane streams no lane holds now (one per lane made)

    def __post_init__(self) -> None:
        self.cuda = self.device.startswith("cuda")
        self.label = self.label or self.device
        if not self.cuda:
            keep_freed_blocks()

    def run(self, items: list[Tokenized]) -> BatchOutput:
        started = time.perf_counter()
        width = max(len(item.ids) for item in items)
        rows: list[Row] = []
        computed = largest = 0
        forward = 0.0
        for piece in self._cut(items, width):
            piece_rows, piece_computed, piece_largest, piece_forward = self._run_splitting(piece)
            rows += piece_rows
            computed += piece_computed
            largest = max(largest, piece_largest)
            forward += piece_forward
        return BatchOutput(rows, computed, largest, time.perf_counter() - started, forward)

    def _cut(self, items: list[Tokenized], width: int) -> list[list[Tokenized]]:
        """Pieces within the learned budget (``width``: the longest item, so every piece fits)."""
        if self.budget is None or len(items) * width <= self.budget:
            return [items]
        per_piece = max(1, self.budget // width)
        return [items[start : start + per_piece] for start in range(0, len(items), per_piece)]

    def _run_splitting(self, items: list[Tokenized]) -> tuple[list[Row], int, int, float]:
        width = max(len(item.ids) for item in items)
        padded = len(items) * width
        try:
            rows, forward = self._forward(items)
            return rows, padded, padded, forward
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            reason = str(exc).splitlines()[0] if str(exc) else "out of memory"
        # Retried outside the ``except`` block: the traceback holds the failed batch's tensors alive.
        self._release_memory()
        if len(items) == 1:
            raise DeviceError(
                f"{self.label}: out of memory on a single item of {padded} tokens ({reason})",
                hint="lower --max-length, or use a device with more memory",
            )
        half = (len(items) + 1) // 2
        first_padded = half * max(len(item.ids) for item in items[:half])
        self.budget = min(self.budget or padded, first_padded)
        self.log(
            f"{self.label}: out of memory on a batch of {len(items)} rows x {width} tokens "
            f"({padded} padded tokens; {reason}): split in half and retried; later batches on this device "
            f"are cut to at most {self.budget} padded tokens"
        )
        first = self._run_splitting(items[:half])
        second = self._run_splitting(items[half:])
        return first[0] + second[0], first[1] + second[1], max(first[2], second[2]), first[3] + second[3]

    def _forward(self, items: list[Tokenized]) -> tuple[list[Row], float]:
        if not (self.cuda and self.lane_streams):
            return self._forward_here(items)
        # Lanes (engine/local.py) overlap on streams of their own; kept for reuse, as the caching allocator
        # reuses a freed block only on the stream it was allocated on.
        stream = self._streams.pop() if self._streams else torch.cuda.Stream(self.device)
        try:
            with torch.cuda.stream(stream):
                return self._forward_here(items)
        finally:
            self._streams.append(stream)

    def _forward_here(self, items: list[Tokenized]) -> tuple[list[Row], float]:
        encoder = self.encoder
        if not isinstance(encoder, TextEncoder):  # an image model's encoder: its own collate, copies and forward
            collated = encoder.collate(items)
            simulated_oom(collated["input_ids"].numel())
            started = time.perf_counter()
            with torch.inference_mode():
                output = encoder.embed(collated)  # [B, T, D] float32
            forward = time.perf_counter() - started
            return encoder.finish(output, items), forward
        input_ids, attention = encoder.collate(items)  # [B, T] each, on the CPU
        simulated_oom(input_ids.numel())
        with torch.inference_mode():
            if self.cuda:
                # Pinned host memory lets the copy run asynchronously; the forward is queued behind it on the same stream.
                input_ids = input_ids.pin_memory().to(self.device, non_blocking=True)
                attention = attention.pin_memory().to(self.device, non_blocking=True)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                output = encoder.embed((input_ids, attention))  # [B, T, D] float32
                end.record()
                rows = encoder.finish(output, items)  # copies to the host, which waits for the forward
                return rows, start.elapsed_time(end) / 1000.0
            started = time.perf_counter()
            output = encoder.embed((input_ids, attention), self.device)  # [B, T, D] float32
            forward = time.perf_counter() - started
            return encoder.finish(output, items), forward

    def _release_memory(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
