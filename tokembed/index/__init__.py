"""The index on disk: Arrow IPC shards under ``data/`` and ``manifest.json``, the commit point."""

from tokembed.index.format import FORMAT, FORMAT_VERSION, shard_schema
from tokembed.index.reader import Index, open_index
from tokembed.index.writer import IndexWriter

__all__ = ["FORMAT", "FORMAT_VERSION", "Index", "IndexWriter", "open_index", "shard_schema"]
