"""Index format version 1: the shard schema and the names of files in an index folder.

    INDEX_DIR/manifest.json
    INDEX_DIR/data/part-NNNNNN.arrow    Arrow IPC file format, one row per item:
        id            string
        embeddings    list<fixed_size_list<float16|float32, D>>   [n_tokens, D]
        token_ids     list<int32>
        content_hash  fixed_size_binary(32)   sha256(settings fingerprint, content)
        source_file   string, nullable        a PDF page's file (path relative to the input folder); null otherwise
        page          int32, nullable         a PDF page's 1-based number; null otherwise

The last two columns were added without a version bump: they are nullable and every reader selects
columns by name, so shards without them (older indexes) read as before, and older readers ignore them.
"""

from __future__ import annotations

import re

FORMAT = "tokembed-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATA_DIR = "data"
SHARD_PATTERN = re.compile(r"^part-(\d{6,})\.arrow$")


def shard_name(number: int) -> str:
    return f"part-{number:06d}.arrow"


def shard_schema(dim: int, store_dtype: str):
    import pyarrow as pa

    value_type = pa.float16() if store_dtype == "float16" else pa.float32()
    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("embeddings", pa.list_(pa.list_(value_type, dim))),
            pa.field("token_ids", pa.list_(pa.int32())),
            pa.field("content_hash", pa.binary(32)),
            pa.field("source_file", pa.string()),
            pa.field("page", pa.int32()),
        ]
    )
