"""One loaded model tokenizes from several threads (a program sharing one ``Embedder``, as ``search()`` and
``encode_queries()`` load it, between its threads): every text gets the ids, and every query the matrix, that it
gets alone. A tokenizer setting changed for one call (truncation on for a short query, off for a long text's
window) would reach another thread's encode in flight: queries came back with more tokens than their length."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from test_long_text import long_text

# Short texts (truncated by the tokenizer call) mixed with long ones (> the first window: their windows are
# tokenized whole, untruncated, before the cut), so that calls of both kinds overlap.
SHORT = [f"what is token {word} number {n}?" for n, word in enumerate("alpha beta gamma delta".split())]
TEXTS = SHORT + [long_text(seed, words=400) for seed in range(4)]


def _from_threads(call, texts: list[str], rounds: int) -> list:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(call, texts * rounds))


def test_one_embedder_from_many_threads_gives_the_sequential_matrices(checkpoint):
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    embedder = Embedder.load(str(checkpoint("stanford")), EncodeFlags(kind="query"), "cpu")  # query length 16
    alone = [embedder.embed([text])[0] for text in TEXTS]
    threaded = _from_threads(lambda text: embedder.embed([text])[0], TEXTS, rounds=8)
    wrong = [
        (i % len(TEXTS), len(ids), len(alone[i % len(TEXTS)][1]))
        for i, (vectors, ids) in enumerate(threaded)
        if not (np.array_equal(ids, alone[i % len(TEXTS)][1]) and np.array_equal(vectors, alone[i % len(TEXTS)][0]))
    ]
    assert not wrong, f"(text, tokens in a thread, tokens alone): {wrong[:5]} of {len(wrong)}"


@pytest.mark.parametrize("name", ["stanford", "pylate_modernbert", "pylate_xlmr"])
def test_tokenizing_from_many_threads_gives_the_sequential_ids(checkpoint, name):
    """The tokenizer step alone, where the race is widest: batches of many short texts beside long texts."""
    from tokembed.embedder import Embedder
    from tokembed.settings import EncodeFlags

    encoder = Embedder.load(str(checkpoint(name)), EncodeFlags(kind="query"), "cpu").encoder

    def ids(text: str) -> list[list[int]]:
        return [item.ids.tolist() for item in encoder.tokenize([text] * (64 if text in SHORT else 1))]

    alone = [ids(text) for text in TEXTS]
    threaded = _from_threads(ids, TEXTS, rounds=40)
    wrong = [i % len(TEXTS) for i, got in enumerate(threaded) if got != alone[i % len(TEXTS)]]
    assert not wrong, f"texts tokenized otherwise in a thread: {wrong[:10]} ({len(wrong)} of {len(threaded)})"
