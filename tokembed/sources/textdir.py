"""Folder of ``.txt``/``.md`` files: one item per file, id = path relative to the folder, UTF-8 strict (a leading
byte-order mark, as Windows editors write one, is no part of the text: dropped, as the JSONL reader drops it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tokembed.open_files import refuse_out_of_descriptors
from tokembed.sources.base import TEXT_SUFFIXES, Item, SourceOptions
from tokembed.sources.chunks import chunked
from tokembed.sources.files import folder_files, special_file_problem


def read_text_folder(folder: Path, options: SourceOptions, offset: int) -> Iterator[list[Item]]:
    files = folder_files(folder, lambda path: path.suffix in TEXT_SUFFIXES, options.walks)
    return chunked((_item(folder, file) for file in files), options.chunk_rows)


def _item(folder: Path, file: Path) -> Item:
    item_id = file.relative_to(folder).as_posix()
    if problem := special_file_problem(file):  # a FIFO would block the read forever
        return Item(item_id, None, str(file), 0, error=problem)
    try:
        text = _decoded(file.read_bytes())
    except UnicodeDecodeError as exc:
        return Item(item_id, None, str(file), 0, error=f"not valid UTF-8 (byte {exc.start})")
    except OSError as exc:
        refuse_out_of_descriptors(file, exc)
        return Item(item_id, None, str(file), 0, error=f"cannot read ({exc.strerror})")
    return Item(item_id, text, str(file), 0)


def _decoded(data: bytes) -> str:
    """The file's text; a ``UnicodeDecodeError``'s ``start`` is the byte's offset in the file, BOM included."""
    bom = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return str(memoryview(data)[bom:], "utf-8")  # no copy of a huge file's bytes
    except UnicodeDecodeError as exc:
        exc.start += bom
        raise


_BOM = b"\xef\xbb\xbf"
