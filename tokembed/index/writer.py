"""Shard writer and manifest commit.

New shards are written under temp names, fsynced and renamed to ``part-NNNNNN.arrow`` with numbers
above every shard already in the folder, so the previous generation stays readable. ``commit()``
writes ``manifest.json`` atomically (temp, fsync, rename, fsync folder) and only then removes shards
the new manifest no longer lists; from the rename on nothing undoes the commit (a failed folder fsync included). ``abort()`` removes this run's shards and leaves the old index as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokembed._testhooks import fault_point
from tokembed.errors import IndexWriteError, OpenFilesLimitError
from tokembed.index.atomic import atomic_write_bytes, publish, remove_unused, sha256_file, temp_beside, write_error
from tokembed.index.verified import VerifiedFiles, stat_key
from tokembed.index.format import DATA_DIR, EMBEDDINGS, MANIFEST, SHARD_PATTERN, manifest_bytes, shard_name, shard_schema
from tokembed.index.reader import read_error
from tokembed.path_kind import is_folder

DEFAULT_SHARD_ROWS = 50_000
DEFAULT_SHARD_BYTES = 512 << 20


@dataclass
class ShardInfo:
    file: str  # relative to the index folder
    rows: int
    tokens: int
    bytes: int
    sha256: str

    def to_json(self) -> dict:
        return dict(self.__dict__)


def build_record_batch(
    schema,
    ids: list[str],
    vectors: list[np.ndarray],
    token_ids: list[np.ndarray],
    hashes: list[bytes],
    source_files: list[str | None] | None = None,
    pages: list[int | None] | None = None,
):
    """One Arrow record batch from per-item matrices, without a Python loop over tokens.
    ``source_files``/``pages``: a PDF page's file and number per row (None: not a PDF page).
    A ``schema`` without ``embeddings`` (a compressed-only index) takes only the rows' lengths from ``vectors``."""
    import pyarrow as pa

    from tokembed.index.arrays import arrow_array, fixed_binary_array, int32_array, string_array

    lengths = np.fromiter((len(v) for v in vectors), dtype=np.int64, count=len(vectors))
    offsets = arrow_array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())
    flat_ids = np.concatenate(token_ids) if len(token_ids) and lengths.sum() else np.zeros(0, np.int32)
    token_column = pa.ListArray.from_arrays(offsets, arrow_array(flat_ids, pa.int32()))
    nulls = [None] * len(ids)
    columns = {
        "id": string_array(ids),
        "token_ids": token_column,
        "content_hash": fixed_binary_array(hashes, 32),
        "source_file": string_array(source_files or nulls),
        "page": int32_array(pages or nulls),
    }
    if EMBEDDINGS in schema.names:
        columns[EMBEDDINGS] = _embeddings_column(schema, vectors, lengths, offsets)
    return pa.RecordBatch.from_arrays([columns[name] for name in schema.names], schema=schema)


def _embeddings_column(schema, vectors: list[np.ndarray], lengths: np.ndarray, offsets):
    import pyarrow as pa

    from tokembed.index.arrays import arrow_array

    dim = schema.field(EMBEDDINGS).type.value_type.list_size
    value_type = schema.field(EMBEDDINGS).type.value_type.value_type
    flat = np.concatenate(vectors).reshape(-1) if len(vectors) and lengths.sum() else np.zeros(0)
    values = arrow_array(flat, value_type)
    return pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(values, dim))


class IndexWriter:
    def __init__(
        self,
        folder: Path,
        dim: int,
        store_dtype: str,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
    ) -> None:
        self.folder = folder
        self.data = folder / DATA_DIR
        self.dim = dim
        self.schema = shard_schema(dim, store_dtype)
        self.shard_rows = shard_rows
        self.shard_bytes = shard_bytes
        self.shards: list[ShardInfo] = []
        self._written: list[Path] = []
        self._writer = None
        self._tmp: Path | None = None
        self._rows = self._tokens = self._batches = 0
        try:
            self.data.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.data, exc, f"{self.data}: cannot create the index folder ({exc.strerror})") from exc
        self._next_number = next_shard_number(self.data)
        self._verified = VerifiedFiles(folder)  # one for the run: the record is written at the commit, not once per shard

    def write(
        self,
        ids: list[str],
        vectors: list[np.ndarray],
        token_ids: list[np.ndarray],
        hashes: list[bytes],
        source_files: list[str | None] | None = None,
        pages: list[int | None] | None = None,
    ) -> ShardInfo | None:
        """Append rows; returns the shard's entry when this write filled and finished a shard."""
        if not ids:
            return None
        batch = build_record_batch(self.schema, ids, vectors, token_ids, hashes, source_files, pages)
        try:
            if self._writer is None:
                self._open()
            self._writer.write_batch(batch)
        except OSError as exc:
            raise write_error(self._tmp, exc, f"{self._tmp}: cannot write shard ({exc})") from exc
        self._rows += len(ids)
        self._tokens += int(sum(len(v) for v in vectors))
        self._batches += 1
        fault_point("inside-shard", self._batches)  # rows are in the temp file, the shard is not finished
        if self._rows >= self.shard_rows or self._tmp.stat().st_size >= self.shard_bytes:
            return self.close_shard()
        return None

    def _open(self) -> None:
        import pyarrow as pa

        self._tmp = temp_beside(self.data / shard_name(self._next_number))
        self._written.append(self._tmp)
        self._writer = pa.ipc.new_file(str(self._tmp), self.schema)

    def close_shard(self) -> ShardInfo | None:
        """Finish the open shard: close, fsync, rename; returns its manifest entry."""
        if self._writer is None:
            return None
        final = self.data / shard_name(self._next_number)
        try:
            self._writer.close()
            publish(self._tmp, final)
        except OSError as exc:
            raise write_error(final, exc, f"{final}: cannot finish shard ({exc})") from exc
        self._written.append(final)
        key = stat_key(final)
        info = ShardInfo(
            file=f"{DATA_DIR}/{final.name}",
            rows=self._rows,
            tokens=self._tokens,
            bytes=key[2],
            sha256=sha256_file(final),
        )
        self._verified.remember([(info.file, key, info.sha256)])  # the next run's check reads no shard it wrote
        self.shards.append(info)
        self._writer, self._tmp = None, None
        self._rows = self._tokens = 0
        self._next_number += 1
        return info

    def commit(self, manifest: dict, keep: list[str] = ()) -> None:
        """Write the manifest (the commit point), then delete shards that no manifest lists any more."""
        self.close_shard()
        data = manifest_bytes(manifest)
        try:
            atomic_write_bytes(self.folder / MANIFEST, data, commit="the new index was committed")
        except (IndexWriteError, OpenFilesLimitError):
            self.abort()
            raise
        self._written.clear()  # committed: nothing may undo it now, whatever fails after
        listed = {Path(shard["file"]).name for shard in manifest["shards"]} | {Path(k).name for k in keep}
        remove_unlisted_shards(self.data, listed)
        self._verified.flush()  # after the removal: the record holds no entry of a shard just removed

    def abort(self, keep_finished: bool = False) -> None:
        """Remove what this run wrote (all of it, or only the unfinished shard when ``keep_finished``,
        so a journal can resume from the rest); the previous manifest and its shards are untouched."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # the shard is being thrown away; a second error says nothing new
                pass
            self._writer = None
        finished = {self.data / Path(shard.file).name for shard in self.shards}
        for path in self._written:
            if not (keep_finished and path in finished):
                remove_unused(path)  # never raises: the error that made the run fail is the one to report
        self._written.clear()
        self._verified.flush()  # the finished shards a resumed run keeps are not hashed again


def next_shard_number(data: Path) -> int:
    numbers = [int(m.group(1)) for p in data.iterdir() if (m := SHARD_PATTERN.match(p.name))]
    return max(numbers, default=-1) + 1


def remove_unlisted_shards(data: Path, listed: set[str]) -> None:
    for path in data.iterdir():
        if SHARD_PATTERN.match(path.name) and path.name not in listed:
            remove_unused(path)
    remove_temp_files(data)


def remove_temp_files(data: Path) -> None:
    """Half-written shards of runs that died (only the lock holder calls this). A ``data`` folder this user may not
    list (EACCES) is ``read_error``'s."""
    try:
        paths = list(data.iterdir()) if is_folder(data) else []
    except OSError as exc:
        raise read_error(data, exc) from None
    for path in paths:
        if path.name.startswith(".part-") and ".tmp-" in path.name:
            remove_unused(path)
