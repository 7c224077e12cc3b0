"""Lock files in a group-shared index or export folder, and on a file system without locks.

* A lock file (``INDEX/.lock``, an export's staging ``.lock``) was created 0644 whatever the umask and opened
  read-write: in a setgid 2775 folder under umask 002 another group member's ``encode``/``compress`` exited 8
  "cannot create its lock file (Permission denied)", and its export found a killed export's staging folder
  "another export's" forever. Lock files now get the mode the umask gives, one this user may not write (an earlier
  release's) is locked through a read-only descriptor, and a dead export's staging folder is removed whoever made it.
* ``encode``/``compress`` where ``flock`` fails with ENOLCK (NFSv3 without a lock daemon, Lustre without
  ``-o flock``) ended in a traceback and left a new folder holding only ``.lock``: now exit 8, the folder removed.
* ``INDEX/plaid`` that cannot be created (out of inodes, a file or a dangling link so named) was a traceback from
  ``compress``: now exit 8 naming it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import types

import pytest

from helpers import write_jsonl
from plaid_support import corpus_rows
from test_write_errors import index, plain  # noqa: F401 (fixtures)
from tokembed.errors import IndexLockedError, IndexWriteError
from tokembed.index import held, lock
from tokembed.index.publish import STAGING_NAME

WRITE = 8


@pytest.fixture
def umask_002():
    before = os.umask(0o002)
    yield
    os.umask(before)


@pytest.fixture
def lock_files_read_only(monkeypatch):
    """Opening a ``.lock`` file that is there for writing fails as for a group member who may not write it."""
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).endswith(".lock") and flags & (os.O_RDWR | os.O_WRONLY) and os.path.exists(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_lock_files_get_the_mode_the_umask_gives(tmp_path, umask_002):
    with lock.IndexLock(tmp_path / "index"):
        assert _mode(tmp_path / "index" / ".lock") == 0o664
    with held.HeldEntry(tmp_path, ".export-tmp-") as path:
        assert _mode(path.with_name(path.name + ".lock")) == 0o664


def test_an_index_lock_file_this_user_may_not_write_still_locks(tmp_path, lock_files_read_only):
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / ".lock").write_text("1234\n")
    with lock.IndexLock(folder):
        with pytest.raises(IndexLockedError):
            lock.refuse_if_locked(folder)
        with pytest.raises(IndexLockedError):
            lock.IndexLock(folder).__enter__()
    with lock.IndexLock(folder):
        pass


def test_in_a_folder_this_user_may_not_write_a_lock_file_it_may_not_write_is_refused_at_once(tmp_path, monkeypatch,
                                                                                              lock_files_read_only):
    # another user's index: the read-only lock let encode load its model and compress train its centroids, then
    # fail at the first write; and a lock file that could not be created was said to be missing (ENOENT)
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / ".lock").write_text("1234\n")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path) == str(folder) and mode == os.W_OK
                        else real_access(path, mode, **kw))
    with pytest.raises(IndexWriteError, match="cannot create its lock file .Permission denied"):
        lock.IndexLock(folder).__enter__()


def test_a_dead_export_of_another_user_is_removed_through_a_lock_file_it_may_not_write(tmp_path, monkeypatch,
                                                                                        lock_files_read_only):
    staging = tmp_path / ".export-tmp-4242-0123abcd"
    staging.mkdir()
    (staging / "part-000000.parquet").write_bytes(b"half")
    staging.with_name(staging.name + ".lock").write_text("")
    monkeypatch.setattr(os, "getuid", lambda: os.stat(staging).st_uid + 1)  # the folder is another user's
    held.remove_abandoned(tmp_path, STAGING_NAME)
    assert os.listdir(tmp_path) == []


def _no_locks(monkeypatch) -> None:
    def flock(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock, "fcntl", types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB,
                                                             LOCK_UN=fcntl.LOCK_UN))


def test_encode_where_the_file_system_has_no_locks_is_a_write_error_leaving_no_folder(cli, tmp_path, colbert_ckpt,
                                                                                       monkeypatch):
    _no_locks(monkeypatch)
    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_rows(3))
    result = cli("encode", corpus, "--model", colbert_ckpt, "-o", tmp_path / "new" / "index", "--quiet")
    assert result.exit_code == WRITE, result.output
    assert "cannot lock the index (No locks available)" in result.stderr and not (tmp_path / "new").exists()


def test_compress_where_the_file_system_has_no_locks_is_a_write_error(cli, index, monkeypatch):  # noqa: F811
    _no_locks(monkeypatch)
    with pytest.raises(IndexWriteError, match="no file locks"):
        lock.IndexLock(index).__enter__()
    result = cli("compress", index, "--centroids", 16, "--quiet")
    assert result.exit_code == WRITE and "cannot lock the index" in result.stderr, result.output
    assert (index / ".lock").exists() and (index / "manifest.json").exists()


@pytest.mark.parametrize("what", ["a file", "a dangling link"])
def test_a_plaid_folder_that_cannot_be_created_is_a_write_error(cli, index, what):  # noqa: F811
    if what == "a file":
        (index / "plaid").write_text("not a folder")
    else:
        (index / "plaid").symlink_to(index.parent / "unmounted" / "plaid")
    result = cli("compress", index, "--centroids", 16, "--quiet")
    assert result.exit_code == WRITE, result.output
    assert f"{index / 'plaid'}: cannot create the folder" in result.stderr
