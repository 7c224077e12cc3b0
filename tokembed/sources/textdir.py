"""Folder of ``.txt``/``.md`` files: one item per file, id = path relative to the folder, UTF-8 strict."""

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
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return Item(item_id, None, str(file), 0, error=f"not valid UTF-8 (byte {exc.start})")
    except OSError as exc:
        refuse_out_of_descriptors(file, exc)
        return Item(item_id, None, str(file), 0, error=f"cannot read ({exc.strerror})")
    return Item(item_id, text, str(file), 0)
