"""Reading a shard's Arrow IPC structure: its footer and schema, and its record batches' headers.

A damaged shard shows in pyarrow in many ways: OSError "Invalid flatbuffers message", ArrowInvalid,
ArrowNotImplementedError (a type it does not know), UnicodeDecodeError (a field name that is no longer UTF-8), or
a file that reads but whose column is not of the type every reader takes it for (token_ids as int32 values, not
lists). Every reader of a shard opens it through ``ShardReader``: each of these is ``IndexCorruptError`` naming
the shard (exit 6), never a traceback, and not a write error where the reader also writes (``export``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from tokembed.errors import IndexCorruptError

_REQUIRED = ("id", "token_ids", "content_hash")  # embeddings: not in a compressed-only index (format.py)


@contextmanager
def arrow_reads(path: Path):
    """Whatever pyarrow raises decoding the shard at ``path`` is that shard's damage."""
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # OSError: pyarrow's IOError status
        raise IndexCorruptError(f"{path}: not a readable Arrow file ({exc})") from exc


class ShardReader:
    """An Arrow IPC file reader of one shard (``source``: its memory map or a buffer over it), its schema checked."""

    def __init__(self, source, path: Path) -> None:
        import pyarrow as pa

        self.path = path
        with arrow_reads(path):
            self._reader = pa.ipc.open_file(source)
            self.schema = self._reader.schema
            self.names = self.schema.names  # decodes every field name
            self.num_record_batches = self._reader.num_record_batches
        _check_columns(self.schema, path)

    def get_batch(self, number: int, validated: bool = False):
        """Record batch ``number`` (its header read, zero-copy); ``validated``: also every offset within its
        buffers and every id valid UTF-8, for a reader of rows whose sha256 was not checked: a damaged header
        can point a column's offsets at other bytes, which pyarrow would read past the file's end."""
        with arrow_reads(self.path):
            batch = self._reader.get_batch(number)
            if validated:
                batch.validate(full=True)
            return batch


def _check_columns(schema, path: Path) -> None:
    """Each column tokembed reads, present where it must be and of the type it is written with (``shard_schema``):
    columns are selected by name, so one whose type was altered would be read as another type."""
    for name in _REQUIRED:
        if name not in schema.names:
            raise IndexCorruptError(f"{path}: no {name} column")
    for field in schema:
        if not _COLUMN_CHECKS.get(field.name, _any_type)(field.type):
            raise IndexCorruptError(f"{path}: column {field.name} is {field.type}, not what tokembed writes")


def _is_string(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind)


def _is_token_ids(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_list(kind) and kind.value_type == pa.int32()


def _is_content_hash(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_fixed_size_binary(kind) and kind.byte_width == 32


def _is_page(kind) -> bool:
    import pyarrow as pa

    return kind == pa.int32()


def _is_embeddings(kind) -> bool:
    """list<fixed_size_list<float16|float32, D>> (D is checked against the manifest's dim by the reader)."""
    import pyarrow as pa

    if not (pa.types.is_list(kind) and pa.types.is_fixed_size_list(kind.value_type)):
        return False
    return kind.value_type.value_type in (pa.float16(), pa.float32())


def _any_type(kind) -> bool:  # a column a later release added: older readers ignore it
    return True


_COLUMN_CHECKS = {"id": _is_string, "embeddings": _is_embeddings, "token_ids": _is_token_ids,
                  "content_hash": _is_content_hash, "source_file": _is_string, "page": _is_page}
