"""Paths the OS refuses to look up or to read, and what every command makes of them: never a traceback.

* An index file that is there but that this user may not read (another user's index written under umask 077, a
  shard ``chmod 600``) is a read error (exit 8) naming the file and "Permission denied", never "missing" or corrupt;
  so is a model weight file (exit 4), whose reader (safetensors) calls it "No such file or directory".
* A name too long for the file system (a component over 255 bytes, a path near PATH_MAX) is an index not found
  (exit 6) to read and a write error (exit 8) to write, also once a run's clean-up meets it.
* A relative path given in a current folder that was deleted is a usage error (exit 2).

Root reads any file: as root, the commands run in a process that dropped that power (``bound_by_permissions``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import exec_after, manifest, write_jsonl
from plaid_support import corpus_rows

REPO = Path(__file__).resolve().parent.parent
USAGE, MODEL, NOT_FOUND, WRITE = 2, 4, 6, 8
_PR_CAPBSET_DROP, _CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 24, 1, 2


# CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH out of the bounding set (``helpers.exec_after``), so that the command
# exec'd as root gets neither and is bound by the permission bits as any other user
_DROP_ROOT_OVERRIDE = (f"libc = ctypes.CDLL(None, use_errno=True)\n"
                       f"for capability in ({_CAP_DAC_OVERRIDE}, {_CAP_DAC_READ_SEARCH}):\n"
                       f"    if libc.prctl({_PR_CAPBSET_DROP}, capability, 0, 0, 0) != 0: sys.exit('prctl failed')")


def _bound(argv: list) -> list:
    """``argv`` run with root's override dropped (as it is, for another user)."""
    return exec_after(_DROP_ROOT_OVERRIDE, argv) if os.geteuid() == 0 else list(map(str, argv))


@pytest.fixture
def bound_by_permissions(tmp_path):
    """Runs the CLI in a process that a ``chmod 000`` file refuses (skipped where root's override cannot be dropped)."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    tried = subprocess.run(_bound([sys.executable, "-c", f"open({str(probe)!r})"]), capture_output=True, text=True)
    if "PermissionError" not in tried.stderr:
        pytest.skip("this process cannot run a command that file permissions bind")

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run(_bound([sys.executable, "-m", "cli.main", *args]), capture_output=True, text=True,
                              cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    return run


@pytest.fixture
def compressed(tmp_path, cli, colbert_ckpt):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(30))
    index = tmp_path / "index"
    assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--quiet").exit_code == 0
    assert cli("compress", index, "--centroids", 8, "--quiet").exit_code == 0
    return index


def _listed(index: Path, which: str) -> Path:
    entries = manifest(index)
    return index / {"manifest": "manifest.json", "shard": entries["shards"][0]["file"],
                    "code file": entries["search"]["shards"][0]["file"]}[which]


@pytest.mark.parametrize("which", ["manifest", "shard", "code file"])
def test_an_index_file_this_user_may_not_read_is_a_read_error_naming_it(compressed, bound_by_permissions, which):
    """A manifest unreadable was a PermissionError traceback (exit 1) from every reader; a shard, "index corrupt: ...
    which is missing" (exit 6) although it was there; a code file, a traceback from ``info``."""
    refused = _listed(compressed, which)
    refused.chmod(0)
    result = bound_by_permissions("info", compressed)
    assert result.returncode == WRITE, result.stderr
    assert f"read error: {refused}: cannot be read (Permission denied)" in result.stderr
    assert "Traceback" not in result.stderr and "missing" not in result.stderr


def test_a_folder_this_user_may_not_search_is_a_read_error(compressed, tmp_path, bound_by_permissions):
    private = tmp_path / "private"
    private.mkdir()
    shutil.move(compressed, private / "index")
    private.chmod(0)
    try:
        result = bound_by_permissions("info", private / "index")
    finally:
        private.chmod(0o700)
    assert result.returncode == WRITE, result.stderr
    assert "cannot be read (Permission denied)" in result.stderr and "Traceback" not in result.stderr


def test_a_weight_file_this_user_may_not_read_is_named_as_such(compressed, colbert_ckpt, tmp_path, bound_by_permissions):
    """safetensors reports a file it may not open as "No such file or directory": the model error said so."""
    model = shutil.copytree(colbert_ckpt, tmp_path / "model")
    (model / "model.safetensors").chmod(0)
    result = bound_by_permissions("score", "--query", "alpha", compressed, "--model", model, "--exact")
    assert result.returncode == MODEL, result.stderr
    assert "model.safetensors: cannot read the weights (Permission denied)" in result.stderr
    assert "No such file" not in result.stderr


def test_a_name_too_long_is_not_found_to_read_and_a_write_error_to_write(compressed, cli, colbert_ckpt, tmp_path):
    """A component over 255 bytes (ENAMETOOLONG, which pathlib's exists() raises) was a traceback, exit 1."""
    long = tmp_path / ("b" * 256)
    corpus = tmp_path / "corpus.jsonl"
    runs = {("info", long): NOT_FOUND, ("score", "--query", "alpha", long): NOT_FOUND,
            ("encode", corpus, "--model", colbert_ckpt, "-o", long, "-q"): WRITE,
            ("export", compressed, "--to", long, "-f", "parquet"): WRITE,
            ("score", "--query", "alpha", compressed, "--exact", "-o", f"{long}.jsonl"): WRITE}
    results = {command: cli(*command) for command in runs}
    assert [(command[0], result.exit_code, result.stderr[-200:]) for command, result in results.items()
            if result.exit_code != runs[command] or "Traceback" in result.stderr] == []
    assert "no such index folder" in results[("info", long)].stderr
    assert not list(tmp_path.glob(".b*"))  # no staging folder or temp file left


def test_a_run_failing_on_a_path_near_path_max_keeps_its_own_error(cli, colbert_ckpt, tmp_path):
    """An index folder that can be made, whose shard's temp name is over PATH_MAX: the write error (exit 8) was
    replaced by a traceback from the clean-up, whose ``remove_unused`` (never raises) asked ``Path.is_dir()``."""
    deep = tmp_path
    while len(str(deep)) < 3700:
        deep = deep / ("c" * 250)
    deep = deep / ("y" * (3942 - len(str(deep)) - 1))
    deep.mkdir(parents=True)
    out = deep / ("x" * (4095 - len(str(deep)) - 1 - 30))
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(5))
    result = cli("encode", corpus, "--model", colbert_ckpt, "-o", out, "-q")
    assert result.exit_code == WRITE, result.output
    assert "write error" in result.stderr and "File name too long" in result.stderr
    assert not out.exists()  # the folder the failed first run made is gone


def test_a_relative_path_in_a_deleted_current_folder_is_a_usage_error(compressed, cli, tmp_path, monkeypatch):
    """``os.path.realpath`` of a relative INDEX / --to raised FileNotFoundError: a traceback, exit 1."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    for command in [("info", "index"), ("export", "index", "--to", "out", "-f", "parquet"),
                    ("export", compressed, "--to", "out", "-f", "parquet")]:
        result = cli(*command)
        assert result.exit_code == USAGE, result.output
        assert "a relative path, and the current folder was deleted" in result.stderr


def test_compress_and_encode_name_an_index_file_or_folder_this_user_may_not_read(compressed, colbert_ckpt, tmp_path,
                                                                                 bound_by_permissions):
    """compress hashed the codec file outside ``read_error`` (a PermissionError traceback, exit 1); encode listed
    ``data/`` for dead runs' temp files the same way."""
    codec = compressed / manifest(compressed)["search"]["codec"]["file"]
    codec.chmod(0)
    result = bound_by_permissions("compress", compressed, "--centroids", 8, "-q")
    codec.chmod(0o644)
    assert result.returncode == WRITE, result.stderr
    assert f"read error: {codec}: cannot be read (Permission denied)" in result.stderr
    (compressed / "data").chmod(0)
    result = bound_by_permissions("encode", tmp_path / "corpus.jsonl", "--model", colbert_ckpt, "-o", compressed, "-q")
    (compressed / "data").chmod(0o755)
    assert result.returncode == WRITE, result.stderr
    assert f"read error: {compressed / 'data'}: cannot be read (Permission denied)" in result.stderr


def test_serve_an_index_this_user_may_not_reach_or_whose_name_is_too_long(compressed, tmp_path, bound_by_permissions):
    """``ServedIndex`` asked ``Path.is_dir()``: a PermissionError (parent folder mode 0) or an OSError
    (ENAMETOOLONG) traceback, exit 1, where ``info`` gives 8 and 6."""
    private = tmp_path / "private"
    private.mkdir()
    shutil.move(compressed, private / "index")
    private.chmod(0)
    try:
        result = bound_by_permissions("serve", "--index", private / "index", "--port", 0)
    finally:
        private.chmod(0o700)
    assert result.returncode == WRITE, result.stderr
    assert f"{private / 'index'}: cannot be read (Permission denied)" in result.stderr
    result = bound_by_permissions("serve", "--index", tmp_path / ("z" * 300), "--port", 0)
    assert result.returncode == NOT_FOUND, result.stderr
    assert "no tokembed index" in result.stderr or "not a tokembed index" in result.stderr


_SERVED = """
import sys
from tokembed.serve.index_search import ServedIndex
served = ServedIndex(sys.argv[1])
for _ in sys.stdin:
    try:
        served.release_if_replaced()  # the watcher's pass: it raised, and its thread died
        generation = served.opened()
        print(sum(shard["rows"] for shard in generation.index.shards), type(generation.damaged).__name__, flush=True)
    except Exception as exc:
        print("raised", type(exc).__name__, flush=True)
"""


def test_serve_answers_from_the_held_generation_while_a_deploy_is_not_yet_readable(compressed, tmp_path, cli,
                                                                                  colbert_ckpt):
    """``cp -a`` makes the folder and files unreadable to others until it sets their modes last: the folder raised
    PermissionError (a 500, and the watcher thread died); a code file replaced the held generation with one whose
    structure was "unreadable", kept until the manifest changed again."""
    new = tmp_path / "new"
    corpus = write_jsonl(tmp_path / "new.jsonl", corpus_rows(20))
    assert cli("encode", corpus, "--model", colbert_ckpt, "-o", new, "--quiet").exit_code == 0
    assert cli("compress", new, "--centroids", 8, "--quiet").exit_code == 0
    child = subprocess.Popen(_bound([sys.executable, "-c", _SERVED, compressed]), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def answer() -> str:
        child.stdin.write("\n")
        child.stdin.flush()
        return child.stdout.readline().strip()

    try:
        assert answer() == "30 NoneType"
        compressed.rename(tmp_path / "index.old")
        shutil.copytree(new, compressed)
        compressed.chmod(0)
        assert answer() == "30 NoneType"
        compressed.chmod(0o755)
        code = compressed / manifest(new)["search"]["shards"][0]["file"]
        code.chmod(0)
        assert answer() == "30 NoneType"
        code.chmod(0o644)
        assert answer() == "20 NoneType"
    finally:
        compressed.chmod(0o755)
        child.stdin.close()
        child.wait(timeout=60)
