"""The item type, the options shared by readers, and the dispatch from a path to its reader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokembed.errors import BadInputError

TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Item:
    id: str
    text: str | None
    source: str  # the file the item came from
    row: int  # 0-based row in a Parquet/JSONL file, 0 for a file of its own
    error: str | None = None  # why the item cannot be encoded (null text, bad UTF-8, ...)

    @property
    def location(self) -> str:
        return f"{self.source} row {self.row}" if self.source.endswith((".parquet", ".jsonl")) else self.source


@dataclass(frozen=True)
class SourceOptions:
    id_column: str = "id"
    text_column: str = "text"
    id_column_given: bool = False  # an explicit --id-column must exist; the default may be absent
    chunk_rows: int = 2048


def open_sources(inputs: list[Path], options: SourceOptions) -> Iterator[list[Item]]:
    """Yield chunks of at most ``options.chunk_rows`` items from every input, in order."""
    from tokembed.sources.jsonl import read_jsonl
    from tokembed.sources.parquet import read_parquet
    from tokembed.sources.textdir import read_text_folder

    if not inputs:
        raise BadInputError("no INPUT given")
    offset = 0  # row numbers stand in for missing ids and keep counting across files
    for path in inputs:
        for file, reader in _readers(path, read_parquet, read_jsonl, read_text_folder):
            for chunk in reader(file, options, offset):
                offset += len(chunk)
                yield chunk


def _readers(path: Path, read_parquet, read_jsonl, read_text_folder):
    if not path.exists():
        raise BadInputError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".parquet":
            return [(path, read_parquet)]
        if path.suffix == ".jsonl":
            return [(path, read_jsonl)]
        raise BadInputError(f"{path}: unsupported input (expected .parquet, .jsonl or a folder)")
    parquet_files = sorted(path.rglob("*.parquet"))
    if parquet_files:
        return [(file, read_parquet) for file in parquet_files]
    jsonl_files = sorted(path.rglob("*.jsonl"))
    if jsonl_files:
        return [(file, read_jsonl) for file in jsonl_files]
    if any(p.suffix in TEXT_SUFFIXES for p in path.rglob("*")):
        return [(path, read_text_folder)]
    raise BadInputError(f"{path}: folder holds no .parquet, .jsonl, .txt or .md files")


def chunked(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
