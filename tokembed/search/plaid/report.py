"""What ``tokembed info`` says about a search structure, and about the index's bytes per token by part."""

from __future__ import annotations

from tokembed.errors import IndexCorruptError
from tokembed.index.format import vectors_dropped
from tokembed.search.plaid.build import SEARCH
from tokembed.search.plaid.files import check_codec_agrees, map_tensors

# parts of a code file, as info names them
_PARTS = {"centroid_ids": "centroid_ids", "centroid_ids_packed": "centroid_ids", "residuals": "residuals", "list_counts": "inverted_lists",
          "list_rows": "inverted_lists", "doc_lengths": "doc_offsets", "vector_norms": "vector_norms",
          "list_offsets": "inverted_lists", "doc_offsets": "doc_offsets"}  # the last two: the layout before lengths


def structure_facts(index) -> dict | None:
    """nbits, centroids, drift, bytes per part and per token; None when the index has no structure.

    ``search_memory_bytes`` is the resident memory searching needs whatever the queries ask: the mapped
    parts opening reads (the codec, every shard's inverted lists and row lengths) and what it builds in
    memory (per shard its row and list offsets, int64; each centroid's lists joined into global int32 rows,
    all of them once every centroid was probed, with the shards' list offsets stacked and each joined size;
    the centroids as float32, as numpy columns or in oneDNN's layout (``products.py``), one or the other; an
    int32 and a bool scratch per row; each row's token range in its record batch). ``doc_offsets`` is the part that stores each row's token count.
    Residual codes are read only to re-rank without vectors; the candidates' vectors are read, not mapped.
    """
    structure = index.manifest.get(SEARCH)
    if not structure:
        return None
    codec_path = index.folder / structure["codec"]["file"]
    check_codec_agrees(codec_path, *map_tensors(codec_path), structure, index)
    sizes = {"codec": structure["codec"]["bytes"], "centroid_ids": 0, "residuals": 0, "inverted_lists": 0, "doc_offsets": 0}
    pairs = 0
    for entry in structure["shards"]:
        path = index.folder / entry["file"]
        tensors, _ = map_tensors(path)
        if "list_rows" not in tensors:
            raise IndexCorruptError(f"{path}: a code file layout this release cannot read (no list_rows): written by "
                                    "a newer tokembed? Upgrade, or search with --exact")
        for name, array in tensors.items():  # a tensor this release does not know (search ignores it): "other"
            part = _PARTS.get(name, "other")
            sizes[part] = sizes.get(part, 0) + array.nbytes
        pairs += tensors["list_rows"].size
    total = structure["bytes"]
    sizes["headers"] = total - sum(sizes.values())
    tokens = max(index.tokens, 1)
    per_token = {name: round(size / tokens, 3) for name, size in sizes.items()}
    per_token["total"] = round(total / tokens, 3)
    return {
        "nbits": structure["nbits"],
        "centroids": structure["centroids"],
        "bytes": total,
        "bytes_by_part": sizes,
        "bytes_per_token": per_token,
        "search_memory_bytes": sizes["codec"] + sizes["inverted_lists"] + sizes["doc_offsets"]
        + _built_at_open(structure["centroids"], index.dim, index.rows, len(structure["shards"]), pairs),
        "drift": structure["drift"],
    }


def _built_at_open(centroids: int, dim: int, rows: int, shards: int, pairs: int) -> int:
    """Bytes that opening a structure and its first query build in memory (see ``search.py``, ``candidates.py``)."""
    row_bytes = 4 if rows < 1 << 31 else 8
    lists = pairs * row_bytes + shards * (centroids + 1) * 8 + centroids * 8  # every list joined: the most it holds
    offsets = (rows + shards) * 8 + shards * (centroids + 1) * 8
    return offsets + lists + centroids * dim * 4 + rows * (4 + 1) + rows * 16


def index_bytes_per_token(index, manifest_bytes: int) -> dict | None:
    """Bytes per token of each part of the index on disk, and in total; None for an index of no tokens.

    ``vectors``: the stored token vectors (tokens x dim x dtype; 0 in a compressed-only index);
    ``shards_without_vectors``: the rest of the shards (ids, token ids, content hashes, Arrow framing);
    ``search_structure``: codec and code files; ``manifest``.
    """
    import numpy as np

    shards = sum(int(shard["bytes"]) for shard in index.shards)
    itemsize = np.dtype(index.manifest.get("embedding_dtype", "float16")).itemsize
    vectors = 0 if vectors_dropped(index.manifest) else index.tokens * index.dim * itemsize
    sizes = {"vectors": vectors, "shards_without_vectors": shards - vectors,
             "search_structure": (index.manifest.get(SEARCH) or {}).get("bytes", 0), "manifest": manifest_bytes}
    sizes["total"] = sum(sizes.values())
    if not index.tokens:
        return None  # as bytes_per_token: a per-token figure of nothing
    return {name: round(size / index.tokens, 3) for name, size in sizes.items()}
