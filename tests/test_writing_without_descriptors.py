"""Output files written when the process has no descriptor left (EMFILE: ``ulimit -n`` reached): the limit's error
(exit 8, naming the limit and how to raise it), as for the inputs (``test_reading_without_descriptors.py``), never
"write error: ... (Too many open files)", which named neither; a library caller gets it too, not a bare OSError."""

from __future__ import annotations

import re
import tempfile

import pytest

from helpers import manifest, write_parquet
from plaid_support import corpus_rows
from test_reading_without_descriptors import LIMITED, no_descriptor_left
from tokembed.errors import OpenFilesLimitError


def starved(function):
    """``function`` run with every descriptor taken."""

    def run(*args, **kwargs):
        with no_descriptor_left():
            return function(*args, **kwargs)

    return run


def assert_names_the_limit(result) -> None:
    assert result.exit_code == 8, result.output
    assert "tokembed: too many open files: " in result.stderr and "ulimit -n" in result.stderr, result.stderr
    assert "write error" not in result.stderr


@pytest.fixture
def index(cli, checkpoint_store, tmp_path):
    corpus = write_parquet(tmp_path / "corpus.parquet", corpus_rows(24))
    folder = tmp_path / "index"
    assert cli("encode", corpus, "-o", folder, "--model", checkpoint_store("pylate_bert"), "-q").exit_code == 0
    return folder


def test_a_structure_file_written_with_no_descriptor_left_is_the_limit(tmp_path):
    """safetensors keeps no errno ("Error while serializing: ... Too many open files (os error 24)")."""
    import numpy as np

    from tokembed.search.plaid.files import write_tensors

    write_tensors(tmp_path / "first.safetensors", {"a": np.ones(3, np.float32)})  # every lazy import done first
    with pytest.raises(OpenFilesLimitError, match=r"codec\.safetensors: " + LIMITED), no_descriptor_left():
        write_tensors(tmp_path / "codec.safetensors", {"a": np.ones(3, np.float32)})


def test_compress_with_no_descriptor_left_names_the_limit_and_leaves_the_index(cli, index, monkeypatch):
    import safetensors.numpy

    committed = manifest(index)
    monkeypatch.setattr(safetensors.numpy, "save_file", starved(safetensors.numpy.save_file))
    assert_names_the_limit(cli("compress", index, "--centroids", 4, "-q"))
    assert manifest(index) == committed


def test_export_with_no_descriptor_left_names_the_limit(cli, index, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setattr(pq, "ParquetWriter", starved(pq.ParquetWriter))
    result = cli("export", index, "--to", tmp_path / "out", "--format", "parquet", "-q")
    assert_names_the_limit(result)
    assert "part-000000.parquet: cannot be opened" in result.stderr and not (tmp_path / "out").exists()


def test_score_output_with_no_descriptor_left_names_the_limit(cli, index, tmp_path, monkeypatch):
    from cli import score

    monkeypatch.setattr(score, "write_results", starved(score.write_results))
    result = cli("score", "--query", "alpha beta", index, "--exact", "-k", 2, "-o", tmp_path / "hits.jsonl")
    assert_names_the_limit(result)
    assert "hits.jsonl: cannot be opened" in result.stderr and not (tmp_path / "hits.jsonl").exists()


def test_every_write_error_out_of_descriptors_is_the_limit_and_no_other_is(tmp_path):
    """``atomic.write_error``, which every write maps its failure through: an OSError's errno, or Rust's
    ``(os error N)`` in a library's own error (safetensors, LanceDB); a full disk stays the write error it was."""
    import errno
    import os

    from tokembed.errors import IndexWriteError
    from tokembed.index.atomic import write_error

    out = tmp_path / "out"
    limits = {OSError(errno.EMFILE, os.strerror(errno.EMFILE)): LIMITED,
              RuntimeError("lance error: LanceError(IO): Too many open files (os error 24), src/io.rs:12"): LIMITED,
              OSError(errno.ENFILE, os.strerror(errno.ENFILE)): r"cannot be opened: the system's table of open files is full \(ENFILE\)"}
    for exc, reason in limits.items():
        error = write_error(out, exc, f"--to {out}: cannot write the LanceDB table ({exc})")
        assert isinstance(error, OpenFilesLimitError) and re.match(f"{re.escape(str(out))}: {reason}", str(error)), error
    full = write_error(out, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), f"--to {out}: cannot write (disk full)")
    assert isinstance(full, IndexWriteError) and str(full) == f"--to {out}: cannot write (disk full)"
    assert str(write_error(out, OSError(errno.EROFS, "Read-only file system"))) == f"{out}: cannot write (Read-only file system)"


@pytest.mark.parametrize("action", ["hash a video cell's file", "copy a PDF cell", "start a render worker"])
def test_a_library_caller_gets_the_limit_not_an_os_error(action, tmp_path, monkeypatch):
    """A bare OSError ("Too many open files") reached a library caller; the CLI alone named the limit."""
    from tokembed.index.atomic import sha256_file
    from tokembed.sources import pdf_workers

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / "a.mp4").write_bytes(b"not read")
    run = {"hash a video cell's file": lambda: sha256_file(tmp_path / "a.mp4"),
           "copy a PDF cell": lambda: pdf_workers._temporary_copy(b"%PDF- bytes").release(),
           "start a render worker": lambda: pdf_workers._Worker().stop()}[action]
    run()  # every lazy import done first
    with pytest.raises(OpenFilesLimitError, match=LIMITED), no_descriptor_left():
        run()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.mp4"]
