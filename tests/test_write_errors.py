"""A full disk (ENOSPC) or a read-only sub-folder (EROFS) while tokembed writes its own files: exit 8, the write
error naming the file and the reason, never a traceback (exit 1); the committed index is left as it was.

Simulated in-process, with no mount: the temp file's ``Path.write_bytes`` raises ENOSPC; a read-only folder's
``unlink`` raises EROFS even for a file it does not hold (as Linux does), and so does creating a shard in it.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from helpers import write_parquet
from plaid_support import clustered_docs
from test_score import write_index
from tokembed.errors import IndexWriteError
from tokembed.index.atomic import atomic_write_bytes, replacing

WRITE_ERROR = 8


def os_error(code: int, path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


def disk_full_writing(monkeypatch, pattern: str) -> None:
    """Writing the temp file that replaces a file named like ``pattern`` (a glob) meets a full disk."""
    real = Path.write_bytes

    def write_bytes(self, data):
        name, _, _ = self.name.lstrip(".").rpartition(".tmp-")
        if fnmatch.fnmatch(name, pattern):
            raise os_error(errno.ENOSPC, self)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def read_only(monkeypatch, folder: Path) -> None:
    """``folder`` as on a read-only mount under a writable index folder (its lock taken)."""
    real_unlink, real_new_file = Path.unlink, pa.ipc.new_file

    def refuse(path) -> None:
        if Path(str(path)).parent == folder:
            raise os_error(errno.EROFS, path)

    def unlink(self, missing_ok=False):
        refuse(self)
        return real_unlink(self, missing_ok)

    def new_file(sink, schema, **options):
        refuse(sink)
        return real_new_file(sink, schema, **options)

    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr(pa.ipc, "new_file", new_file)


def assert_write_error(result, file: str, reason: str) -> None:
    assert result.exit_code == WRITE_ERROR, result.output
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("tokembed: write error: ") and file in line and reason in line, line


def temp_files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob(".*") if ".tmp-" in path.name]


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    docs = clustered_docs(np.random.default_rng(5), 120)
    return write_index(tmp_path_factory.mktemp("plain") / "index", docs, shard_rows=40, batch_rows=20)


@pytest.fixture
def index(plain, tmp_path) -> Path:
    return shutil.copytree(plain, tmp_path / "index")


# ---------------------------------------------------------------------------------------------- the library


def test_atomic_write_bytes_on_a_full_disk_is_a_write_error_naming_the_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    disk_full_writing(monkeypatch, "state.json")
    with pytest.raises(IndexWriteError, match=r"state\.json: cannot write \(No space left on device\)"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and not temp_files(tmp_path)


def test_a_failed_clean_up_never_hides_the_error_that_made_the_write_fail(tmp_path, monkeypatch):
    """The temp file's removal failing too (ext4 remounts itself read-only on errors) raised EROFS from the
    ``finally``, in place of the block's own error."""
    target = tmp_path / "state.json"
    with pytest.raises(IndexWriteError, match="No space left on device"):
        with replacing(target):
            read_only(monkeypatch, tmp_path)
            raise IndexWriteError(f"{target}: cannot write ({os.strerror(errno.ENOSPC)})")
    assert not target.exists()


def test_a_read_only_folder_is_a_write_error_before_anything_is_written(tmp_path, monkeypatch):
    read_only(monkeypatch, tmp_path)
    with pytest.raises(IndexWriteError, match=r"state\.json: cannot write \(Read-only file system\)"):
        with replacing(tmp_path / "state.json"):
            pytest.fail("the block runs although its temp file cannot be cleared")


# ---------------------------------------------------------------------------------------------- compress


@pytest.mark.parametrize("pattern", ["pending.json", "*.coded.json", "manifest.json"])
def test_compress_on_a_full_disk_is_exit_8_and_the_index_is_untouched(cli, index, monkeypatch, pattern):
    before = (index / "manifest.json").read_bytes()
    disk_full_writing(monkeypatch, pattern)
    result = cli("compress", index, "--centroids", 16, "--quiet")
    assert_write_error(result, pattern.lstrip("*"), "No space left on device")
    assert (index / "manifest.json").read_bytes() == before and not temp_files(index)


def test_compress_drop_vectors_on_a_full_disk_is_exit_8(cli, index, monkeypatch):
    assert cli("compress", index, "--centroids", 16, "--quiet").exit_code == 0
    before = (index / "manifest.json").read_bytes()
    disk_full_writing(monkeypatch, "drop-pending.json")
    result = cli("compress", index, "--drop-vectors", "--quiet")
    assert_write_error(result, "plaid/drop-pending.json", "No space left on device")
    assert (index / "manifest.json").read_bytes() == before and not temp_files(index)


def test_compress_into_a_read_only_plaid_folder_is_exit_8(cli, index, monkeypatch):
    (index / "plaid").mkdir()
    read_only(monkeypatch, index / "plaid")
    result = cli("compress", index, "--centroids", 16, "--quiet")
    assert_write_error(result, "plaid/codec-", "Read-only file system")


# ---------------------------------------------------------------------------------------------- encode


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_parquet(tmp_path / "c.parquet", [{"id": f"d{i}", "text": f"document number {i}"} for i in range(3)])


def test_encode_whose_run_journal_meets_a_full_disk_is_exit_8(cli, corpus, tmp_path, monkeypatch):
    disk_full_writing(monkeypatch, "run-journal.json")
    output = tmp_path / "out"
    result = cli("encode", corpus, "-o", output, "--shard-rows", 1, "--quiet")
    assert_write_error(result, "run-journal.json", "No space left on device")
    assert not (output / "manifest.json").exists() and not list(output.rglob("part-*.arrow"))


def test_encode_into_a_read_only_data_folder_reports_the_write_not_its_clean_up(cli, corpus, tmp_path, monkeypatch):
    """The shard could not be created; removing this run's files then raised EROFS too, which hid it (exit 1)."""
    output = tmp_path / "out"
    (output / "data").mkdir(parents=True)
    read_only(monkeypatch, output / "data")
    result = cli("encode", corpus, "-o", output, "--quiet")
    assert_write_error(result, "data/.part-000000.arrow", "Read-only file system")
    assert not (output / "manifest.json").exists()


def test_a_named_pipe_is_never_renamed_over(tmp_path):
    """A device, FIFO or socket stands in for /dev/null (never touched by a test): renamed over, it became a file
    of the results for every program on the host. A link to one is replaced as a link, the pipe left."""
    fifo, link = tmp_path / "fifo", tmp_path / "link"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    with pytest.raises(IndexWriteError, match=r"fifo: cannot write \(not a regular file \(a named pipe\)"):
        atomic_write_bytes(fifo, b"results\n")
    assert fifo.is_fifo() and sorted(os.listdir(tmp_path)) == ["fifo", "link"]  # no temp file left
    atomic_write_bytes(link, b"results\n")
    assert fifo.is_fifo() and not link.is_symlink() and link.read_bytes() == b"results\n"


def test_a_read_only_index_folder_names_its_lock_file_not_the_folder(tmp_path, monkeypatch):
    """An index folder that exists on a read-only mount: the message said the folder could not be created."""
    from tokembed.errors import IndexWriteError
    from tokembed.index.lock import IndexLock

    folder = tmp_path / "index"
    folder.mkdir()
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(folder)):
            raise os_error(errno.EROFS, path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(IndexWriteError) as raised:
        IndexLock(folder).__enter__()
    assert f"{folder}: cannot create its lock file (Read-only file system)" in str(raised.value)
    assert folder.is_dir()
