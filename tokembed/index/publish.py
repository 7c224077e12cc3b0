"""Publishing an export: written into a hidden staging folder on the target's file system, published only once
complete (``published``), so that a failed or interrupted export leaves the target as it was.

A new ``PATH`` is staged as ``.NAME.export-tmp-PID-RANDOM`` beside it and published by one rename of the whole
folder (a ``NAME`` too long for that is cut, ``held.short_stem``). An existing folder ``PATH`` (an empty one for
Parquet, a LanceDB database) is kept as it is (a working folder, a mount point, its owner and ACLs): staged as
``PATH/.export-tmp-PID-RANDOM`` inside it, whose entries are moved out one by one. The export holds its staging
folder's lock file (``held.HeldEntry``) while it lives; a SIGKILLed export's staging folder is removed by the next
export beside it (``remove_dead_staging``), a live one's in another container or on another host is not.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tokembed.errors import UsageError
from tokembed.index.atomic import write_error
from tokembed.index.held import LOCK_SUFFIX, UNIQUE, HeldEntry, remove_abandoned, short_stem
from tokembed.path_kind import exists, is_folder

# The hidden staging folders exports make: ``.NAME.export-tmp-PID-RANDOM`` beside PATH, ``.export-tmp-PID-RANDOM``
# inside it (each with its ``.lock`` file).
STAGING_NAME = re.compile(r"\.(?:.+\.)?export-tmp-" + UNIQUE, re.DOTALL)


@contextmanager
def published(to: Path) -> Iterator[Path]:
    """A staging folder for the export, published as ``to`` when the block ends without an error: beside a new
    ``to`` and renamed into place, or inside an existing folder ``to`` and its entries moved in (module doc)."""
    from tokembed._testhooks import fault_point
    from tokembed.index.commit_window import commit_window

    inside = is_folder(to)
    with _staging(to, inside) as staging:
        yield staging
        with commit_window("the export was published"):  # an interrupt then must not say the export failed
            _publish_entries(staging, to) if inside else _publish_folder(staging, to)
            fault_point("committed", 1)


@contextmanager
def _staging(to: Path, inside: bool) -> Iterator[Path]:
    """A new hidden folder on ``to``'s file system, removed when the block ends whatever happened: beside ``to``,
    or with ``inside`` in the existing folder ``to`` itself (see the module doc). The missing parents it creates
    are removed too when the block fails (if still empty)."""
    target = to.resolve()
    folder, prefix = (target, ".export-tmp-") if inside else (target.parent, f".{short_stem(target.name)}.export-tmp-")
    created, held = _missing_folders(folder), None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        held = HeldEntry(folder, prefix)
        held.path.mkdir()
    except OSError as exc:
        if held is not None:
            held.release()
        _remove_empty_folders(created)
        raise write_error(to, exc, f"--to {to}: cannot create a staging folder in {folder} ({exc.strerror or exc})") from exc
    try:
        yield held.path
    except BaseException:
        held.release()
        _remove_empty_folders(created)  # a failed export to a/b/new leaves no a/b behind either
        raise
    held.release()


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist, deepest first: what ``mkdir(parents=True)`` creates."""
    missing = []
    for path in (folder, *folder.parents):
        if exists(path):
            break
        missing.append(path)
    return missing


def _remove_empty_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) that are still empty; one that is not (another process wrote into it)
    and all above it are kept."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def remove_dead_staging(to: Path) -> None:
    """Staging folders that SIGKILLed exports left beside ``to`` (of any name) or inside it: no ``finally`` of
    theirs removed them. Only those whose lock is free (``remove_abandoned``): their process is gone."""
    target = to.resolve()
    remove_abandoned(target.parent, STAGING_NAME)
    if is_folder(target):
        remove_abandoned(target, STAGING_NAME)


def is_staging(name: str) -> bool:
    """An export's staging folder or its lock file."""
    return bool(STAGING_NAME.fullmatch(name.removesuffix(LOCK_SUFFIX)))


def names_but_lone_staging_locks(folder: Path) -> list[str]:
    """The names in ``folder`` (sorted), less the lock files of staging folders that are not there: a killed
    export's where the file system has no locks (``remove_dead_staging`` removes it where it has), or that of an
    export about to make its staging folder, whose files then meet this export's in publishing (``_publish_entries``
    refuses an entry that appeared while exporting)."""
    names = {entry.name for entry in folder.iterdir()}
    return sorted(name for name in names if not (name.endswith(LOCK_SUFFIX) and is_staging(name)
                                                 and name.removesuffix(LOCK_SUFFIX) not in names))


def _publish_folder(staging: Path, to: Path) -> None:
    """Publish the staging folder beside a new path ``to`` as ``to`` by one rename: all of it or nothing."""
    from tokembed.index.atomic import commit_sync

    target = to.resolve()
    try:
        os.rename(staging, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise UsageError(f"--to {to}: created by another process while exporting",
                             hint="export again to a new path") from exc
        raise write_error(to, exc, f"--to {to}: cannot publish the export ({exc.strerror or exc})") from exc
    commit_sync(target, "the export was published", target, target.parent)  # published: a failure from here on undoes nothing


def _publish_entries(staging: Path, to: Path) -> None:
    """Move the entries of the staging folder inside ``to`` into ``to``, one rename each, undone if one fails,
    never replacing an entry. Not atomic for more than one entry: a kill in between leaves the first ones."""
    from tokembed.index.atomic import commit_sync

    target, moved = to.resolve(), []
    try:
        for entry in sorted(staging.iterdir()):
            if exists(target / entry.name):  # written by another process since the export started
                raise UsageError(f"--to {to}: {entry.name} appeared while exporting", hint="export again to a new path")
            os.rename(entry, target / entry.name)
            moved.append(entry.name)
    except BaseException as exc:
        for name in moved:  # back into staging, which the caller removes: ``to`` is left as it was
            os.rename(target / name, staging / name)
        if isinstance(exc, OSError):
            raise write_error(to, exc, f"--to {to}: cannot publish the export ({exc.strerror or exc})") from exc
        raise
    commit_sync(target, "the export was published", target)  # published: a failure from here on undoes nothing
