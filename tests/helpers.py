"""Small helpers for tests: write corpora, read an index back whole (fine for tiny test indexes)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def write_parquet(path: Path, rows: list[dict], row_group_size: int | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {key: [row.get(key) for row in rows] for key in rows[0]} if rows else {"id": [], "text": []}
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_index(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """id -> (vectors float32 [n, D], token ids) for every row, in index order."""
    from tokembed.index import open_index

    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    index = open_index(folder)
    for batch in index.iter_batches():
        data = batch.to_pydict()
        for doc_id, emb, ids in zip(data["id"], data["embeddings"], data["token_ids"]):
            rows[doc_id] = (np.asarray(emb, dtype=np.float32).reshape(-1, index.dim), np.asarray(ids, dtype=np.int64))
    return rows


def manifest(folder: Path) -> dict:
    """The index's manifest as written, less its seal (``tokembed.index.sealed``)."""
    from tokembed.index.sealed import SEAL

    return {key: value for key, value in json.loads((folder / "manifest.json").read_text()).items() if key != SEAL}


def write_manifest(folder: Path, data: dict, sealed: bool = True) -> None:
    """Replace the index's manifest with ``data``: sealed, as tokembed writes one (a test's edit the index is to
    take as its own), or not (``sealed=False``), as a release before the seal wrote it."""
    from tokembed.index.sealed import SEAL, sealed_bytes

    body = {key: value for key, value in data.items() if key != SEAL}
    (folder / "manifest.json").write_bytes(sealed_bytes(body, indent=2) if sealed else json.dumps(body).encode())


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "!!! ... ??? ;;; ---",
    "Émoji 🎉 and CJK 漢字テスト mixed in one line.",
    "ColBERT stores one vector per token, then scores with MaxSim. " * 30,
    "short",
    "Paris is the capital of France; Berlin is the capital of Germany.",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
]


def assert_score_equals_brute_force(cli, index: Path, queries: list[str]) -> None:
    """``tokembed score`` over every document of ``index`` equals a float64 brute-force MaxSim of each query
    (encoded with the settings in the index's manifest) over the stored vectors, best first."""
    import pytest

    from tokembed.embedder import Embedder

    rows = read_index(index)
    query_flags = [arg for text in queries for arg in ("--query", text)]
    scored = cli("score", index, *query_flags, "-f", "jsonl", "-k", len(rows))
    assert scored.exit_code == 0, scored.output
    records = [json.loads(line) for line in scored.stdout.splitlines()]
    query_embedder = Embedder.for_index(manifest(index), kind="query")
    for number, text in enumerate(queries, start=1):
        (q, _), = query_embedder.embed([text])
        brute = {doc: float((q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum()) for doc, (d, _) in rows.items()}
        got = {r["doc_id"]: r["score"] for r in records if r["query_id"] == f"q{number}"}
        assert got.keys() == brute.keys()
        for doc in brute:
            assert got[doc] == pytest.approx(brute[doc], abs=1e-4)
        ranked_scores = [r["score"] for r in records if r["query_id"] == f"q{number}"]
        assert ranked_scores == sorted(ranked_scores, reverse=True)  # best first


def same_rows(left: list[tuple], right: list[tuple]) -> bool:
    """Rows of plain values ending in a pixel array (or None) are equal: the values, and the pixels exactly."""
    return len(left) == len(right) and all(
        a[:-1] == b[:-1] and (a[-1] is None) == (b[-1] is None) and (a[-1] is None or np.array_equal(a[-1], b[-1]))
        for a, b in zip(left, right)
    )


def encode_chunk(model, kind: str, inputs: list, budget: int = 1 << 20, **flags):
    """What the engine does with a chunk: tokenize, batch by length under the budget, collate, embed, finish."""
    from tokembed.engine.batching import plan_batches
    from tokembed.settings import EncodeFlags, resolve

    settings = resolve(EncodeFlags(kind=kind, store_dtype="float32", **flags), model.colbert, model.max_length)
    encoder = model.make_encoder(settings)
    prepared = encoder.tokenize(inputs)
    results: list = [None] * len(inputs)
    for batch in plan_batches(np.array([len(item.ids) for item in prepared]), budget):
        items = [prepared[row] for row in batch.rows]
        for row, result in zip(batch.rows, encoder.finish(encoder.embed(encoder.collate(items)), items)):
            results[row] = result
    return results


def exec_after(setup: str, argv: list) -> list[str]:
    """A command line that runs ``argv`` in a fresh Python after ``setup`` (a limit set, a descriptor closed, a signal
    reset: what survives the exec): what a ``preexec_fn`` does, without running Python code in the forked child of
    this threaded test process, which can hang there before the exec (a lock another thread held at the fork)."""
    import sys

    trampoline = f"import ctypes, os, resource, signal, sys\n{setup}\nos.execv(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", trampoline, *map(str, argv)]


@contextlib.contextmanager
def serve_process(checkpoint):
    """``tokembed serve --model checkpoint`` in a process of its own on a free port: (the process, its URL), its
    /health answered; killed at the end if it is still running."""
    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--model", str(checkpoint), "--port", "0", "--log-level", "warning"],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stderr.readline()
        assert "tokembed: serving" in line, line
        url = line.rsplit(" at ", 1)[1].strip()
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
