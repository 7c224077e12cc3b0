"""Held entries (``tokembed/index/held.py``) on a file system without locks, where ``flock`` fails with ENOLCK
(NFSv3 without a lock daemon), ENOSYS (Lustre mounted without ``-o flock``) or EOPNOTSUPP: export exited 8 "cannot
create a staging folder (No locks available)", ``score -o`` exited 8, a PDF temp copy raised OSError, and each left
its ``.lock`` file for good (which then made an empty ``--to`` "another export's"). Now the entry is made and used
with its lock file unlocked, and a sweep (whose ``flock`` fails alike) leaves a live one alone. Any other failure to
lock leaves no lock file and no open descriptor.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import types

import pytest

from test_export import demo_index  # noqa: F401 (a fixture)
from tokembed.index import held


def _flock_failing(monkeypatch, code: int) -> None:
    """``flock`` in held.py (only there: the index's own lock is on a local disk) fails with ``code``."""
    def flock(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(held, "fcntl", types.SimpleNamespace(flock=flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB))


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _locks(folder) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*.lock"))


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_an_entry_is_made_used_and_released_where_the_file_system_has_no_locks(tmp_path, monkeypatch, code):
    _flock_failing(monkeypatch, code)
    fds = _open_fds()
    with held.HeldEntry(tmp_path, "x-") as path:
        path.mkdir()
        assert sorted(os.listdir(tmp_path)) == [path.name, path.name + ".lock"]
    assert os.listdir(tmp_path) == [] and _open_fds() == fds


def test_another_failure_to_lock_raises_and_leaves_no_lock_file_or_descriptor(tmp_path, monkeypatch):
    _flock_failing(monkeypatch, errno.EIO)
    fds = _open_fds()
    with pytest.raises(OSError) as raised:
        held.HeldEntry(tmp_path, "x-")
    assert raised.value.errno == errno.EIO and os.listdir(tmp_path) == [] and _open_fds() == fds


def test_a_sweep_where_the_file_system_has_no_locks_leaves_a_live_entry_alone(tmp_path, monkeypatch):
    _flock_failing(monkeypatch, errno.ENOLCK)
    live = held.HeldEntry(tmp_path, "x-")
    live.path.write_text("in use")
    held.remove_abandoned(tmp_path, held.held_pattern("x-"))
    assert live.path.read_text() == "in use" and (tmp_path / (live.path.name + ".lock")).exists()
    live.release()
    assert os.listdir(tmp_path) == []


def test_export_without_locks_publishes_and_leaves_no_lock_file(cli, demo_index, tmp_path, monkeypatch):
    """Into a new path, and into an empty folder that holds only the lock file an export of 80b117c left there (on
    such a file system no sweep can tell it is a dead export's): it is not content, the export goes in beside it."""
    _flock_failing(monkeypatch, errno.ENOLCK)
    result = cli("export", demo_index, "--to", tmp_path / "new", "--format", "parquet", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["new"] and len(os.listdir(tmp_path / "new")) == 3

    mount = tmp_path / "mnt"
    mount.mkdir()
    orphan = mount / ".export-tmp-999999999-0123abcd.lock"
    orphan.touch()
    result = cli("export", demo_index, "--to", mount, "--format", "parquet", "-q")
    assert result.exit_code == 0, result.output
    assert _locks(mount) == [orphan.name] and len(os.listdir(mount)) == 4

    result = cli("export", demo_index, "--to", tmp_path / "db", "--format", "lance", "-q")
    assert result.exit_code == 0, result.output
    assert _locks(tmp_path) == [f"mnt/{orphan.name}"]


def test_score_output_without_locks_is_written_and_leaves_no_lock_file(cli, demo_index, tmp_path, monkeypatch):
    _flock_failing(monkeypatch, errno.ENOLCK)
    queries = tmp_path / "queries.txt"
    queries.write_text("a query\n")
    result = cli("score", queries, demo_index, "-o", tmp_path / "out.jsonl", "-k", 2, "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.jsonl").read_text().count("\n") == 2  # one line a hit
    assert sorted(os.listdir(tmp_path)) == ["out.jsonl", "queries.txt"]


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS])
def test_a_pdf_temp_copy_without_locks_is_made_and_removed(tmp_path, monkeypatch, code):
    from tokembed.sources import pdf_workers

    _flock_failing(monkeypatch, code)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    copy = pdf_workers._temporary_copy(b"%PDF- bytes")
    assert copy.path.read_bytes() == b"%PDF- bytes"
    copy.release()
    assert os.listdir(tmp_path) == []
