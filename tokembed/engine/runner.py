"""Run one chunk of items through the model: tokenize, sort by length, batch under the token budget,
forward, and put the results back in input order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokembed.engine.batching import Batch, plan_batches
from tokembed.models.steps import TextEncoder


@dataclass
class ChunkResult:
    vectors: list[np.ndarray]  # per item [n_tokens, D] in the store dtype, input order
    token_ids: list[np.ndarray]  # per item [n_tokens] int32
    real_tokens: int  # tokens that went through the model
    computed_tokens: int  # positions computed, padding included
    largest_batch: int  # the most padded positions in one batch


def run_chunk(encoder: TextEncoder, texts: list[str], budget: int, device: str) -> ChunkResult:
    if not texts:
        return ChunkResult([], [], 0, 0, 0)
    tokenized = encoder.tokenize(texts)
    lengths = np.fromiter((len(item.ids) for item in tokenized), dtype=np.int64, count=len(tokenized))
    vectors: list = [np.zeros((0, encoder.output_dim), dtype=encoder.store_dtype)] * len(texts)
    token_ids: list = [np.zeros(0, dtype=np.int32)] * len(texts)
    computed = largest = 0
    nonempty = np.flatnonzero(lengths)  # a text with no tokens at all (possible without special tokens) stays empty
    for batch in plan_batches(lengths[nonempty], budget):
        batch = Batch(nonempty[batch.rows], batch.width)
        items = [tokenized[row] for row in batch.rows]
        input_ids, attention = encoder.collate(items)
        output = encoder.model.embed(input_ids.to(device), attention.to(device))  # [B, T, D]
        for row, (vecs, ids) in zip(batch.rows, encoder.finish(output, items)):
            vectors[row], token_ids[row] = vecs, ids
        computed += batch.computed_tokens
        largest = max(largest, batch.computed_tokens)
    return ChunkResult(vectors, token_ids, int(lengths.sum()), computed, largest)
