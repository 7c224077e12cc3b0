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
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from tokembed.cache import cache_root
from tokembed.index.sealed import read_sealed, sealed_bytes


class VerifiedFiles:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        name = hashlib.sha256(str(self.folder.resolve()).encode()).hexdigest()[:32]
        root = cache_root()
        self.path = None if root is None else root / "verified" / f"{name}.json"  # None: no record, hash every time
        self.entries = self._read()

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
        """Each (name, stat key taken before hashing, sha256) matched the manifest: written at once."""
        latest = self._read()  # another process may have added entries since this one read the record
        latest.update({name: [*key, sha256] for name, key, sha256 in matched})
        self.entries = {entry: value for entry, value in latest.items() if (self.folder / entry).exists()}
        if self.path is None:
            return
        from tokembed.index.atomic import temp_beside

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temp_beside(self.path)
            tmp.write_bytes(sealed_bytes(self.entries))
            os.replace(tmp, self.path)  # a torn or lost record only means hashing again: no fsync
        except OSError as error:
            _warn_unrecorded(self.path.parent, error)

    def _read(self) -> dict[str, list]:
        if self.path is None:
            return {}
        try:
            key = stat_key(self.path)  # before reading: a record replaced meanwhile is read again next time
            parsed = _parsed.get(self.path)
            if parsed is None or parsed[0] != key:
                parsed = _parsed[self.path] = (key, read_sealed(self.path))
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
