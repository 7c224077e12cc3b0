"""The single-device runner: chunks of texts in, ``ChunkResult`` out, in order, in this process."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokembed.engine.runner import ChunkResult, run_chunk


class LocalRunner:
    """Runs every chunk on one device in the calling process."""

    def __init__(self, embedder, batch_tokens: int) -> None:
        self.embedder = embedder
        self.batch_tokens = batch_tokens

    def map_chunks(self, chunks: Iterable[list[str]]) -> Iterator[ChunkResult]:
        for texts in chunks:
            yield run_chunk(self.embedder.encoder, texts, self.batch_tokens, self.embedder.device)

    def close(self) -> None:
        pass
