"""Open an index: read the manifest, then open every shard and search-structure file it lists at once.

Shards are memory-mapped, and the structure's files opened (``open_index(..., structure=False)``: not, for a
caller that never searches through it), right after the manifest is read, so a reader
holds one complete generation even if a writer commits a new manifest and deletes the old shards and code
files a moment later (an open file stays readable after unlink): a structure search of an ``Index`` held
since maps the files it holds (``structure_files``). If a listed file vanished between reading the manifest
and opening it, a newer generation was committed in between: read the manifest again. ``verify()`` checks
the sizes and sha256 of the files held open (not of those at their paths now: a swapped-in folder's) against the manifest
(``verify_shard(..., remembered=True)``: not again for a file that matched and has not changed since, see
``verified.py``).
"""

from __future__ import annotations

import errno
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from tokembed.errors import (IndexCorruptError, IndexNotFoundError, IndexReplacedError, IndexUnreadableError, TokembedError,
                             UsageError)
from tokembed.index.arrays import numpy_dtype
from tokembed.index.arrow_file import ShardReader
from tokembed.index.atomic import sha256_file
from tokembed.index.format import FORMAT, MANIFEST, READABLE_VERSIONS, manifest_bytes
from tokembed.index.manifest_shape import check_manifest_shape
from tokembed.index.pages import MappedPages
from tokembed.index.sealed import SealError, unseal
from tokembed.index.verified import VerifiedFiles, stat_key
from tokembed.locale_names import refuse_misread_path
from tokembed.open_files import descriptors_named, limit_error, out_of_descriptors
from tokembed.path_kind import FOLDER, kind_at

_OPEN_ATTEMPTS = 5


@dataclass
class Index:
    folder: Path
    manifest: dict
    _maps: dict = field(default_factory=dict, repr=False)  # shard file -> pyarrow MemoryMappedFile
    _counted: set = field(default_factory=set, repr=False)  # shard files whose counts matched the manifest
    _structure_files: dict | None = field(default=None, repr=False)  # structure file -> pyarrow OSFile (open_index's)

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

    def verify_shard(self, shard: dict, checksum: bool = True, remembered: bool = False) -> None:
        """Size, and with ``checksum`` the sha256, against the manifest; ``remembered``: not hashed again when this
        very file (the one mapped) matched before and has not changed since (``verified.py``)."""
        mapped = self._mapped(shard)
        size = mapped.size()
        if size != shard["bytes"]:
            raise IndexCorruptError(f"{self.shard_path(shard)}: {size} bytes on disk, manifest says {shard['bytes']}")
        if checksum:  # first: a damaged shard is reported as such, whatever reading its batches would raise
            self._check_sha256(shard, mapped, remembered)
        self._check_counts(shard)

    def _check_sha256(self, shard: dict, mapped, remembered: bool) -> None:
        key = stat_key(mapped.fileno()) if remembered else None
        if remembered and self._verified.known(shard["file"], key, shard["sha256"]):
            return
        digest = _sha256_of(mapped)
        if digest != shard["sha256"]:
            raise IndexCorruptError(f"{self.shard_path(shard)}: sha256 does not match the manifest")
        if remembered:
            self._verified.remember([(shard["file"], key, digest)])

    def _check_counts(self, shard: dict) -> None:
        """The shard's rows and tokens (and its vectors' width and value type) as the manifest says: the search
        structure maps documents by these counts, so a manifest that disagrees with its file would pair ids with
        others' codes (and ``info`` would report, a GPU scan stage, another dtype than the one read).
        Reads batch headers only, once per shard for this reader (its manifest is fixed; a file rewritten since is
        what the size and sha256 checks catch)."""
        if shard["file"] in self._counted:
            return
        reader = self.open_shard(shard)
        rows, tokens = shard_counts(reader)
        found = {"rows": rows, "tokens": tokens}
        for name, count in found.items():
            if int(shard[name]) != count:
                raise IndexCorruptError(f"{self.shard_path(shard)}: holds {count} {name}, manifest says {shard[name]}")
        width, dtype = _vector_type(reader)
        if width is not None and width != self.dim:
            raise IndexCorruptError(f"{self.shard_path(shard)}: vectors of {width} dimensions, manifest says dim {self.dim}")
        if dtype is not None and dtype != self.manifest["embedding_dtype"]:
            raise IndexCorruptError(f"{self.shard_path(shard)}: vectors of {dtype}, manifest says embedding_dtype "
                                    f"{self.manifest['embedding_dtype']}")
        self._counted.add(shard["file"])

    @cached_property
    def _verified(self) -> VerifiedFiles:
        return VerifiedFiles(self.folder)

    def write_verified(self) -> None:
        """Record the files this process found matching since the record's last write now, not seconds later or
        at its exit (``verified.py``): a server killed after checking a generation's files does not hash them again."""
        self._verified.flush()

    def open_shard(self, shard: dict) -> ShardReader:
        """A memory-mapped Arrow IPC file reader for one shard: a damaged footer, schema or batch header is
        ``IndexCorruptError`` naming it (``arrow_file.py``)."""
        return ShardReader(_whole(self._mapped(shard)), self.shard_path(shard))

    def iter_batches(self, columns: list[str] | None = None) -> Iterator:
        """Record batches of every shard in index order (memory-mapped, zero-copy)."""
        for shard in self.shards:
            reader = self.open_shard(shard)
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                yield batch.select(columns) if columns else batch

    def bytes_on_disk(self) -> int:
        """The committed generation's files: manifest, shards and the search structure's files."""
        structure = (self.manifest.get("search") or {}).get("bytes", 0)
        return self.manifest_bytes() + sum(int(shard["bytes"]) for shard in self.shards) + int(structure)

    def manifest_bytes(self) -> int:
        return len(manifest_bytes(self.manifest))  # as this release writes it (an unsealed one: as its next commit will)

    def shard_file(self, shard: dict):
        """(the open file, address of its byte 0 in the mapping) of a shard this reader holds: positioned
        reads of the same generation's bytes, whatever a later run has done to the folder since. Keep the
        file object, not its descriptor: once it is closed the number may name another file."""
        mapped = self._mapped(shard)
        return mapped, _whole(mapped).address

    def shard_pages(self, shard: dict) -> MappedPages:
        """The pages of this reader's own mapping of a shard, to drop once read (``pages.py``)."""
        mapped, base = self.shard_file(shard)
        return MappedPages(base, mapped.size())

    def structure_files(self, entries: list[dict]) -> dict | None:
        """name -> the open file of each of the search structure's ``entries`` this reader opened with its shards, to
        check and map the files of its own generation whatever a later commit removed; None for an ``Index`` made
        without them (its files are opened by path). One missing when the index was opened is an ``IndexCorruptError``."""
        if self._structure_files is None:
            return None
        for entry in entries:
            held = self._structure_files.get(entry["file"], _MISSING)
            if held == _MISSING:
                raise IndexCorruptError(f"{self.folder}: manifest lists {entry['file']}, which is missing")
            if isinstance(held, OSError):
                raise read_error(self.folder / entry["file"], held) from None
        return {entry["file"]: self._structure_files[entry["file"]] for entry in entries}

    def _mapped(self, shard: dict):
        mapped = self._maps.get(shard["file"])
        if mapped is None:
            raise IndexCorruptError(f"{self.folder}: manifest lists {shard['file']}, which is missing")
        return mapped


def _sha256_of(mapped) -> str:
    """The sha256 of the very file this reader maps and reads, not of whatever now has its name (a newer
    generation's, or a swapped-in folder's). Plain reads of its descriptor: hashing through the map would make
    the whole shard resident at once."""
    return sha256_file(mapped.fileno())


def _whole(mapped):
    """A zero-copy buffer over the whole mapped file, whatever the file object's read position (the seek and
    the read under one lock: threads searching one index share its files)."""
    with _POSITION_LOCK:
        mapped.seek(0)
        return mapped.read_buffer()


_POSITION_LOCK = threading.Lock()


def shard_counts(reader) -> tuple[int, int]:
    """(rows, tokens) of a shard open as an Arrow IPC file ``reader``, from its batch headers and token id offsets:
    no vector is read."""
    rows = tokens = 0
    for number in range(reader.num_record_batches):
        batch = reader.get_batch(number)
        rows += batch.num_rows
        token_ids = batch.column(batch.schema.get_field_index("token_ids"))
        tokens += int(token_ids.offsets[-1].as_py() - token_ids.offsets[0].as_py()) if len(token_ids) else 0
    return rows, tokens


def _vector_type(reader) -> tuple[int | None, str | None]:
    """(width, numpy dtype name) of a shard's vectors, from its schema; (None, None) for a shard without them
    (a compressed-only index's)."""
    if "embeddings" not in reader.names:
        return None, None
    vector = reader.schema.field("embeddings").type.value_type  # fixed_size_list<float16|float32, D>
    return vector.list_size, numpy_dtype(vector.value_type).name  # not to_pandas_dtype: pyarrow < 26 imports pandas


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise read_error(path, exc) from None
    except UnicodeDecodeError as exc:
        raise IndexCorruptError(f"{path}: not valid UTF-8 ({exc})") from exc
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IndexCorruptError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexCorruptError(f"{path}: not a tokembed index manifest")
    try:
        manifest = unseal(manifest, required=False)  # one without a seal was written by a release before it
    except SealError as exc:
        raise IndexCorruptError(f"{path}: {exc}") from exc
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise IndexCorruptError(
            f"{path}: format_version {manifest.get('format_version')} (this tokembed reads "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    check_manifest_shape(path, manifest)
    return manifest


def require_index_path(value, argument: str, hint: str | None = None) -> Path:
    """``value`` as a Path; a library caller's None or number is a ``UsageError`` naming ``argument``, not a
    TypeError from deep inside."""
    if isinstance(value, (str, os.PathLike)):
        refuse_misread_path(value, argument)
        return Path(value)
    raise UsageError(f"{argument}: expected an index folder path (str or Path), got {type(value).__name__}", hint=hint)


def index_path_kind(folder: Path) -> str | None:
    """``kind_at(folder)``; a path the OS refuses to look up (EACCES: a parent this user may not search) is
    ``read_error``'s."""
    try:
        return kind_at(folder)
    except OSError as exc:
        raise read_error(folder, exc) from None


def open_index(folder: Path | str, structure: bool = True) -> Index:
    """Open the committed generation of an index, with every shard it lists held open, and with ``structure`` its
    search structure's files too (a structure search through the ``Index`` then reads its own generation's, see
    ``structure_files``). A caller that never searches through the structure (an exact scan, an export) passes
    False: it holds one file per shard, not two, and a later structure search opens the files by path (once a commit
    has removed them, ``IndexReplacedError``: ``replaced_is_not_corrupt``).

    A file the OS refuses for want of descriptors (``ulimit -n``) is ``OpenFilesLimitError``, not a missing one."""
    import pyarrow as pa

    folder = require_index_path(folder, "open_index")
    if not isinstance(structure, bool):  # "no" would hold the structure's files as True does, without a word
        raise UsageError(f"open_index: structure {structure!r}: must be True or False")
    kind = index_path_kind(folder)
    if kind != FOLDER:
        raise IndexNotFoundError(f"{folder}: {'a file, not an index folder' if kind else 'no such index folder'}")
    for _ in range(_OPEN_ATTEMPTS):
        manifest = read_manifest(folder)
        if manifest is None:
            raise IndexNotFoundError(f"{folder}: no {MANIFEST} (not an index, or no run has committed yet)")
        maps, missing = {}, None
        for shard in manifest["shards"]:
            try:
                with descriptors_named(folder / shard["file"]):
                    maps[shard["file"]] = pa.memory_map(str(folder / shard["file"]), "r")
            except OSError as exc:
                if exc.errno not in (None, errno.ENOENT):  # there, but refused (EACCES): not a missing file
                    raise read_error(folder / shard["file"], exc) from None
                missing = shard["file"]
                break
        held = _open_structure_files(folder, manifest) if structure and missing is None else None
        gone = missing is not None or _MISSING in (held or {}).values()
        if gone and read_manifest(folder) != manifest:
            continue  # a newer generation was committed in between: open that one
        if missing is not None:  # the same generation lacks the file: really missing
            raise IndexCorruptError(f"{folder}: manifest lists {missing}, which is missing")
        return Index(folder, manifest, maps, _structure_files=held)  # a structure file missing: its search says so
    raise kept_changing(folder, "opened")


def kept_changing(folder: Path | str, doing: str) -> IndexReplacedError:
    """What a reader says after its attempts each found a newer generation committed: the index is sound, only busy."""
    return IndexReplacedError(f"{folder}: the index kept changing while it was being {doing}",
                              hint="commits replaced it faster than it could be read; run the same command again")


@contextmanager
def replaced_is_not_corrupt(index: Index):
    """Around reads of ``index``'s generation that may go by path: a file found missing or damaged while the folder's
    manifest is no longer the one ``index`` opened was removed or replaced by a later commit (or a swapped-in folder),
    which is ``IndexReplacedError``, never corruption; in the generation still committed it is ``IndexCorruptError``."""
    try:
        yield
    except IndexCorruptError:
        committed = read_manifest(index.folder)
        if committed is None or committed == index.manifest:  # none at all: deleted, not replaced
            raise
        raise IndexReplacedError(
            f"{index.folder}: a newer generation of the index was committed since this Index was opened, and files of "
            "the one it opened are gone; the index is not damaged",
            hint="reopen it (tokembed.index.open_index); one opened with structure=True (the default) holds its search "
            "structure's files and keeps answering from the generation it opened") from None


def _open_structure_files(folder: Path, manifest: dict) -> dict:
    """name -> the open file of each structure file the manifest lists, or why it could not be opened (an OSError
    made here, never raised: the one caught has a traceback, which would keep the files opened so far). Plain opens,
    nothing read: an exact scan does not need them, and one damaged or unreadable must not stop it. pyarrow files, as
    the shards' maps: closed with the last reference to them, without a ResourceWarning."""
    import pyarrow as pa

    search = manifest.get("search") or {}
    held: dict = {}
    for entry in [search["codec"], *search["shards"]] if search else []:
        try:
            with descriptors_named(folder / entry["file"]):
                held[entry["file"]] = pa.OSFile(str(folder / entry["file"]), "r")
        except FileNotFoundError:
            held[entry["file"]] = _MISSING
        except OSError as exc:
            held[entry["file"]] = OSError(exc.errno, _reason(exc))
    return held


_MISSING = "missing"


def read_error(path, exc: OSError) -> TokembedError:
    """The error for an index file or folder ``path`` that is there but that the OS would not let this process read
    (``exc``): ``IndexUnreadableError`` where this user may not (EACCES, EPERM), the limit's where the process ran
    out of descriptors (EMFILE), else ``IndexCorruptError`` naming the reason (EIO; a folder under a file's name)."""
    if out_of_descriptors(exc):
        return limit_error(path, exc)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return IndexUnreadableError(f"{path}: cannot be read ({_reason(exc)})",
                                    hint="another user's index? its owner can make it readable (chmod -R a+rX), "
                                         "or run as a user who may read it")
    return IndexCorruptError(f"{path}: cannot be read ({_reason(exc)})")


def _reason(exc: OSError) -> str:
    """The OS's words for ``exc`` (pyarrow's strerror is its whole message, path included)."""
    return os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)
