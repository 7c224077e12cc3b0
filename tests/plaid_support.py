"""What the search-structure tests share: synthetic clustered documents and queries, recall, the demo corpus
of the cron tests, and running the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from test_score import write_index
from tokembed.search.plaid import compress_index

DIM = 32
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def clustered_docs(rng, n_docs: int, dim: int = DIM, topics: int = 40) -> list[np.ndarray]:
    """Documents drawn around a few topics each (real retrieval data is clustered; uniform noise is not)."""
    centres = rng.standard_normal((topics, dim))
    docs = []
    for _ in range(n_docs):
        own = centres[rng.integers(0, topics, size=3)]
        n = int(rng.integers(4, 30))
        v = own[rng.integers(0, 3, size=n)] + 0.7 * rng.standard_normal((n, dim))
        docs.append((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16))
    return docs


def queries_from(rng, docs, count: int, tokens: int = 8) -> list[np.ndarray]:
    out = []
    for _ in range(count):
        doc = docs[int(rng.integers(len(docs)))].astype(np.float32)
        q = doc[rng.integers(0, len(doc), size=tokens)] + 0.3 * rng.standard_normal((tokens, doc.shape[1]))
        out.append((q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
    return out


def recall(exact, got, k: int) -> float:
    return float(np.mean([len({h.id for h in e[:k]} & {g[0] for g in r[:k]}) / k for e, r in zip(exact, got)]))


def build_compressed(tmp_path_factory):
    """600 clustered documents in 3 shards, compressed with 256 centroids at nbits 2, and 20 queries: the
    ``compressed`` fixture (conftest.py)."""
    rng = np.random.default_rng(3)
    docs = clustered_docs(rng, 600)
    folder = write_index(tmp_path_factory.mktemp("plaid") / "index", docs, shard_rows=200, batch_rows=50)
    compress_index(folder, nbits=2, centroids=256)
    return folder, docs, queries_from(rng, docs, 20)


def tokembed(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True, text=True,
                          env={**ENV, **(env or {})})


def encode_and_compress(folder: Path, checkpoint, rows: int = 40, centroids: int = 16) -> Path:
    """``folder/index``: ``rows`` corpus rows encoded with ``checkpoint`` (float16 vectors), compressed with
    ``centroids`` centroids at nbits 2, through the CLI."""
    from helpers import write_jsonl

    corpus = write_jsonl(folder / "corpus.jsonl", corpus_rows(rows))
    assert tokembed("encode", corpus, "--model", checkpoint, "-o", folder / "index", "-q").returncode == 0
    assert tokembed("compress", folder / "index", "--centroids", centroids, "-q").returncode == 0
    return folder / "index"


def structure_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "plaid").iterdir())}


def corpus_rows(count: int, version: int = 0, start: int = 0) -> list[dict]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    return [{"id": f"doc{i:04d}", "text": " ".join(words[(i * 7 + j * (3 + version)) % 12] for j in range(3 + i % 11))}
            for i in range(start, start + count)]


def edited(rows: list[dict]) -> list[dict]:
    """From row 30 on: delete every 9th row, change every 7th; add 12 at the end (rows 0-29 stay)."""
    out = [dict(row) for i, row in enumerate(rows) if i < 30 or i % 9 != 4]
    for row in out[30::7]:
        row["text"] += " changed"
    return out + corpus_rows(12, start=len(rows))
