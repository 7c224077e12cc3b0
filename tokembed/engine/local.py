"""The single-device runner: chunks of texts in, ``ChunkResult`` out, in order, in this process.

Used for ``--devices cpu`` and for one CUDA device. Same plan and same batch executor as the worker
pool (``pool.py``), so the same corpus gives the same rows either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokembed.engine.device import release_freed_memory
from tokembed.engine.runner import BatchExecutor, ChunkResult, DeviceStats, assemble, plan_chunk


class LocalRunner:
    """Runs every chunk on one device in the calling process."""

    def __init__(self, embedder, batch_tokens: int, progress=None) -> None:
        self.embedder = embedder
        self.batch_tokens = batch_tokens
        self.label = embedder.device
        self.executor = BatchExecutor(embedder.encoder, embedder.device, log=getattr(progress, "log", lambda message: None))
        self.device_tokens = getattr(progress, "device_tokens", None)  # optional Progress method
        self.device_stats = {self.label: DeviceStats()}

    def map_chunks(self, chunks: Iterable[list[str]]) -> Iterator[ChunkResult]:
        encoder = self.embedder.encoder
        stats = self.device_stats[self.label]
        for texts in chunks:
            plan = plan_chunk(encoder, texts, self.batch_tokens)
            outputs = []
            for batch in plan.batches:
                items = plan.batch_items(batch)
                output = self.executor.run(items)
                real = sum(len(item.ids) for item in items)
                stats.add(output, real)
                if self.device_tokens is not None:
                    self.device_tokens(self.label, real)
                outputs.append(output)
            yield assemble(encoder, plan, outputs)
            del texts, plan, outputs  # one chunk alive at a time (see encode._encode_stream)
            release_freed_memory()

    def close(self) -> None:
        pass
