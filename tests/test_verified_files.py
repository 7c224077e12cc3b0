"""Code files are hashed once per change, not on every open (``tokembed/index/verified.py``)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from helpers import manifest, write_parquet
from plaid_support import corpus_rows
from test_score import random_docs, write_index
from tokembed.index import reader
from tokembed.index.reader import open_index
from tokembed.search import search_vectors
from tokembed.errors import IndexCorruptError
from tokembed.search.plaid import files, open_searchable


@pytest.fixture
def hashed(monkeypatch):
    """The files each open hashes, by name."""
    names: list[str] = []
    real = files.sha256_file

    def counting(path_or_fd):
        names.append(_file_name(path_or_fd))
        return real(path_or_fd)

    monkeypatch.setattr(files, "sha256_file", counting)
    return names


def _copy(compressed, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(compressed[0], folder)
    structure = manifest(folder)["search"]
    return folder, [structure["codec"]["file"], *(entry["file"] for entry in structure["shards"])]


def test_a_file_that_matched_is_not_hashed_again_until_it_changes(compressed, tmp_path, hashed):
    folder, names = _copy(compressed, tmp_path)
    open_searchable(folder)
    assert sorted(hashed) == sorted(name.split("/")[-1] for name in names)
    hashed.clear()
    open_searchable(folder)
    assert hashed == []
    path = folder / names[2]
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes, and the modification time set back: the change time still differs
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(IndexCorruptError, match="sha256"):
        open_searchable(folder)
    assert hashed == [path.name]


def test_a_copy_of_the_index_is_hashed_afresh(compressed, tmp_path, hashed):
    folder, names = _copy(compressed, tmp_path)
    open_searchable(folder)
    hashed.clear()
    other = tmp_path / "copy"
    shutil.copytree(folder, other)
    open_searchable(other)
    assert len(hashed) == len(names)


def test_without_a_writable_record_every_open_hashes_and_says_so_once(compressed, tmp_path, hashed, monkeypatch,
                                                                     caplog):
    folder, names = _copy(compressed, tmp_path)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("TOKEMBED_CACHE", str(blocker))
    for _ in range(2):
        hashed.clear()
        open_searchable(folder)
        assert len(hashed) == len(names)
    warned = [record.getMessage() for record in caplog.records if "every run hashes them again" in record.getMessage()]
    assert len(warned) == 1 and "TOKEMBED_CACHE" in warned[0]


def test_info_verify_hashes_every_structure_file_and_refuses_an_altered_one(tmp_path, hashed, cli, checkpoint):
    folder = tmp_path / "index"
    rows = write_parquet(tmp_path / "corpus.parquet", corpus_rows(30))
    assert cli("encode", rows, "-o", folder, "--nbits", 2, "--model", checkpoint("pylate_bert"), "--shard-rows", 10, "-q").exit_code == 0
    structure = manifest(folder)["search"]
    names = [structure["codec"]["file"], *(entry["file"] for entry in structure["shards"])]
    open_searchable(folder)  # recorded
    hashed.clear()
    assert cli("info", folder, "--verify").exit_code == 0
    assert sorted(hashed) == sorted(name.split("/")[-1] for name in names)  # the record does not spare them
    path = folder / names[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    result = cli("info", folder, "--verify")
    assert result.exit_code == 6 and "sha256" in result.output


def test_the_scan_hashes_a_shard_once_until_it_changes(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    docs = random_docs(rng, rng.integers(3, 20, size=60))
    folder = write_index(tmp_path / "index", docs, shard_rows=20)
    names: list[str] = []
    real = reader._sha256_of
    monkeypatch.setattr(reader, "_sha256_of", lambda mapped: names.append(_file_name(mapped.fileno())) or real(mapped))
    queries = [docs[5][:3].astype(np.float32)]
    first = search_vectors(folder, queries, top_k=5, exact=True)
    assert names == []  # the writer recorded the sha256 of each shard it wrote
    monkeypatch.setenv("TOKEMBED_CACHE", str(tmp_path / "another-user"))  # no record yet
    assert search_vectors(folder, queries, top_k=5, exact=True) == first
    assert len(names) == 3
    names.clear()
    assert search_vectors(folder, queries, top_k=5, exact=True) == first
    assert names == []
    shard = folder / manifest(folder)["shards"][2]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, different bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="sha256"):
        search_vectors(folder, queries, top_k=5, exact=True)
    assert names == [shard.name]
    names.clear()
    with pytest.raises(IndexCorruptError, match="sha256"):
        open_index(folder).verify(checksums=True)  # info --verify: every shard, the record not consulted
    assert len(names) == 3


def _file_name(path_or_fd) -> str:
    """The name of a file hashed by path or by an open descriptor (Linux: what the descriptor links to)."""
    return os.path.basename(os.readlink(f"/proc/self/fd/{path_or_fd}")) if isinstance(path_or_fd, int) else path_or_fd.name


def test_the_record_is_parsed_again_only_when_it_changed(tmp_path, monkeypatch):
    """A cron run checks a structure's kept code files one at a time, each through a new VerifiedFiles: parsing and
    unsealing the whole record for each was quadratic in the shards (10 ms a read of 4,000 files)."""
    from tokembed.index import verified
    from tokembed.index.atomic import sha256_file

    monkeypatch.setenv("TOKEMBED_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "index"
    folder.mkdir()
    files = []
    for number in range(3):
        (folder / f"f{number}").write_bytes(bytes([number]) * 100)
        files.append((f"f{number}", verified.stat_key(folder / f"f{number}"), sha256_file(folder / f"f{number}")))
    verified.VerifiedFiles(folder).remember(files[:2])
    reads = []
    read_sealed = verified.read_sealed
    monkeypatch.setattr(verified, "read_sealed", lambda path: (reads.append(path), read_sealed(path))[1])
    for _ in range(5):
        assert verified.VerifiedFiles(folder).known(*files[0])
    assert reads == []  # the record this process wrote is known without reading it
    record = verified.VerifiedFiles(folder)
    record.remember(files[2:])
    record.flush()
    assert verified.VerifiedFiles(folder).known(*files[2]) and verified.VerifiedFiles(folder).known(*files[1])
    assert reads == []
    copy = record.path.with_suffix(".copy")
    copy.write_bytes(record.path.read_bytes())
    os.replace(copy, record.path)  # as another process replaces it
    for _ in range(5):
        assert verified.VerifiedFiles(folder).known(*files[2])
    assert len(reads) == 1


@pytest.fixture
def record_writes(monkeypatch, tmp_path):
    """How many times the record of hashed files is written (the clock never makes a write due: the count is the
    calls' alone)."""
    from tokembed.index import verified

    monkeypatch.setenv("TOKEMBED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(verified, "_WRITE_EVERY", 1e9, raising=False)
    writes: list[int] = []
    real = verified.sealed_bytes
    monkeypatch.setattr(verified, "sealed_bytes", lambda entries: writes.append(len(entries)) or real(entries))
    return writes


def _recorded(folder) -> dict:
    from tokembed.index.sealed import read_sealed
    from tokembed.index.verified import VerifiedFiles

    return read_sealed(VerifiedFiles(folder).path)


def test_a_run_over_many_shards_writes_the_record_a_few_times_not_once_per_shard(tmp_path, monkeypatch, record_writes):
    """The writer and each shard's check rewrote the whole record per file: a run over N shards read, statted and
    wrote N entries N times (135 s of a 2,000-shard cron run). Now it is written when the run commits or ends."""
    from tokembed.search.plaid.compress import compress_index

    shards = 24
    docs = random_docs(np.random.default_rng(5), [4] * (shards * 2))
    folder = write_index(tmp_path / "index", docs, shard_rows=2, batch_rows=2)
    names = [shard["file"] for shard in manifest(folder)["shards"]]
    assert len(names) == shards
    assert len(record_writes) <= 2  # the first shard's, then the commit's
    assert sorted(_recorded(folder)) == sorted(names)  # on disk at the commit: the next process hashes none

    monkeypatch.setenv("TOKEMBED_CACHE", str(tmp_path / "another-user"))  # every shard hashed, by score --exact
    record_writes.clear()
    search_vectors(folder, [docs[3]], top_k=3, exact=True)
    assert len(record_writes) <= 2 and sorted(_recorded(folder)) == sorted(names)

    monkeypatch.setenv("TOKEMBED_CACHE", str(tmp_path / "a-third-user"))  # by compress, to train and code
    record_writes.clear()
    compress_index(folder, nbits=2, centroids=8)
    assert len(record_writes) <= 2 and set(names) <= set(_recorded(folder))


def test_what_a_run_matched_after_its_last_write_is_written_at_its_exit(tmp_path, monkeypatch):
    """Writes are spaced seconds apart: the entries after the last one are written as the process exits."""
    import subprocess
    import sys
    import textwrap

    folder = tmp_path / "index"
    folder.mkdir()
    for number in range(5):
        (folder / f"f{number}").write_bytes(bytes([number]))
    script = textwrap.dedent(f"""
        from pathlib import Path
        from tokembed.index.verified import VerifiedFiles
        folder = Path({str(folder)!r})
        for number in range(5):
            VerifiedFiles(folder).sha256_of(f"f{{number}}")
    """)
    monkeypatch.setenv("TOKEMBED_CACHE", str(tmp_path / "cache"))
    subprocess.run([sys.executable, "-c", script], check=True, env=os.environ)
    assert sorted(_recorded(folder)) == [f"f{number}" for number in range(5)]


def test_a_record_write_on_a_full_disk_leaves_no_temp_file(tmp_path, monkeypatch):
    """The cache disk full: each run's failed write of the record left its ``.NAME.tmp-PID-TID`` file (a nightly
    cron gained two a night, never removed: the pid-named files of a shared cache are no one's to sweep)."""
    import errno
    from pathlib import Path

    from tokembed.index import verified
    from tokembed.index.atomic import sha256_file

    monkeypatch.setenv("TOKEMBED_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "index"
    folder.mkdir()
    (folder / "f0").write_bytes(b"x" * 100)
    real = Path.write_bytes

    def full_disk(self, data):
        real(self, data[:10])  # part written, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    record = verified.VerifiedFiles(folder)
    record.remember([("f0", verified.stat_key(folder / "f0"), sha256_file(folder / "f0"))])
    record.flush()  # warns that it cannot record, as before
    left = sorted(path.name for path in (tmp_path / "cache" / "verified").iterdir())
    assert left == [], left
