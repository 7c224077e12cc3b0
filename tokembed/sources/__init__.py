"""Corpus readers: every input form becomes a stream of ``Item`` chunks, never the whole corpus at once.

``open_sources(inputs, ...)`` picks the reader for each path (Parquet file or folder, JSONL file, folder
of ``.txt``/``.md`` files) and yields lists of ``Item`` in input order. Rows that cannot be used (null
text, bad UTF-8) come through as items with ``error`` set, so the engine can skip or fail per
``--on-error``; files that cannot be read at all raise ``BadInputError`` naming the file.
"""

from tokembed.sources.base import Item, SourceOptions, open_sources

__all__ = ["Item", "SourceOptions", "open_sources"]
