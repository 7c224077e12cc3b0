"""``--engine ray``'s staged chunk files: what an actor writes to the index's shared storage and the driver reads
back. ``INDEX_DIR/staging/chunk-<key>.arrow``, ``key`` = sha256 of the model, the settings, the token budget and each
of the chunk's inputs' own sha256; written under a temp name, fsynced and renamed (see ``tokembed.engine.ray``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from tokembed.engine.runner import ChunkResult
from tokembed.errors import DeviceError
from tokembed.sources.video import Video

STAGED_KEY = b"chunk_key"  # a staged file's metadata: the key it was written for (none in an earlier release's)


def chunk_key(prefix: bytes, inputs: list) -> str:
    """sha256 of ``prefix`` (model, settings, budget; length-prefixed) and each of the chunk's inputs' own sha256
    (``input_digest``): fixed-size fields, so no two chunks run together into the same bytes (a text may hold NUL)."""
    digest = hashlib.sha256(len(prefix).to_bytes(8, "big") + prefix)
    for value in inputs:
        digest.update(input_digest(value))
    return digest.hexdigest()


def input_digest(value) -> bytes:
    """sha256 of one input and its kind: a text's UTF-8; an image's mode, size and pixels; a video's probed shape
    and stored bytes (for a file: its path, size and mtime, what a run journal checks of an input file)."""
    if isinstance(value, str):
        return hashlib.sha256(b"text\0" + value.encode("utf-8", "surrogatepass")).digest()
    if isinstance(value, Video):
        shape = (value.total_frames, value.fps, value.height, value.width, value.rotation, value.announced)
        stored = value.data if value.data is not None else _file_stamp(value.path).encode()
        return hashlib.sha256(f"video {shape!r} {value.path is None}\0".encode() + stored).digest()
    return hashlib.sha256(f"image {value.mode} {value.size}\0".encode() + value.tobytes()).digest()  # a PIL image


def _file_stamp(path: str) -> str:
    try:
        stat = os.stat(path)
    except OSError:  # gone: the actor names the missing file when it decodes it
        return f"{path}\0gone"
    return f"{path}\0{stat.st_size} {stat.st_mtime_ns}"


def write_staged(path: Path, result: ChunkResult, dim: int, store_dtype: str, key: str) -> None:
    """One chunk's rows as an Arrow IPC file: temp name, fsync, rename (a retry simply writes it again)."""
    import pyarrow as pa

    from tokembed.index.atomic import replacing, write_error

    lengths = np.fromiter((len(v) for v in result.vectors), dtype=np.int64, count=len(result.vectors))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat = np.concatenate(result.vectors).reshape(-1) if lengths.sum() else np.zeros(0)
    values = pa.array(flat.astype(np.dtype(store_dtype), copy=False))  # the store dtype, as the shards have it
    ids = np.concatenate(result.token_ids).astype(np.int32) if lengths.sum() else np.zeros(0, np.int32)
    table = pa.table(
        {
            "embeddings": pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(values, dim)),
            "token_ids": pa.ListArray.from_arrays(offsets, pa.array(ids, type=pa.int32())),
        }
    )
    counts = {"real_tokens": result.real_tokens, "computed_tokens": result.computed_tokens, "largest_batch": result.largest_batch}
    table = table.replace_schema_metadata({STAGED_KEY: key, **{name: str(value) for name, value in counts.items()}})
    try:
        with replacing(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    except OSError as exc:  # a full disk is the write error it is with the local engine (exit 8), not a device's
        raise write_error(path, exc, f"{path}: cannot write the staged chunk ({exc.strerror or exc})") from exc


def staged_key(path: Path) -> str | None:
    """The key a staged file was written for; None for no file, an unreadable one, or one without (earlier releases)."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            recorded = (pa.ipc.open_file(source).schema.metadata or {}).get(STAGED_KEY)
    except (OSError, pa.ArrowInvalid):
        return None
    return None if recorded is None else recorded.decode()


def read_staged(path: Path, rows: int, dim: int, key: str) -> ChunkResult:
    """A staged chunk back as a ``ChunkResult``; raises ``DeviceError`` if it is not the chunk expected."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise DeviceError(f"{path}: cannot read the staged chunk ({exc})") from exc
    meta = table.schema.metadata or {}
    if meta.get(STAGED_KEY) != key.encode():
        recorded = meta.get(STAGED_KEY, b"no key").decode()
        raise DeviceError(f"{path}: staged chunk was written for another chunk ({recorded}), expected {key}")
    if table.num_rows != rows:
        raise DeviceError(f"{path}: staged chunk has {table.num_rows} rows, expected {rows}")
    embeddings = table.column("embeddings").combine_chunks()
    token_ids = table.column("token_ids").combine_chunks()
    offsets = embeddings.offsets.to_numpy()
    flat = embeddings.values.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
    flat_ids = token_ids.values.to_numpy(zero_copy_only=False)
    vectors = [flat[a:b].copy() for a, b in zip(offsets[:-1], offsets[1:])]  # copies: the file goes away later
    ids = [flat_ids[a:b].copy() for a, b in zip(offsets[:-1], offsets[1:])]
    real, computed, largest = (int(meta.get(name, 0)) for name in (b"real_tokens", b"computed_tokens", b"largest_batch"))
    return ChunkResult(vectors, ids, real, computed, largest)
