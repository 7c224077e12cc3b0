"""The fsync of a folder failing after a commit's rename (a disk's EIO; EINVAL where the file system has no folder
fsync: vboxsf, some CIFS/9p mounts). From the rename on the commit stands: nothing the new manifest (export, results
file) lists is removed. A file system without folder fsync is no error at all; an EIO is exit 8 saying the commit was
made. Before, ``encode``'s abort deleted the shards of the committed manifest (exit 6 on the next read)."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from helpers import write_parquet
from test_export import DOCS

WRITE_ERROR = 8
REAL_FSYNC = os.fsync


def _failing_folder_fsync(monkeypatch, code: int, only: Path | None = None) -> None:
    """``os.fsync`` of a folder (``only`` that one) raises ``code``; a file's fsyncs as usual."""
    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode) and (only is None or os.path.samefile(f"/proc/self/fd/{fd}", only)):
            raise OSError(code, os.strerror(code))
        return REAL_FSYNC(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsync")
    return write_parquet(root / "c.parquet", [{"id": f"doc{i}", "text": t} for i, t in enumerate(DOCS[:6])])


def _assert_sound(cli, index: Path) -> None:
    listed = [shard["file"] for shard in json.loads((index / "manifest.json").read_text())["shards"]]
    assert listed and all((index / name).is_file() for name in listed)
    result = cli("info", index, "--verify")
    assert result.exit_code == 0, result.output


def test_encode_commit_stands_when_the_index_folder_fsync_fails(cli, corpus, tmp_path, monkeypatch):
    index = tmp_path / "index"
    assert cli("encode", corpus, "-o", index, "--quiet").exit_code == 0
    more = write_parquet(tmp_path / "more.parquet", [{"id": "new", "text": "Bread rises in a warm oven."}])
    _failing_folder_fsync(monkeypatch, errno.EIO, index)
    result = cli("encode", corpus, more, "-o", index, "--quiet")
    assert result.exit_code == WRITE_ERROR, result.output
    assert "manifest.json: the new index was committed (it is in place)" in result.stderr
    assert "may not survive a power loss; nothing to redo" in result.stderr
    monkeypatch.undo()
    _assert_sound(cli, index)
    rerun = cli("encode", corpus, more, "-o", index)
    assert rerun.exit_code == 0 and "added 0, updated 0, deleted 0, unchanged 7" in rerun.output


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EIO])
def test_a_first_encode_into_an_existing_folder(cli, corpus, tmp_path, monkeypatch, code):
    index = tmp_path / "index"
    index.mkdir()  # a mount point, say
    _failing_folder_fsync(monkeypatch, code, index)
    result = cli("encode", corpus, "-o", index, "--quiet")
    assert result.exit_code == (0 if code == errno.EINVAL else WRITE_ERROR), result.output
    monkeypatch.undo()
    _assert_sound(cli, index)


def test_no_folder_fsync_anywhere_is_no_error(cli, corpus, tmp_path, monkeypatch):
    _failing_folder_fsync(monkeypatch, errno.EINVAL)
    index = tmp_path / "index"
    assert cli("encode", corpus, "-o", index, "--quiet").exit_code == 0
    assert cli("export", index, "--to", tmp_path / "exp", "--format", "parquet", "--quiet").exit_code == 0
    assert cli("score", "--query", "cat", index, "--top-k", "1", "-o", tmp_path / "r.jsonl").exit_code == 0
    monkeypatch.undo()
    _assert_sound(cli, index)


def test_compress_drop_vectors_commit_stands(cli, corpus, tmp_path, monkeypatch):
    index = tmp_path / "index"
    assert cli("encode", corpus, "-o", index, "--nbits", "2", "--quiet").exit_code == 0
    _failing_folder_fsync(monkeypatch, errno.EIO, index)
    result = cli("compress", index, "--drop-vectors", "--quiet")
    assert result.exit_code == WRITE_ERROR and "the new index was committed (it is in place)" in result.stderr
    monkeypatch.undo()
    assert json.loads((index / "manifest.json").read_text())["search"]["vectors"] == "dropped"
    _assert_sound(cli, index)


def test_export_and_score_output_say_what_was_published(cli, corpus, tmp_path, monkeypatch):
    index = tmp_path / "index"
    assert cli("encode", corpus, "-o", index, "--quiet").exit_code == 0
    _failing_folder_fsync(monkeypatch, errno.EIO)  # every folder: the staging folder's, before the rename
    result = cli("export", index, "--to", tmp_path / "new", "--format", "parquet", "--quiet")
    assert result.exit_code == WRITE_ERROR and "cannot write (Input/output error)" in result.stderr, result.output
    assert not (tmp_path / "new").exists()
    into = tmp_path / "existing"
    into.mkdir()
    _failing_folder_fsync(monkeypatch, errno.EIO, into)
    result = cli("export", index, "--to", into, "--format", "parquet", "--quiet")
    assert result.exit_code == WRITE_ERROR and "the export was published (it is in place)" in result.stderr
    assert [path.name for path in into.iterdir()] == ["part-000000.parquet"]
    results = tmp_path / "out" / "r.jsonl"
    results.parent.mkdir()
    results.write_text("old results\n")
    _failing_folder_fsync(monkeypatch, errno.EIO, results.parent)
    result = cli("score", "--query", "cat", index, "--top-k", "1", "-o", results, "--quiet")
    assert result.exit_code == WRITE_ERROR and "the new results were written (it is in place)" in result.stderr
    assert json.loads(results.read_text())["rank"] == 1
