"""How ``tokembed export`` publishes what it staged, and what it refuses to write into.

* An existing empty folder is replaced by one rename (a kill can leave it empty or whole, never half); an empty
  folder that is a mount point (a rename from outside fails with EXDEV) is staged inside and filled file by file.
* LanceDB reports a full disk as a RuntimeError: exit 8 as for Parquet, its staging folder removed.
* A SIGKILLed export's staging folder, of any name, is removed by the next export in the same folder; a live
  export's, whose pid this process cannot see (another container, PID namespace or host), is not: its lock says.
* A staging name stays within NAME_MAX (255 bytes) for any legal ``--to`` name.
* ``--format lance`` writes only into a new folder or a LanceDB database folder, never an index folder.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from test_export import DOCS, _wait_for_staging, demo_index  # noqa: F401 (a fixture)

@pytest.fixture(scope="module")
def index(demo_index):
    """The demo model's index of DOCS in three shards."""
    return demo_index


def _parquet_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _recording_renames(monkeypatch, fail_across=None) -> list[tuple[str, str]]:
    """Every ``os.rename`` from here on, as (source, destination); with ``fail_across`` (a folder), a rename
    between inside and outside it fails with EXDEV, as across a mount point."""
    real, calls = os.rename, []

    def rename(source, destination):
        source, destination = os.path.abspath(source), os.path.abspath(destination)
        if fail_across is not None:
            inside = [path.startswith(str(fail_across) + os.sep) for path in (source, destination)]
            if inside[0] != inside[1] or str(fail_across) in (source, destination):
                raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), source)
        calls.append((source, destination))
        return real(source, destination)

    monkeypatch.setattr(os, "rename", rename)
    return calls


def test_a_new_path_is_published_by_one_rename(cli, index, tmp_path, monkeypatch):
    out = tmp_path / "out"
    calls = _recording_renames(monkeypatch)
    result = cli("export", index, "--to", out, "--format", "parquet", "-q")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and calls[0][1] == str(out)  # the whole export at once: no kill can leave a part of it
    assert calls[0][0].startswith(str(tmp_path / ".out.export-tmp-"))
    assert _parquet_files(out) == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    assert os.listdir(tmp_path) == ["out"]


def test_an_existing_empty_folder_is_kept_and_filled_from_staging_inside_it(cli, index, tmp_path, monkeypatch):
    """Replaced by a rename of a folder staged beside it, `export --to .` left the shell in a deleted folder and the
    folder lost its owner, group and ACLs; a mount point refused the rename (another file system)."""
    out = tmp_path / "mnt"
    out.mkdir(mode=0o750)
    inode = out.stat().st_ino
    calls = _recording_renames(monkeypatch, fail_across=out)  # renames across its edge fail, as into a mount point
    result = cli("export", index, "--to", out, "--format", "parquet", "-q")
    assert result.exit_code == 0, result.output
    assert _parquet_files(out) == ["part-000000.parquet", "part-000001.parquet", "part-000002.parquet"]
    staging = {os.path.dirname(source) for source, _ in calls}
    assert len(staging) == 1 and re.fullmatch(rf"\.export-tmp-{os.getpid()}-[0-9a-f]{{8}}", Path(staging.pop()).name)
    assert out.stat().st_ino == inode and (out.stat().st_mode & 0o777) == 0o750
    assert os.listdir(tmp_path) == ["mnt"] and sorted(os.listdir(out)) == _parquet_files(out)


def test_a_kill_before_publishing_into_an_existing_folder_leaves_it_empty_and_a_rerun_works(cli, index, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "import os, signal, sys\n"
        "from tokembed.index import export\n"
        "real = os.rename\n"
        "def rename(a, b):\n"
        "    if os.path.dirname(os.path.abspath(b)) == sys.argv[2]:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(a, b)\n"
        "os.rename = rename\n"
        "export.export_index(sys.argv[1], sys.argv[2], fmt='parquet')\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(index), str(out)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert [name for name in os.listdir(out) if ".export-tmp-" in name] == os.listdir(out)  # no part published
    again = cli("export", index, "--to", out, "--format", "parquet", "-q")
    assert again.exit_code == 0, again.output
    assert sorted(os.listdir(out)) == _parquet_files(out) and len(_parquet_files(out)) == 3


def test_lance_into_an_existing_database_on_a_mount_point_moves_the_table_by_one_rename(cli, index, tmp_path, monkeypatch):
    lancedb = pytest.importorskip("lancedb", reason="the [lance] extra is not installed")

    out = tmp_path / "db"
    out.mkdir()
    calls = _recording_renames(monkeypatch, fail_across=out)
    result = cli("export", index, "--to", out, "--format", "lance", "-q")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and calls[0][1] == str(out / "documents.lance")
    assert re.fullmatch(rf"{re.escape(str(out))}/\.export-tmp-{os.getpid()}-[0-9a-f]{{8}}/documents\.lance", calls[0][0])
    assert lancedb.connect(str(out)).open_table("documents").count_rows() == len(DOCS)
    assert os.listdir(tmp_path) == ["db"] and os.listdir(out) == ["documents.lance"]


# ---------------------------------------------------------------------------------------------- LanceDB errors


def _lance_create_table_raising(monkeypatch, message: str) -> None:
    """LanceDB's ``create_table`` writes part of the table, then fails with ``RuntimeError(message)``."""
    pytest.importorskip("lancedb", reason="the [lance] extra is not installed")
    from lancedb.db import LanceDBConnection

    def create_table(self, name, data=None, schema=None, **kwargs):
        (Path(self.uri) / f"{name}.lance" / "data").mkdir(parents=True)
        raise RuntimeError(message)

    monkeypatch.setattr(LanceDBConnection, "create_table", create_table)


def test_lance_on_a_full_disk_exits_8_and_removes_its_staging(cli, index, tmp_path, monkeypatch):
    _lance_create_table_raising(monkeypatch, "lance error: LanceError(IO): No space left on device (os error 28)")
    for out in (tmp_path / "new-db", tmp_path / "db"):
        if out.name == "db":
            out.mkdir()
        result = cli("export", index, "--to", out, "--format", "lance")
        assert result.exit_code == 8, result.output
        assert "No space left on device" in result.stderr and "Traceback" not in result.output
    assert os.listdir(tmp_path) == ["db"] and os.listdir(tmp_path / "db") == []


def test_a_lance_runtime_error_that_is_not_io_is_not_called_a_write_error(index, tmp_path, monkeypatch):
    from tokembed.index.export import export_index

    _lance_create_table_raising(monkeypatch, "lance error: Invalid user input: something a bug passed")
    with pytest.raises(RuntimeError, match="Invalid user input"):
        export_index(index, tmp_path / "db", fmt="lance")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- leftovers


DEAD = "999999999-0123abcd"  # PID-RANDOM of a staging folder: the pid, no process here, decides nothing


def _staging_folder(path: Path, lock: str | None = None) -> Path:
    """A staging folder with a half-written file and, with ``lock`` ("free" or "held"), its lock file; "held" keeps
    it locked by this process, as a live export whose pid this process cannot see (another PID namespace) does."""
    path.mkdir()
    (path / "part-000000.parquet").write_bytes(b"half")
    if lock is not None:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT)
        if lock == "held":
            fcntl.flock(fd, fcntl.LOCK_EX)
            _HELD.append(fd)  # held until the test process ends
        else:
            os.close(fd)
    return path


_HELD: list[int] = []


def test_any_exports_dead_staging_folders_are_removed_by_the_next_export_in_that_folder(cli, index, tmp_path):
    left = [_staging_folder(tmp_path / f".other.export-tmp-{DEAD}"), _staging_folder(tmp_path / f".a.b.export-tmp-{DEAD}", "free"),
            _staging_folder(tmp_path / f".export-tmp-{DEAD}")]
    kept = [_staging_folder(tmp_path / f".other.export-tmp-{DEAD}x"), _staging_folder(tmp_path / f"other.export-tmp-{DEAD}"),
            _staging_folder(tmp_path / ".other.export-tmp-999999999")]  # an earlier release's (no lock): not judged by pid
    out = tmp_path / "out"
    out.mkdir()
    inside = _staging_folder(out / f".export-tmp-{DEAD}", "free")  # a killed export into this empty mount point
    result = cli("export", index, "--to", out, "--format", "parquet", "-q")
    assert result.exit_code == 0, result.output
    assert not any(folder.exists() for folder in [*left, inside]) and all(folder.exists() for folder in kept)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".lock")]
    assert sorted(os.listdir(out)) == _parquet_files(out) and len(_parquet_files(out)) == 3


def test_a_live_export_in_another_pid_namespace_keeps_its_staging(cli, index, tmp_path, monkeypatch):
    """Two containers (or hosts) exporting into one shared folder: B's start-up sweep removed A's live staging folder,
    whose pid B's PID namespace does not have, and A failed (exit 8). Here A is a paused child and, for B (this
    process), every pid is one of no process, as in another namespace."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKEMBED_TEST_PAUSE_AT": "export:1", "TOKEMBED_TEST_PAUSE_SECONDS": "4"}
    a = subprocess.Popen([sys.executable, "-m", "cli.main", "export", str(index), "--to", str(tmp_path / "a"),
                          "--format", "parquet", "-q"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_staging(tmp_path / "a", a)

        def no_such_process(pid, sig):
            raise ProcessLookupError(pid)

        monkeypatch.setattr(os, "kill", no_such_process)
        result = cli("export", index, "--to", tmp_path / "b", "--format", "parquet", "-q")
        monkeypatch.undo()
        assert result.exit_code == 0, result.output
        assert a.wait(timeout=60) == 0, a.stderr.read().decode()
    finally:
        a.kill()
        a.wait()
    assert sorted(os.listdir(tmp_path)) == ["a", "b"] and _parquet_files(tmp_path / "a") == _parquet_files(tmp_path / "b")


def test_a_live_exports_staging_is_kept_though_its_pid_is_not_visible_here(cli, index, tmp_path):
    """The same with a staging folder whose lock this process holds, named with a pid of no process here; and an
    empty folder holding only such a live export's staging is refused, saying so."""
    live = _staging_folder(tmp_path / f".a.export-tmp-{DEAD}", "held")
    result = cli("export", index, "--to", tmp_path / "b", "--format", "parquet", "-q")
    assert result.exit_code == 0, result.output
    assert (live / "part-000000.parquet").read_bytes() == b"half" and len(_parquet_files(tmp_path / "b")) == 3
    assert sorted(os.listdir(tmp_path)) == [live.name, live.name + ".lock", "b"]

    out = tmp_path / "mnt"
    out.mkdir()
    inside = _staging_folder(out / f".export-tmp-{DEAD}", "held")
    result = cli("export", index, "--to", out, "--format", "parquet", "-q")
    assert result.exit_code == 2 and "another export is staging into this folder" in result.stderr, result.output
    assert inside.exists()


def test_a_staging_lookalike_with_a_pid_too_large_for_a_c_long_is_left_alone(cli, index, tmp_path):
    """``.x.export-tmp-99999999999999999999`` beside --to: os.kill raised OverflowError, a traceback (exit 1)."""
    lookalike = _staging_folder(tmp_path / ".x.export-tmp-99999999999999999999")
    result = cli("export", index, "--to", tmp_path / "out", "--format", "parquet", "-q")
    assert result.exit_code == 0, result.output
    assert lookalike.exists() and len(_parquet_files(tmp_path / "out")) == 3


@pytest.mark.parametrize("length", [200, 237, 255])
def test_a_to_name_of_up_to_255_bytes_is_staged_within_name_max(cli, index, tmp_path, monkeypatch, length):
    """``.NAME.export-tmp-PID`` of a 237-255 byte NAME exceeded 255 bytes: exit 8 "File name too long"."""
    name = "é" + "n" * (length - 2)  # bytes, not characters, count
    calls = _recording_renames(monkeypatch)
    result = cli("export", index, "--to", tmp_path / name, "--format", "parquet", "-q")
    assert result.exit_code == 0, result.output
    assert len(_parquet_files(tmp_path / name)) == 3 and os.listdir(tmp_path) == [name]
    staging = Path(calls[0][0]).name
    assert staging.startswith(f".{name[:150]}") and ".export-tmp-" in staging and len(os.fsencode(staging + ".lock")) <= 255


def _with_a_corrupt_shard(index, folder) -> Path:
    copy = folder / "corrupt"
    shutil.copytree(index, copy)
    shard = copy / "data" / "part-000002.arrow"
    shard.write_bytes(shard.read_bytes()[:-1] + b"x")
    return copy


def test_a_failed_export_removes_the_parent_folders_it_created(cli, index, tmp_path, monkeypatch):
    """--to new/a/b of a corrupt index was exit 6 but left new/a behind; a full disk did the same."""
    corrupt, work = _with_a_corrupt_shard(index, tmp_path), tmp_path / "work"
    (work / "kept").mkdir(parents=True)  # there before: stays, empty as it was
    for to in (work / "new" / "a" / "b", work / "kept" / "a" / "b"):
        result = cli("export", corrupt, "--to", to, "--format", "parquet")
        assert result.exit_code == 6 and "part-000002.arrow" in result.stderr, result.output
        assert sorted(p.relative_to(work) for p in work.rglob("*")) == [Path("kept")]

    real_mkdir = Path.mkdir

    def mkdir_on_a_full_disk(self, *args, **kwargs):
        if ".export-tmp-" in self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir_on_a_full_disk)
    result = cli("export", index, "--to", work / "new" / "a" / "b", "--format", "parquet")
    assert result.exit_code == 8 and "No space left on device" in result.stderr, result.output
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == [Path("kept")]


# ---------------------------------------------------------------------------------------------- refusals


def test_lance_refuses_a_folder_that_is_not_a_lancedb_database(cli, index, tmp_path):
    parquet = tmp_path / "parquet"
    assert cli("export", index, "--to", parquet, "--format", "parquet", "-q").exit_code == 0
    other = tmp_path / "other-index"
    shutil.copytree(index, other)
    for folder, says in ((other, "a tokembed index folder"), (parquet, "not a LanceDB database folder")):
        before = sorted(p.name for p in folder.iterdir())
        result = cli("export", index, "--to", folder, "--format", "lance")
        assert result.exit_code == 2, (folder, result.output)
        assert says in result.stderr and "*.lance" in result.stderr
        assert sorted(p.name for p in folder.iterdir()) == before
    for folder in (index, index / "data"):  # the index's own folders: refused whatever the format (test_user_files.py)
        result = cli("export", index, "--to", folder, "--format", "lance")
        assert result.exit_code == 2 and "the index folder" in result.stderr, (folder, result.output)


def test_lance_writes_into_a_database_folder_with_a_dead_exports_staging(cli, index, tmp_path):
    lancedb = pytest.importorskip("lancedb", reason="the [lance] extra is not installed")

    db = tmp_path / "db"
    lancedb.connect(str(db)).create_table("keep", data=pa.table({"x": [1]}))
    (db / f".export-tmp-{DEAD}" / "documents.lance").mkdir(parents=True)
    (db / ".DS_Store").write_bytes(b"\0")  # macOS's, in any folder it showed: a hidden file, no reason to refuse
    result = cli("export", index, "--to", db, "--format", "lance", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(db)) == [".DS_Store", "documents.lance", "keep.lance"]
