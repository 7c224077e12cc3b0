"""Planning a chunk: which of its rows are carried over from the previous index, which go through the model, and
which are skipped (bad rows, duplicates: ``--on-error``). ``encode`` streams the planned chunks to the engine."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace

import numpy as np

from tokembed.errors import BadInputError
from tokembed.index.keys import id_keys
from tokembed.sources import Item, open_sources
from tokembed.sources.base import id_label
from tokembed.sources.duplicates import SeenIds
from tokembed.sources.pdf import is_empty_page


def content_hash(settings_fingerprint: str, text: str, mark: str = "", image: str | None = None) -> bytes:
    """sha256 of the item's content (its text, and ``image``: an image or video item's ``Item.image_sha256``), keyed
    by the model and settings that encoded it. ``mark``: what the model reads of this item otherwise than an earlier
    release did (``TextEncoder.content_mark``), so that an incremental run encodes it again, as a rebuild does; ""
    for every other item, whose hash stays as it was."""
    digest = hashlib.sha256(settings_fingerprint.encode() + b"\0")
    if "\0" in text:  # NUL-joined fields would blur: "a\0image sha256:D" alone would hash as the text "a" with image D
        digest.update(_fields_apart(text, image, mark))
        return digest.digest()
    _update_text(digest, text)  # the NUL-joined fields of earlier releases: the hashes of their indexes stay current
    if image is not None:
        digest.update(f"\0image sha256:{image}".encode())
    if mark:
        digest.update(b"\0" + mark.encode())
    return digest.digest()


def _fields_apart(text: str, image: str | None, mark: str) -> bytes:
    """A text holding NUL, its image and its mark, unambiguously: a byte no UTF-8 text starts with (so never the
    NUL-joined form of another item), the text's own sha256, then the image and the mark, each length-prefixed."""
    text_digest = hashlib.sha256()
    _update_text(text_digest, text)
    fields = [b"" if image is None else b"+" + image.encode(), mark.encode()]
    return b"\xff" + text_digest.digest() + b"".join(len(value).to_bytes(8, "big") + value for value in fields)


def _update_text(digest, text: str) -> None:
    for start in range(0, len(text), _HASH_SLICE):  # UTF-8 a slice at a time: no whole second copy of a huge text
        digest.update(text[start : start + _HASH_SLICE].encode("utf-8", "surrogatepass"))


_HASH_SLICE = 1 << 20  # characters
SKIPS_TOLD = 20  # skipped rows a run names one by one in its log and JSON summary (manifest.json lists them all)


@dataclass
class PlannedChunk:
    number: int
    items: list[Item]  # usable items, input order
    hashes: list[bytes]
    carried: dict[int, tuple]  # position -> stored (vectors, token ids); (codes, token ids) from a compressed-only index
    to_encode: list[int]  # positions that go through the model
    source_rows: int  # rows read, bad ones included
    # Summary state once this chunk was planned: what a journal entry ending at this chunk records
    # (a pool runner plans ahead, so the live summary may already count later chunks).
    counts: dict = field(default_factory=dict)
    skipped: int = 0
    empty: list[int] = field(default_factory=list)  # positions of PDF pages without text: rows with no tokens
    empty_pages: int = 0  # len(summary.empty_pages) once this chunk was planned
    digest: str = ""  # chunk_digest: what the run journal records of the chunk


def plan_chunks(job, settings_fp, indexes, journal, restart, summary, state, encoder=None) -> Iterator[PlannedChunk]:
    """Read the corpus and decide, item by item, what is carried over and what is encoded. ``indexes``: (the index
    rows are carried over from, the index the added / updated / deleted counts compare with), either None.
    ``encoder``: the model's say on an item, where it has one: ``input_problem`` (a processor's refusal of an image
    or text: ``VisionEncoder``) and ``content_mark`` (a reading that changed since an earlier release:
    ``TextEncoder``). ``journal``: the chunks an interrupted run finished come first and are only checked against
    its ``chunk_digests``; at the first one planned otherwise now (an image a Parquet path cell names, replaced
    since: no run signature sees it), ``restart()`` drops the journal's shards and the corpus is planned again from
    its first chunk (nothing was yielded yet, so nothing was written)."""
    if not (yield from _planned(job, settings_fp, indexes, journal, summary, state, encoder)):
        restart()
        state["seen_previous"] = 0
        yield from _planned(job, settings_fp, indexes, journal, summary, state, encoder)


def _planned(job, settings_fp, indexes, journal, summary, state, encoder) -> Iterator[PlannedChunk]:
    """``plan_chunks``' one pass over the corpus; returns False, having yielded nothing, at the first resumed chunk
    whose rows differ from the journal's."""
    previous, counted = indexes
    resumed_chunks = journal.chunks_done  # not read as the run goes: its record() moves it on
    sources = _chunked(job.sources, job.shard_rows)
    seen = SeenIds(job.inputs, sources)
    number = -1
    with closing(open_sources(job.inputs, sources)) as chunks:
        for chunk in chunks:  # not enumerate(): it keeps its last (number, chunk) alive
            number += 1
            resumed = number < resumed_chunks  # already in a finished shard of the interrupted run
            items, keys = _usable_items(chunk, seen, job.on_error, encoder, summary, record=not resumed)
            stored_rows = counted.find([item.id for item in items], keys) if counted is not None else [None] * len(items)
            state["seen_previous"] += sum(row is not None for row in stored_rows)
            hashes = _content_hashes(items, settings_fp, encoder)
            if not resumed:
                yield _planned_chunk(number, len(chunk), items, hashes, stored_rows, previous, summary)
            elif chunk_digest(items, hashes) != journal.chunk_digests[number]:
                return False
            del chunk, items  # one chunk alive at a time (see encode._encode_stream)
    return number + 1 >= resumed_chunks  # else the corpus now ends before the chunks the journal finished


def _planned_chunk(number, source_rows, items, hashes, stored_rows, previous, summary) -> PlannedChunk:
    """Which of the chunk's usable ``items`` are carried over, encoded, or empty pages; counted in ``summary``."""
    same = previous.unchanged(stored_rows, hashes) if previous is not None else np.zeros(len(items), bool)
    carried, to_encode, empty = {}, [], []
    for position, row in enumerate(stored_rows):
        if is_empty_page(items[position]):
            summary.empty_pages.append({"id": items[position].id, "source_file": items[position].source_file, "page": items[position].page})
        if same[position]:
            carried[position] = previous.carried_row(row)
            summary.unchanged += 1
        else:
            (empty if is_empty_page(items[position]) else to_encode).append(position)
            if row is not None:
                summary.updated += 1
            else:
                summary.added += 1
    return PlannedChunk(
        number, items, hashes, carried, to_encode, source_rows, summary.counts(), len(summary.skipped), empty,
        len(summary.empty_pages), chunk_digest(items, hashes),
    )


def chunk_digest(items: list[Item], hashes: list[bytes]) -> str:
    """sha256 of a chunk's usable rows (ids and content hashes, in order): what the run journal records of it."""
    digest = hashlib.sha256()
    for item, value in zip(items, hashes):
        name = item.id.encode("utf-8", "surrogatepass")
        if b"\0" in name:  # would blur where it ends: length-prefixed after a byte no UTF-8 starts with (others as before)
            name = b"\xff" + len(name).to_bytes(8, "big") + name
        digest.update(name + b"\0" + value)
    return digest.hexdigest()


def _chunked(sources, shard_rows: int):
    """Shards end on chunk boundaries (what a journal can resume from), so chunks are no larger than shards."""
    return replace(sources, chunk_rows=min(sources.chunk_rows, shard_rows))


def _usable_items(chunk: list[Item], seen: SeenIds, on_error: str, encoder, summary, record: bool):
    """The chunk's items to index (bad rows and the model's refusals left out, ``--on-error``) and their id keys."""
    input_problem = getattr(encoder, "input_problem", None)
    if input_problem is not None:
        chunk = [refused_by_model(item, input_problem) for item in chunk]
    keys = id_keys(item.id for item in chunk)
    usable = usable_positions(chunk, keys, seen, on_error, summary, record)
    return [chunk[position] for position in usable], keys[usable]


def _content_hashes(items: list[Item], settings_fp: str, encoder) -> list[bytes]:
    content_mark = getattr(encoder, "content_mark", None)
    return [content_hash(settings_fp, item.text or "", content_mark(item.text) if content_mark else "", item.image_sha256)
            for item in items]


def refused_by_model(item: Item, input_problem) -> Item:
    """The item, as a bad row where the model's processor refuses its image (a page it cannot resize) or its text
    (a query holding an image placeholder)."""
    value = item.image if item.image is not None else item.text
    problem = input_problem(value) if item.error is None and value is not None else None
    return item if problem is None else replace(item, image=None, error=problem)


def model_input(item: Item, images: bool):
    """What the model encodes for an item: its decoded image for image documents, else its text."""
    return item.image if images else item.text


def usable_positions(chunk: list[Item], keys: np.ndarray, seen: SeenIds, on_error: str, summary, record: bool) -> list[int]:
    """Positions in ``chunk`` of the items to index; ``keys`` are the chunk's ``id_keys``."""
    good = []
    duplicates = seen.record(chunk, keys)
    for position, item in enumerate(chunk):
        if position in duplicates:
            raise BadInputError(f"duplicate id {item.id!r}: {duplicates[position]} and {item.location}")
        if item.error is None:
            good.append(position)
        elif on_error != "skip" and not item.skip_always:
            raise BadInputError(f"{item.location} ({id_label(item.id)}): {item.error}", hint="--on-error skip records and skips such rows")
        elif record:
            entry = {"id": item.id, "source": item.source, "row": item.row, "reason": item.error}
            summary.skipped.append(entry if item.page is None else {**entry, "page": item.page})
    return good


def log_skipped(skipped: list[dict], log) -> None:
    """One ``warning:`` line per skipped row (its location, id or "no usable id", and reason) through ``log``, the
    progress log (silent with ``--quiet``): the first ``SKIPS_TOLD``, then how many more."""
    for entry in skipped[:SKIPS_TOLD]:
        log(f"warning: skipped {skipped_location(entry)} ({id_label(entry['id'])}): {entry['reason']}")
    if len(skipped) > SKIPS_TOLD:
        log(f"warning: ... and {len(skipped) - SKIPS_TOLD} more skipped row(s) (see manifest.json skipped)")


def skipped_location(entry: dict) -> str:
    """A recorded skip's file (row, page) as a bad row's error names it (``Item.location``)."""
    return Item(entry["id"], None, entry["source"], entry["row"], page=entry.get("page")).location
