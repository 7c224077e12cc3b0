"""Open an index: read the manifest, check its shards, memory-map them on demand.

A reader trusts only the shards the manifest lists; ``verify()`` checks each one's size and sha256.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tokembed.errors import IndexCorruptError, IndexNotFoundError
from tokembed.index.atomic import sha256_file
from tokembed.index.format import FORMAT, FORMAT_VERSION, MANIFEST


@dataclass
class Index:
    folder: Path
    manifest: dict

    @property
    def shards(self) -> list[dict]:
        return self.manifest["shards"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def rows(self) -> int:
        return int(self.manifest["totals"]["rows"])

    @property
    def tokens(self) -> int:
        return int(self.manifest["totals"]["tokens"])

    def shard_path(self, shard: dict) -> Path:
        return self.folder / shard["file"]

    def verify(self, checksums: bool = True) -> None:
        """Raise ``IndexCorruptError`` if a listed shard is missing, truncated or altered."""
        for shard in self.shards:
            self.verify_shard(shard, checksums)

    def verify_shard(self, shard: dict, checksum: bool = True) -> None:
        path = self.shard_path(shard)
        if not path.is_file():
            raise IndexCorruptError(f"{self.folder}: manifest lists {shard['file']}, which is missing")
        size = path.stat().st_size
        if size != shard["bytes"]:
            raise IndexCorruptError(f"{path}: {size} bytes on disk, manifest says {shard['bytes']}")
        if checksum and sha256_file(path) != shard["sha256"]:
            raise IndexCorruptError(f"{path}: sha256 does not match the manifest")

    def open_shard(self, shard: dict):
        """A memory-mapped Arrow IPC file reader for one shard."""
        import pyarrow as pa

        path = self.shard_path(shard)
        try:
            return pa.ipc.open_file(pa.memory_map(str(path), "r"))
        except (pa.ArrowInvalid, OSError) as exc:
            raise IndexCorruptError(f"{path}: not a readable Arrow file ({exc})") from exc

    def iter_batches(self, columns: list[str] | None = None) -> Iterator:
        """Record batches of every shard in index order (memory-mapped, zero-copy)."""
        for shard in self.shards:
            reader = self.open_shard(shard)
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                yield batch.select(columns) if columns else batch

    def bytes_on_disk(self) -> int:
        total = (self.folder / MANIFEST).stat().st_size
        return total + sum(int(shard["bytes"]) for shard in self.shards)


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorruptError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise IndexCorruptError(f"{path}: not a tokembed index manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexCorruptError(
            f"{path}: format_version {manifest.get('format_version')} (this tokembed reads {FORMAT_VERSION})"
        )
    return manifest


def open_index(folder: Path | str) -> Index:
    folder = Path(folder)
    if not folder.is_dir():
        raise IndexNotFoundError(f"{folder}: no such index folder")
    manifest = read_manifest(folder)
    if manifest is None:
        raise IndexNotFoundError(f"{folder}: no {MANIFEST} (not an index, or no run has committed yet)")
    return Index(folder, manifest)
