"""A first run into an existing folder that is no index yet (no ``manifest.json``): its files under the names a
commit removes must be tokembed's, or the run is refused (exit 2) before anything is written.

At its commit a run removes every ``data/part-NNNNNN.arrow`` the manifest does not list (a killed run's shard,
journaled or not) and the ``staging/`` folder of ``--engine ray``. In an index folder those names are tokembed's;
in a project folder given to ``-o`` they may be a user's own Arrow file or folder. A shard a killed first run left
(the next run resumes it, or removes it) is an Arrow file with a shard's columns; a staging folder holds only
staged chunks. Anything else there is refused, never removed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tokembed.errors import UsageError
from tokembed.index.format import DATA_DIR, MANIFEST, SHARD_PATTERN, STAGING_DIR

_SHARD_COLUMNS = {"id", "token_ids", "content_hash"}  # with vectors or without (``format.vectorless_schema``)
_STAGED = re.compile(r"^\.?chunk-[0-9a-f]+\.arrow(?:\.tmp-\d+(?:-\d+)?)?$")  # engine/ray_staging.py, temp names too
_HINT = "give -o a new folder (or one tokembed wrote), or move the file out of the way"


def refuse_foreign_files(folder: Path) -> None:
    """``folder`` is an index (it has a manifest, readable or not), new, or holds under the names a commit removes
    only what tokembed wrote there."""
    try:
        if os.path.lexists(folder / MANIFEST) or not folder.is_dir():
            return
    except OSError:  # a folder this user may not search: the run's lock names it (exit 8)
        return
    data = folder / DATA_DIR
    for path in _listed(data):
        if SHARD_PATTERN.match(path.name) and path.is_file() and not _is_shard(path):
            raise UsageError(f"{path}: not a shard tokembed wrote, in {folder}, which is no index yet (no {MANIFEST}); "
                             "the run's commit would remove it", hint=_HINT)
    staging = folder / STAGING_DIR
    for path in _listed(staging):
        if not _STAGED.match(path.name):
            raise UsageError(f"{path}: not a chunk tokembed staged, in {folder}, which is no index yet (no {MANIFEST}); "
                             f"the run's commit would remove the folder {STAGING_DIR}/", hint=_HINT)


def _listed(folder: Path) -> list[Path]:
    """The entries of ``folder``; none where it is not a folder or this user may not list it (the run's lock or
    first write then names it: exit 8)."""
    try:
        return sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return []


def _is_shard(path: Path) -> bool:
    """An Arrow IPC file with a shard's columns (a shard is renamed into place whole: never a torn one)."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path), "r") as source:
            names = set(pa.ipc.open_file(source).schema.names)
    except (OSError, pa.ArrowException):
        return False
    return _SHARD_COLUMNS <= names
