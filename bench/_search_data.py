"""The search benchmark's data (``bench/search.py``): real token vectors, synthetic documents made of their
spans written straight into an index, and recall against the exact scan."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TIE = 1e-5  # exact scores this close to the 10th best count as tied with it


def encode_real(root: Path, n_docs: int) -> tuple[Path, Path]:
    """Encode real docstrings (documents) and 100 other first lines (queries) with the demo model."""
    from _corpus import docstrings

    def write_jsonl(path: Path, rows: list[dict]) -> Path:  # as Parquet
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = path.with_suffix(".parquet")
        pq.write_table(pa.table({"id": [r["id"] for r in rows], "text": [r["text"] for r in rows]}), path)
        return path

    texts = docstrings(n_docs + 100)
    docs = write_jsonl(root / "docs.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(texts[:n_docs])])
    queries = write_jsonl(root / "queries.jsonl", [{"id": str(i), "text": t.splitlines()[0]} for i, t in enumerate(texts[n_docs:])])
    for corpus, out, kind in ((docs, root / "real", "document"), (queries, root / "queries", "query")):
        subprocess.run([sys.executable, "-m", "cli.main", "encode", corpus, "-o", out, "--kind", kind, "--dimensions", "128",
                        "--max-length", "96" if kind == "document" else "32", "--devices", "cpu", "-q"], check=True, cwd=REPO)
    return root / "real", root / "queries"


def read_vectors(folder: Path) -> list[np.ndarray]:
    from tokembed.index import open_index
    from tokembed.search.maxsim import batch_arrays

    index, out = open_index(folder), []
    for batch in index.iter_batches():
        offsets, vectors, _ = batch_arrays(batch, index.dim, str(folder))
        out += [vectors[a - offsets[0] : b - offsets[0]].copy() for a, b in zip(offsets[:-1], offsets[1:])]
    return out


def spans(pool_size: int, count: int, seed: int, batch: int = 1000):
    """Per batch of up to ``batch`` synthetic documents, (first, length) of each one's span of the pool of real
    token vectors (16-96 tokens): the one source of the benchmark's documents (``_plaid_shortcut`` codes by it)."""
    rng = np.random.default_rng(seed)
    for start in range(0, count, batch):
        n = min(batch, count - start)
        lengths = rng.integers(16, 97, size=n)
        firsts = rng.integers(0, pool_size - 96, size=n)
        yield start, firsts, lengths


def synthetic_docs(real: list[np.ndarray], count: int, seed: int, prefix: str = "doc"):
    """Batches of (ids, vectors): each document a random span (16-96 tokens) of a random real document."""
    pool = np.concatenate(real)
    for start, firsts, lengths in spans(len(pool), count, seed):
        yield [f"{prefix}{start + i}" for i in range(len(firsts))], [pool[f : f + l] for f, l in zip(firsts, lengths)]


def write_synthetic(folder: Path, template: dict, batches) -> None:
    from tokembed.index.writer import IndexWriter

    writer = IndexWriter(folder, template["dim"], "float16", shard_rows=50_000)
    for ids, vectors in batches:
        hashes = [hashlib.sha256(v.tobytes()).digest() for v in vectors]  # content: the vectors
        writer.write(ids, vectors, [np.zeros(len(v), np.int32) for v in vectors], hashes)
    writer.close_shard()
    shards = [s.to_json() for s in writer.shards]
    totals = {"rows": sum(s["rows"] for s in shards), "tokens": sum(s["tokens"] for s in shards), "bytes": sum(s["bytes"] for s in shards)}
    writer.commit({**{k: v for k, v in template.items() if k != "search"}, "shards": shards, "totals": totals})


def recall(truth: list[list[str]], got: list[list[tuple[str, float]]], k: int) -> float:
    return float(np.mean([len(set(t[:k]) & {doc for doc, _ in g[:k]}) / k for t, g in zip(truth, got)]))


def recall_with_ties(truth: list[list[str]], scores: list[list[float]], got: list[list[tuple[str, float]]], k: int = 10) -> float:
    """Recall@k counting a returned document as a hit when its exact score ties the k-th best's: the benchmark's
    documents are overlapping spans of the same real vectors, so many have the k-th best exact score and the
    scan's top-k among them is only index order. Documents outside the exact top-100 count as misses."""
    out = []
    for ids, exact, hits in zip(truth, scores, got):
        known, bar = dict(zip(ids, exact)), exact[k - 1] - TIE
        out.append(min(k, sum(known.get(doc, -np.inf) >= bar for doc, _ in hits[:k])) / k)
    return float(np.mean(out))


def recall_with_exact_ties(folder, queries: list, scores: list[list[float]], results: list[list[list[str]]], k: int = 10) -> list[float]:
    """Per result set (per query the returned ids, best first), recall@k counting each returned document whose
    exact MaxSim, computed here in float64 from the stored vectors, is within ``TIE`` of the scan's k-th best.
    Unlike ``recall_with_ties``, a tied document outside the scan's top 100 counts too, so which of many tied
    documents a search returns (decided by the last bits of float32 products) does not move the figure."""
    vectors = _stored_vectors(folder, {doc for result in results for hits in result for doc in hits[:k]})
    exact: dict[tuple[int, str], float] = {}

    def score(query: int, doc: str) -> float:
        if (query, doc) not in exact:
            sims = queries[query].astype(np.float64) @ vectors[doc].T
            exact[query, doc] = float(sims.max(axis=1).sum()) if sims.shape[1] else -np.inf
        return exact[query, doc]

    return [float(np.mean([min(k, sum(score(i, doc) >= scores[i][k - 1] - TIE for doc in hits[:k])) / k
                           for i, hits in enumerate(result)])) for result in results]


def _stored_vectors(folder, wanted: set[str]) -> dict[str, np.ndarray]:
    """id -> its stored token vectors as float64, for the ``wanted`` ids (one streaming pass over the shards)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from tokembed.index.reader import open_index
    from tokembed.search.maxsim import batch_vectors

    index, value_set, found = open_index(folder), pa.array(sorted(wanted), pa.string()), {}
    for batch in index.iter_batches():
        ids = batch.column("id")
        rows = np.flatnonzero(pc.is_in(ids, value_set=value_set.cast(ids.type)).to_numpy(zero_copy_only=False))
        if len(rows):
            offsets, vectors = batch_vectors(batch, index.dim, str(folder))
            for r in rows.tolist():
                found[ids[r].as_py()] = vectors[offsets[r] : offsets[r + 1]].astype(np.float64)
    return found


def read_truth(truth_file: str) -> tuple[list | None, list | None]:
    """The exhaustive scan's top 100 ids and scores per query; (None, None) under --no-exact."""
    if not truth_file:
        return None, None
    return json.loads(Path(truth_file).read_text()), json.loads(Path(truth_file).with_suffix(".scores.json").read_text())
