"""Which of an index's files this user has already hashed: opening a large index does not read gigabytes again.

`score` checks the files it reads against the manifest's sha256: the shards the exhaustive scan reads (14.6 GB
at 1M documents: ~13 s of hashing on this 2-core box, about half of one exhaustive query) and a search
structure's code files (~2 GB: 0.7 s of a 3 s query), with a compressed-only index's small shards. Once a file matched, its stat key is recorded beside the
sha256 it matched: device, inode, size, mtime and ctime in nanoseconds. Writing to the file or replacing it
changes that key (a user can set mtime back, not ctime), so a file changed since is hashed again; a file whose
key and sha256 both still match is not. `info --verify` hashes everything, whatever the record says.

One small JSON file per index folder under ``$TOKEMBED_CACHE/verified`` (default ``~/.cache/tokembed``), naming
files relative to the folder; entries of files no longer there are dropped when it is written. It is sealed
(``index.sealed``): one that is damaged or has no seal is ignored, its files hashed again and the record rewritten.
Where it cannot be read or written, every open hashes, as it did before the record existed.

A process keeps what it matched in memory and writes it when ``_WRITE_EVERY`` seconds have passed since its last
write, at the commit of ``encode`` and ``compress``, once a search has checked its files (``flush``) and at exit:
writing the whole record for each shard made a run over N shards read, stat and rewrite an N-entry record N times
(135 s of a 2,000-shard cron run). Each write merges into what the record holds then (other processes write it
too) and replaces it atomically; a run killed before a write only loses entries: those files are hashed again.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from tokembed.cache import cache_root
from tokembed.index.sealed import read_sealed, sealed_bytes


class VerifiedFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        name = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:32]
        root = cache_root()
        self.path = None if root is None else root / "verified" / f"{name}.json"  # None: no record, hash every time
        self.entries = {**_read(self.path), **_unwritten_entries(self.path)}

    def known(self, name: str, key: list[int], sha256: str) -> bool:
        """True when the file ``name`` (relative to the folder), whose stat key is ``key`` now, matched ``sha256``
        before and has not changed since."""
        return self.entries.get(name) == [*key, sha256]

    def sha256_of(self, name: str) -> str:
        """The sha256 of the file ``name``: the recorded one while its stat key is unchanged, else hashed now and
        recorded (where the file did not change while it was read)."""
        from tokembed.index.atomic import sha256_file

        file = self.folder / name
        key = stat_key(file)
        entry = self.entries.get(name)
        if isinstance(entry, list) and entry[:-1] == key:
            return entry[-1]
        digest = sha256_file(file)
        if stat_key(file) == key:
            self.remember([(name, key, digest)])
        return digest

    def remember(self, matched: list[tuple[str, list[int], str]]) -> None:
        """Each (name, stat key taken before hashing, sha256) matched the manifest: known to this process at once,
        written with everything else it matched since the last write once ``_WRITE_EVERY`` seconds have passed
        (``flush``: now)."""
        new = {name: [*key, sha256] for name, key, sha256 in matched}
        self.entries.update(new)
        if self.path is None:
            return
        with _lock:
            _unwritten.setdefault(self.path, (self.folder, {}))[1].update(new)
            due = time.monotonic() - _written_at.get(self.path, float("-inf")) >= _WRITE_EVERY
        if due:
            self.flush()

    def flush(self) -> None:
        """Write what this process matched in the folder and has not written yet (none: nothing is written)."""
        if self.path is not None:
            self.entries.update(_write_unwritten(self.path))


_WRITE_EVERY = 5.0  # seconds between writes of one record: a long run killed loses this much hashing at most
_lock = threading.Lock()  # serve's request threads check files too
_unwritten: dict[Path, tuple[Path, dict]] = {}  # record path -> (its folder, entries matched and not written yet)
_written_at: dict[Path, float] = {}  # record path -> time.monotonic() of this process's last write of it


def _unwritten_entries(path: Path | None) -> dict:
    with _lock:
        return dict(_unwritten[path][1]) if path in _unwritten else {}


def _write_unwritten(path: Path) -> dict[str, list]:
    """Merge the entries this process has not written into the record as it is now (another process may have
    added entries since it was read), drop those of files no longer there, and replace it; the entries written."""
    with _lock:
        folder, matched = _unwritten.pop(path, (None, None))
        if not matched:
            return {}
        _written_at[path] = time.monotonic()
        entries = _read(path)
        entries.update(matched)
        try:  # a folder that cannot be searched now (EACCES) leaves the record as it was, as a failed write does
            entries = {name: value for name, value in entries.items() if (folder / name).exists()}  # once a write
            _replace_record(path, entries)
        except OSError as error:
            _warn_unrecorded(path.parent, error)
    return entries


def _replace_record(path: Path, entries: dict) -> None:
    from tokembed.index.atomic import remove_unused, temp_beside

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    try:
        tmp.write_bytes(sealed_bytes(entries))
        written = os.stat(tmp)
        os.replace(tmp, path)  # a torn or lost record only means hashing again: no fsync
    finally:  # a full disk: no temp file left behind for each run (pid-named, nothing else would remove it)
        remove_unused(tmp)
    key = stat_key(path)
    if key[:2] == [written.st_dev, written.st_ino]:  # still the one written here: the next write need not parse it
        _parsed[path] = (key, dict(entries))


@atexit.register
def flush_all() -> None:
    """Write every record this process has entries for that it has not written (at exit: what a run hashed last)."""
    with _lock:
        paths = list(_unwritten)
    for path in paths:
        _write_unwritten(path)


def _read(path: Path | None) -> dict[str, list]:
    if path is None:
        return {}
    try:
        key = stat_key(path)  # before reading: a record replaced meanwhile is read again next time
        parsed = _parsed.get(path)
        if parsed is None or parsed[0] != key:
            parsed = _parsed[path] = (key, read_sealed(path))
    except (OSError, ValueError):  # none yet, or damaged (``index.sealed``): every file is hashed again
        return {}
    return dict(parsed[1])


# record path -> (its stat key, its entries): a cron run checks a structure's kept code files one at a time, and
# parsing and unsealing a record of thousands of files for each made that quadratic (10 ms a read at 4,000 files)
_parsed: dict[Path, tuple[list[int], dict]] = {}


_warned: set[Path] = set()


def _warn_unrecorded(folder: Path, error: OSError) -> None:
    """Once per process and folder: without the record every run hashes again (a 16 GB checkpoint's weights
    digest: ~15 s per ``score``), which a user should hear of rather than find in a profile."""
    if folder in _warned:
        return
    _warned.add(folder)
    logging.getLogger("tokembed").warning(
        "cannot record which files were already hashed in %s (%s): every run hashes them again; set "
        "TOKEMBED_CACHE to a writable folder", folder, error.strerror or error)


def stat_key(path_or_fd) -> list[int]:
    """[device, inode, size, mtime_ns, ctime_ns] of a path, or of an open file descriptor (the very file a reader maps)."""
    info = os.fstat(path_or_fd) if isinstance(path_or_fd, int) else os.stat(path_or_fd)
    return [info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
