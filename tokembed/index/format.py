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

Compressed-only indexes (``tokembed compress --drop-vectors``): the shards have the same columns minus
``embeddings`` (``vectorless_schema``), and the manifest's ``search`` section says ``"vectors": "dropped"``.
A row's token count is still the length of its ``token_ids`` (and of its codes in the search structure),
never 0 for want of vectors. Readers that need the vectors call ``require_vectors`` first and refuse with
``VectorsDroppedError``; search re-ranks from the decoded codes.
Such a manifest is committed with ``format_version`` 2 (``manifest_bytes``): a tokembed older than this reads
only version 1 and refuses it with a message instead of failing on the missing column; version 3 where its codes
also keep each vector's length (``search.vector_norms``), which releases reading 1 and 2 would decode to unit
length. Indexes with vectors stay version 1, so older readers keep reading them.
"""

from __future__ import annotations

import re

FORMAT = "tokembed-index"
FORMAT_VERSION = 1  # an index whose shards hold vectors
VECTORLESS_FORMAT_VERSION = 2  # a compressed-only index (shards without ``embeddings``)
# A compressed-only index whose codes keep each vector's length (not unit length: --no-normalize, --pool-factor):
# a release before the lengths decoded them to unit length, scored such an index wrong, and its cron run wrote code
# files without lengths. It reads versions 1 and 2 only, so it refuses this one.
VECTORLESS_LENGTHS_FORMAT_VERSION = 3
READABLE_VERSIONS = (FORMAT_VERSION, VECTORLESS_FORMAT_VERSION, VECTORLESS_LENGTHS_FORMAT_VERSION)
MANIFEST = "manifest.json"
DATA_DIR = "data"
STAGING_DIR = "staging"  # --engine ray: the chunks its actors staged, removed at the commit
SHARD_PATTERN = re.compile(r"^part-(\d{6,})\.arrow$")
SEARCH = "search"  # the manifest's search-structure section (tokembed.search.plaid)
SEARCH_KIND = "plaid"  # its ``kind``: the one structure this release builds and searches
VECTORS = "vectors"  # its key saying the shards hold no vectors ...
VECTORS_DROPPED = "dropped"  # ... with this value
# An empty generation has no structure; this says how its predecessor's was asked for ({"nbits", "drop_vectors"}),
# so that the next run with rows builds it again instead of leaving a plain index with vectors.
SEARCH_SETTINGS = "search_settings"
EMBEDDINGS = "embeddings"
NBITS_CHOICES = (1, 2, 4)  # bits a search structure's codec gives each residual dimension (8 // nbits of them a byte)


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


def vectorless_schema(schema):
    """``schema`` without its ``embeddings`` column: the shards of a compressed-only index."""
    import pyarrow as pa

    return pa.schema([field for field in schema if field.name != EMBEDDINGS])


def vectors_dropped(manifest: dict | None) -> bool:
    """True when the generation ``manifest`` describes holds no vectors (``compress --drop-vectors``)."""
    return ((manifest or {}).get(SEARCH) or {}).get(VECTORS) == VECTORS_DROPPED


def manifest_bytes(manifest: dict) -> bytes:
    """The manifest as committed, with the ``format_version`` its shards call for and sealed (``index.sealed``):
    every writer of a manifest goes through here."""
    from tokembed.index.sealed import sealed_bytes

    version = FORMAT_VERSION
    if vectors_dropped(manifest):
        lengths = bool((manifest.get(SEARCH) or {}).get("vector_norms"))
        version = VECTORLESS_LENGTHS_FORMAT_VERSION if lengths else VECTORLESS_FORMAT_VERSION
    return sealed_bytes({**manifest, "format_version": version}, indent=2, ensure_ascii=False)


def require_vectors(index, needed_by: str) -> None:
    """Raise ``VectorsDroppedError`` (exit 2) when ``index`` is compressed-only: ``needed_by`` needs vectors."""
    from tokembed.errors import VectorsDroppedError

    if vectors_dropped(index.manifest):
        raise VectorsDroppedError(
            f"{index.folder}: {needed_by} needs the stored vectors, which `tokembed compress --drop-vectors` "
            "dropped from this index (it keeps only the search structure's codes)",
            hint="a search that is not exact re-ranks from the decoded codes; to get vectors back, encode the corpus "
            "into a new index folder",
        )
