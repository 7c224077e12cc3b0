"""The candidate stages of ``search`` (1: probed lists, 2: centroid interaction) in torch, on a GPU.

``score --device cuda`` on an index with a search structure: the codec's centroids, the inverted lists and
every token's centroid id are copied to the device once per opened structure (at 1M documents: ~0.45 GB),
and each query's stages 1 and 2 run there: ``q @ C.T``, the best ``probe`` centroids per query token, the
probed lists' rows and their summed gains (one scatter-max into [query tokens, rows reached]), then the
pool's centroid-interaction MaxSim. The exact re-rank stays where the vectors are read, in ``search``, so the
scores returned are the CPU path's to the bit; only a candidate at a float tie may differ (the centroid scores
come from another GEMM). The same definitions as ``candidates.py``: ties go to the lower row, a later-ranked
(better) probed centroid of the same row wins, rows no probe reaches are never candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokembed.search.plaid.candidates import IMPUTE_MARGIN


@dataclass(frozen=True)
class DeviceArrays:
    columns: object  # [D, K] float32: the centroids, as ``Codec.columns``
    list_offsets: object  # [K + 1] int64: centroid c's list is list_rows[offsets[c]:offsets[c + 1]]
    list_rows: object  # int64 global rows (``lists.GlobalLists``)
    doc_offsets: object  # [rows + 1] int64: global row r's tokens are centroid_ids[doc_offsets[r]:doc_offsets[r + 1]]
    centroid_ids: object  # [tokens] int32


def device_arrays(structure, device: str) -> DeviceArrays:
    """The structure's search arrays on ``device``, copied on first use and kept with the opened structure."""
    from tokembed.search.plaid.lists import global_lists

    if device not in structure._on_device:
        lists = global_lists(structure)  # joined (and checked) first: it takes the same lock
        with structure._building:
            if device not in structure._on_device:
                structure._on_device[device] = _copy_to(structure, lists, device)
    return structure._on_device[device]


def _copy_to(structure, lists, device: str) -> DeviceArrays:
    import torch

    token_bases = np.cumsum([0] + [len(codes.centroid_ids) for codes in structure.shards], dtype=np.int64)
    doc_offsets = [codes.doc_offsets[:-1].astype(np.int64) + base for codes, base in zip(structure.shards, token_bases)]
    doc_offsets.append(np.array([token_bases[-1]], np.int64))

    def put(array: np.ndarray, dtype) -> "torch.Tensor":
        return torch.from_numpy(np.ascontiguousarray(array, dtype)).to(device)

    # shard by shard: the host holds one shard's ids as int32 at a time, not every token's
    ids = [put(codes.centroid_ids, np.int32) for codes in structure.shards]
    return DeviceArrays(
        columns=put(structure.codec.columns, np.float32),
        list_offsets=put(lists.offsets, np.int64),
        list_rows=put(lists.rows, np.int64),
        doc_offsets=put(np.concatenate(doc_offsets), np.int64),
        centroid_ids=torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int32, device=device),
    )


def device_candidates(structure, q: np.ndarray, probe: int, pool: int, candidates: int, device: str) -> np.ndarray:
    """Global rows (sorted, int64) of the best ``candidates`` documents for query ``q`` [n, D]: stage 1 keeps the
    best ``pool`` by the probed lists' scores, stage 2 the best ``candidates`` of those by centroid interaction."""
    import torch

    arrays = device_arrays(structure, device)
    with torch.inference_mode():
        query = torch.from_numpy(np.ascontiguousarray(q, np.float32)).to(device)
        sims = query @ arrays.columns  # [n, K]
        rows = _stage_one(arrays, sims, probe, pool, torch.linalg.vector_norm(query, dim=1))
        rows = _stage_two(arrays, sims, rows, candidates)
        return rows.cpu().numpy().astype(np.int64)


def _stage_one(arrays: DeviceArrays, sims, probe: int, keep: int, norms):
    """``candidates.candidate_rows`` on the device."""
    import torch

    n, k = sims.shape
    p = min(probe, k)
    values, probed = _best_centroids(sims, p)
    values, probed = values.flip(1), probed.flip(1)  # worst first, as ``probed_centroids``
    gains = values - (values[:, :1] - IMPUTE_MARGIN * norms[:, None])
    wanted = probed.reshape(-1)  # (query token, rank) pairs
    starts = arrays.list_offsets[wanted]
    per_pair = arrays.list_offsets[wanted + 1] - starts
    members = arrays.list_rows[_ragged(starts, per_pair)]
    found, inverse = torch.unique(members, sorted=True, return_inverse=True)
    token = torch.arange(n, device=sims.device).repeat_interleave(p).repeat_interleave(per_pair)
    gain = gains.reshape(-1).repeat_interleave(per_pair)
    best = torch.zeros(n * len(found), dtype=torch.float32, device=sims.device)
    best.scatter_reduce_(0, token * len(found) + inverse, gain, reduce="amax")  # gains are > 0: 0 = not reached
    return _best_rows(found, _column_sums(best.view(n, len(found))), keep)


def _best_centroids(sims, p: int):
    """(scores, centroids) [n, p]: each row's best ``p``, best first; of equal scores the lowest centroid first, as
    ``candidates.best_columns`` (``torch.topk`` orders ties as the device likes). One ``topk`` over int64 keys: a
    score's float32 bits turned into an integer of the same order, then ``K - 1 - centroid`` below them."""
    import torch

    k = sims.shape[1]
    bits = (sims + 0.0).contiguous().view(torch.int32).long()  # + 0.0: -0.0 becomes +0.0, equal as floats
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # a negative float's bits count the other way
    keys = ordered * k + torch.arange(k - 1, -1, -1, device=sims.device)
    probed = torch.topk(keys, p, dim=1).indices
    return sims.gather(1, probed), probed


def _stage_two(arrays: DeviceArrays, sims, rows, keep: int):
    """``candidates.best_by_centroids`` on the device."""
    import torch

    if len(rows) <= keep:
        return rows
    starts = arrays.doc_offsets[rows]
    counts = arrays.doc_offsets[rows + 1] - starts
    ids = arrays.centroid_ids[_ragged(starts, counts)].long()
    document = torch.arange(len(rows), device=sims.device).repeat_interleave(counts)
    best = torch.full((len(sims), len(rows)), -torch.inf, dtype=torch.float32, device=sims.device)
    best.scatter_reduce_(1, document.expand(len(sims), -1), sims[:, ids], reduce="amax")
    return _best_rows(rows, _column_sums(best), keep)


def _column_sums(matrix):
    """Each column's sum, the rows (query tokens) added one at a time in order, as numpy's ``sum(axis=0)`` adds
    them: equal columns get the same bits. ``torch.sum(dim=0)`` groups a column's terms by the column's position
    (vectorized blocks), so exactly tied documents (duplicates; every token on one centroid) got other last bits,
    and the tie went to the wrong row. One add per query token: ~32 element-wise kernels a stage."""
    import torch

    total = torch.zeros(matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    for row in matrix:
        total += row
    return total


def _best_rows(rows, scores, keep: int):
    """The ``keep`` rows (ascending in, ascending out) with the highest scores; at equal scores the lower rows."""
    import torch

    if len(rows) > keep:
        rows = rows[torch.sort(scores, descending=True, stable=True).indices[:keep]]
    return torch.sort(rows).values


def _ragged(starts, counts):
    """Every position of the ranges [start, start + count), in order (``lists.ragged`` in torch)."""
    import torch

    total = int(counts.sum())
    firsts = starts - (torch.cumsum(counts, dim=0) - counts)
    return firsts.repeat_interleave(counts, output_size=total) + torch.arange(total, device=starts.device)
