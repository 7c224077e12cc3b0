"""Recall of the search structure on real documents alone: the docstrings ``bench/search.py`` encoded, no
synthetic spans (so no repeated vectors and few ties), compressed at each ``--nbits``.

    python bench/search.py --docs 20000 --real 2800 --work DIR     # once: encodes the real docstrings
    python bench/search_real.py --work DIR [--nbits 2 4] [--centroids 4096]

Per nbits: ``compress`` of a copy of ``DIR/real`` (seconds, bytes/token), then recall@10/@100 against the
exhaustive scan for the same 100 queries, re-ranking from the stored vectors and from the decoded codes
(what a compressed-only index does), and the decoded codes' own ceiling: the exhaustive MaxSim over every
decoded token. Prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import tokembed  # noqa: E402,F401  (before numpy, as the CLI: its native-library settings, e.g. tokembed.cpu)
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _search_data import recall  # noqa: E402

GRID = [(16, 128), (16, 320), (24, 384), (32, 512)]  # (probe, candidates); (24, 384) are the defaults


def decoded_ceiling(index, structure, queries: list[np.ndarray], truth: list[list[str]]) -> float:
    """recall@10 of the exhaustive MaxSim over every token decoded from its codes."""
    from tokembed.search.plaid.shard_reads import doc_id as _doc_id

    scores, ids = [], []
    for number, codes in enumerate(structure.shards):
        decoded = structure.codec.decode(codes.centroid_ids[:], codes.residuals)
        firsts = codes.doc_offsets[:-1]
        lengths = np.diff(codes.doc_offsets)
        keep = lengths > 0
        per_query = [np.maximum.reduceat(q @ decoded.T, firsts[keep], axis=1).sum(axis=0) for q in queries]
        scores.append(np.stack(per_query))
        rows = np.flatnonzero(keep) + int(structure.starts[number])
        ids.extend(_doc_id(index, structure, int(row)) for row in rows)
    scores, ids = np.concatenate(scores, axis=1), np.array(ids, dtype=object)
    got = [[(doc, 0.0) for doc in ids[np.argsort(-row, kind="stable")[:10]]] for row in scores]
    return recall(truth, got, 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a bench/search.py --work folder (its real/ and queries.npy)")
    parser.add_argument("--nbits", type=int, nargs="+", default=[2, 4], help="compress --nbits values, each timed in turn (default 2 4)")
    parser.add_argument("--centroids", type=int, default=4096, help="compress --centroids (default 4096)")
    args = parser.parse_args()
    from tokembed.index import open_index
    from tokembed.search import search_vectors
    from tokembed.search.plaid import compress_index, open_searchable, plaid_search
    from tokembed.search.plaid.report import structure_facts

    queries = [np.asarray(q, np.float32) for q in np.load(args.work / "queries.npy", allow_pickle=True)]
    source = open_index(args.work / "real")
    exact = search_vectors(source, queries, top_k=100, exact=True)
    truth = [[hit.id for hit in row] for row in exact]
    print(f"real documents: {source.rows} docstrings, {source.tokens} tokens; {len(queries)} queries")
    for nbits in args.nbits:
        folder = args.work / f"real-nbits{nbits}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(args.work / "real", folder)
        started = time.perf_counter()
        compress_index(folder, nbits=nbits, centroids=args.centroids)
        seconds = time.perf_counter() - started
        index, structure = open_searchable(folder)
        facts = structure_facts(index)
        print(f"nbits {nbits}, {structure.codec.k} centroids: compress {seconds:.1f} s, {facts['bytes_per_token']['total']:.2f} B/token; "
              f"decoded codes, exhaustive MaxSim: R@10 {decoded_ceiling(index, structure, queries, truth):.3f}")
        for probe, candidates in GRID:
            for rerank in ("vectors", "codes"):
                got = plaid_search(index, structure, queries, 100, probe, max(candidates, 100), rerank)
                print(f"  probe {probe:>2}, candidates {candidates:>3}, re-rank from {rerank:>7}: "
                      f"R@10 {recall(truth, got, 10):.3f}, R@100 {recall(truth, got, 100):.3f}")
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
