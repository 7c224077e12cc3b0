"""Chunks of items, as each reader yields them: bounded by rows and, for decoded images, by pixels.

Stage: sources. Where a chunk ends depends on the items alone (their count and image sizes), so that a resumed
run's chunks are the interrupted run's (the journal keeps a digest per chunk).
"""

from __future__ import annotations

from collections.abc import Iterator

from tokembed.sources.base import Item, SourceOptions


def chunk_size(options: SourceOptions, images: bool) -> int:
    """Rows per chunk: fewer when every item holds a decoded image."""
    return min(options.chunk_rows, options.image_chunk_rows) if images else options.chunk_rows


def chunked(items: Iterator[Item], size: int, pixels: int | None = None) -> Iterator[list[Item]]:
    """Chunks of at most ``size`` items and, given ``pixels`` (``SourceOptions.image_chunk_pixels``), of at most that
    many decoded image pixels, but for a chunk of one larger image. Where a chunk ends depends on the items alone
    (their count and image sizes), so a resumed run's chunks are the interrupted run's (the journal's digests)."""
    chunk: list[Item] = []
    held = 0
    for item in items:
        count = image_pixels(item) if pixels is not None else 0
        if count and chunk and held + count > pixels:
            yield chunk
            chunk, held = [], 0
        chunk.append(item)
        held += count
        if len(chunk) >= size:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def image_pixels(item: Item) -> int:
    """The pixels of the item's decoded image (a ``PIL.Image``); 0 for a text, a bad row or a video (whose frames
    are decoded when it is encoded, not held by the chunk)."""
    size = getattr(item.image, "size", None)
    return size[0] * size[1] if isinstance(size, tuple) else 0
