"""``tokembed score --output``: never a file the run reads, and never a part of the results.

* An ``--output`` inside the index folder (its manifest, a shard, a new name) or naming the query file, directly or
  through a symlink, is exit 2 before anything is written: the index and the queries stay as they were.
* The results are written under a temp name beside ``--output`` and renamed over it once complete: a write that
  fails (here a file size limit, as a full disk) is exit 8, leaves the previous results as they were and no temp file.
  A killed run's temp file is removed by the next run, a live one's (its lock held) never, whatever its pid.
* What cannot be renamed over (a FIFO) is written directly; a symlink to a file keeps pointing at it.
* An ``--output`` that is a folder (exit 2) or whose folder is missing (exit 8) is refused before the search.
* A path naming a descriptor the process has open (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``) is that
  descriptor, written where it stands (``>>`` appends), never the file behind it replaced.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading

import pytest

from helpers import exec_after
from test_score_cli import demo_index  # noqa: F401 (a fixture)


def _contents(folder) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("target", ["manifest.json", "data/part-000000.arrow", "results.jsonl", "link", "queries"])
def test_an_output_inside_the_index_or_onto_the_queries_exits_2_and_writes_nothing(cli, demo_index, tmp_path, target):
    """--output IDX/manifest.json replaced the manifest with a JSONL line (exit 0, the index lost)."""
    index, queries = tmp_path / "index", tmp_path / "q.txt"  # copies: a regression must not wreck the shared index
    shutil.copytree(demo_index[0], index)
    shutil.copy(demo_index[1], queries)
    output = {"queries": queries, "link": tmp_path / "link.json"}.get(target, index / target)
    if target == "link":
        output.symlink_to(index / "manifest.json")
    index_before, queries_before = _contents(index), queries.read_bytes()
    result = cli("score", queries, index, "--output", output, "-k", 2)
    assert result.exit_code == 2, result.output
    says = "is the query file" if target == "queries" else "inside the index folder"
    assert says in result.stderr and str(output) in result.stderr and result.stdout == ""
    assert _contents(index) == index_before and queries.read_bytes() == queries_before


def _score_under_a_file_size_limit(demo_index, output, limit: int) -> subprocess.CompletedProcess:
    """score in a process whose files cannot grow past ``limit`` bytes: its write fails (EFBIG) as on a full disk."""
    # SIGXFSZ ignored: a failed write, not a killed process
    limit_file_size = (f"signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                       f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))")
    index, queries = demo_index
    return subprocess.run(
        exec_after(limit_file_size, [sys.executable, "-m", "cli.main", "score", queries, index, "-k", "8", "-o", output,
                                     "-q"]),
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )


def test_a_failed_write_keeps_the_previous_results_and_leaves_no_part_file(demo_index, tmp_path):
    """Opened with "w", the previous results were gone at once and a full disk left a file cut mid-line."""
    output = tmp_path / "results.jsonl"
    output.write_text('{"previous": "results"}\n')
    result = _score_under_a_file_size_limit(demo_index, output, limit=1000)  # 24 result lines are ~2,500 bytes
    assert result.returncode == 8, result.stderr
    assert f"{output}: cannot write the results" in result.stderr and "Traceback" not in result.stderr
    assert output.read_text() == '{"previous": "results"}\n'
    assert os.listdir(tmp_path) == ["results.jsonl"]  # no temp file left beside it


def test_a_live_runs_temp_file_beside_the_output_is_kept_though_its_pid_is_not_visible_here(cli, demo_index, tmp_path):
    """Two runs in containers sharing a volume, writing one results file: the temp file of the run whose pid this
    PID namespace does not have was removed at start-up (its write then failed). Its held lock keeps it now; a
    killed run's, whose lock is free, is removed."""
    output = tmp_path / "run.jsonl"
    live, dead = tmp_path / ".run.jsonl.tmp-999999999-0123abcd", tmp_path / ".run.jsonl.tmp-999999999-4567abcd"
    for temp in (live, dead):
        temp.write_text("half\n")
        (tmp_path / (temp.name + ".lock")).touch()
    with open(tmp_path / (live.name + ".lock"), "r+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held, as its live process holds it
        result = cli("score", demo_index[1], demo_index[0], "-o", output, "-k", 2, "-q")
    assert result.exit_code == 0, result.output
    assert live.read_text() == "half\n" and output.read_text().count("\n") > 0
    assert sorted(os.listdir(tmp_path)) == [live.name, live.name + ".lock", "run.jsonl"]


def test_an_output_name_of_255_bytes_is_written(cli, demo_index, tmp_path):
    """``.NAME.tmp-PID`` of a long NAME exceeded 255 bytes: exit 8 "File name too long" for a legal name."""
    output = tmp_path / ("r" * 249 + ".jsonl")
    result = cli("score", demo_index[1], demo_index[0], "-o", output, "-k", 2, "-q")
    assert result.exit_code == 0, result.output
    assert output.read_text().count("\n") > 0 and os.listdir(tmp_path) == [output.name]


@pytest.mark.parametrize("target", ["missing folder", "a folder"])
def test_an_output_that_cannot_be_written_is_refused_before_the_search(cli, demo_index, tmp_path, monkeypatch, target):
    """A missing folder (exit 8) or a folder as --output (exit 2) was found after the model load, the queries'
    encoding and the whole search; now before any of them, with the same message, and nothing left behind."""
    import tokembed.search

    def no_search(*args, **kwargs):
        raise AssertionError("searched before --output was checked")

    monkeypatch.setattr(tokembed.search, "search", no_search)
    index, queries = demo_index
    output = tmp_path / "no" / "such" / "run.jsonl" if target == "missing folder" else tmp_path
    result = cli("score", queries, index, "-o", output)
    code, says = (8, f"--output {output}: cannot write (No such file or directory)") if target == "missing folder" else (
        2, f"--output {output}: is a folder; name a file")
    assert result.exit_code == code and says in result.stderr, result.output
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    good = tmp_path / "run.jsonl"
    assert cli("score", queries, index, "-o", good, "-q").exit_code == 0
    assert os.listdir(tmp_path) == ["run.jsonl"]  # the check's temp file is gone


def test_a_fifo_is_written_directly_and_a_symlink_keeps_its_target(cli, demo_index, tmp_path):
    index, queries = demo_index
    fifo, received = tmp_path / "fifo", []
    os.mkfifo(fifo)
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    assert cli("score", queries, index, "-o", fifo, "-k", 1).exit_code == 0
    reader.join(timeout=30)
    assert fifo.is_fifo() and len(received[0].splitlines()) == 3  # one line per non-blank query

    results = tmp_path / "kept" / "results.jsonl"
    results.parent.mkdir()
    results.write_text("old\n")
    results.chmod(0o600)
    link = tmp_path / "link.jsonl"
    link.symlink_to(results)
    assert cli("score", queries, index, "-o", link, "-k", 1).exit_code == 0
    assert link.is_symlink() and link.resolve() == results and len(results.read_text().splitlines()) == 3
    assert results.stat().st_mode & 0o777 == 0o600 and os.listdir(results.parent) == ["results.jsonl"]


def test_an_output_of_dash_is_standard_output(cli, demo_index, tmp_path, monkeypatch):
    """-o - wrote a file named '-' in the current folder."""
    monkeypatch.chdir(tmp_path)
    result = cli("score", demo_index[1], demo_index[0], "--output", "-", "-k", 1)
    assert result.exit_code == 0 and '"rank": 1' in result.stdout
    assert not (tmp_path / "-").exists()


def test_dev_stdout_appended_to_by_the_shell_keeps_the_earlier_lines(demo_index, tmp_path):
    """``-o /dev/stdout >> log`` (a cron line) left the log holding the results alone: /dev/stdout resolved to the
    log, which was replaced. Through a symlink to /dev/stdout too."""
    index, queries = demo_index
    log, link = tmp_path / "log.txt", tmp_path / "out.jsonl"
    log.write_text("previous line\n")
    link.symlink_to("/dev/stdout")
    score = [sys.executable, "-m", "cli.main", "score", str(queries), str(index), "-k", "1", "-q", "-o"]
    for output in ("/dev/stdout", str(link)):
        with open(log, "a") as appended:
            result = subprocess.run(score + [output], stdout=appended, stderr=subprocess.PIPE, text=True, timeout=300,
                                    env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    assert lines[0] == "previous line" and len(lines) == 1 + 2 * 3  # one line per non-blank query, twice
    assert link.is_symlink() and sorted(os.listdir(tmp_path)) == ["log.txt", "out.jsonl"]


def test_a_descriptor_path_is_written_where_the_descriptor_stands(cli, demo_index, tmp_path):
    """/proc/self/fd/N, /proc/PID/fd/N and /dev/fd/N of a file open for appending: appended to, not replaced."""
    index, queries = demo_index
    log = tmp_path / "log.txt"
    log.write_text("previous line\n")
    with open(log, "a") as appended:
        fd = appended.fileno()
        for output in (f"/proc/self/fd/{fd}", f"/proc/{os.getpid()}/fd/{fd}", f"/dev/fd/{fd}"):
            result = cli("score", queries, index, "-k", 1, "-q", "-o", output)
            assert result.exit_code == 0 and result.stdout == "", result.output
    lines = log.read_text().splitlines()
    assert lines[0] == "previous line" and len(lines) == 1 + 3 * 3 and os.listdir(tmp_path) == ["log.txt"]


def test_a_descriptor_not_open_or_open_for_reading_is_refused_before_the_search(cli, demo_index, tmp_path, monkeypatch):
    import tokembed.search

    def no_search(*args, **kwargs):
        raise AssertionError("searched before --output was checked")

    monkeypatch.setattr(tokembed.search, "search", no_search)
    index, queries = demo_index
    unused = next(fd for fd in range(100, 1000) if not _is_open(fd))
    result = cli("score", queries, index, "-o", f"/dev/fd/{unused}")
    assert result.exit_code == 8, result.output
    assert f"--output /dev/fd/{unused}: cannot write (descriptor {unused} is not open)" in result.stderr
    kept = tmp_path / "kept.txt"
    kept.write_text("kept\n")
    with open(kept) as read_only:
        result = cli("score", queries, index, "-o", f"/proc/self/fd/{read_only.fileno()}")
    assert result.exit_code == 8 and "is open for reading only" in result.stderr, result.output
    assert kept.read_text() == "kept\n" and os.listdir(tmp_path) == ["kept.txt"]


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return False
    return True


def _score(demo_index, output: str, stdout, cwd=None) -> subprocess.CompletedProcess:
    index, queries = demo_index
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "score", str(queries), str(index), "-k", "1", "-q"]
        + ([] if output is None else ["-o", output]),
        stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300, cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.slow  # subprocesses per spelling; plain --output to a file runs by default
def test_every_spelling_of_dev_stdout_appends_to_the_log(demo_index, tmp_path):
    """A leading //, a relative path and a linked folder were no descriptor path: the log behind stdout was
    replaced by the results alone."""
    (tmp_path / "fds").symlink_to("/proc/self/fd")
    (tmp_path / "devlink").symlink_to("/dev")
    log = tmp_path / "log.txt"
    log.write_text("previous line\n")
    spellings = ["//dev/fd/1", "//proc/self/fd/1", os.path.relpath("/dev/fd/1", tmp_path), "fds/1", "devlink/fd/1"]
    for output in spellings:
        with open(log, "a") as appended:
            result = _score(demo_index, output, appended, cwd=tmp_path)
        assert result.returncode == 0, (output, result.stderr)
    lines = log.read_text().splitlines()
    assert lines[0] == "previous line" and len(lines) == 1 + 3 * len(spellings)


@pytest.mark.parametrize("output", [None, "-", "/dev/stdout"])
def test_stdout_appended_to_the_manifest_or_the_query_file_exits_2(demo_index, tmp_path, output):
    """``-o /dev/stdout >> INDEX/manifest.json`` appended the results to the manifest (the index unreadable, exit 6
    after): the file behind the descriptor is judged as an --output is, standard output too."""
    index, queries = tmp_path / "index", tmp_path / "q.txt"
    shutil.copytree(demo_index[0], index)
    shutil.copy(demo_index[1], queries)
    before = _contents(index)
    with open(index / "manifest.json", "a") as appended:
        result = _score((index, queries), output, appended)
    assert result.returncode == 2 and "inside the index folder" in result.stderr, result.stderr
    assert _contents(index) == before
    with open(queries, "a") as appended:
        result = _score((index, queries), output, appended)
    assert result.returncode == 2 and "is the query file" in result.stderr, result.stderr
    assert queries.read_bytes() == demo_index[1].read_bytes()


def test_stdout_to_a_file_of_the_shells_beside_the_manifest_is_written_and_a_shard_is_refused(demo_index, tmp_path):
    """``> INDEX/results.txt`` was created by the shell before the run: the results go there as they always did
    (only the manifest and the index's own folders are guarded through a descriptor); a shard is refused."""
    index, queries = tmp_path / "index", tmp_path / "q.txt"
    shutil.copytree(demo_index[0], index)
    shutil.copy(demo_index[1], queries)
    with open(index / "results.txt", "w") as beside:
        result = _score((index, queries), None, beside)
    assert result.returncode == 0, result.stderr
    written = (index / "results.txt").read_text()
    assert written and written == _score(demo_index, None, subprocess.PIPE).stdout
    shard = next((index / "data").iterdir())
    before = shard.read_bytes()
    with open(shard, "a") as appended:
        result = _score((index, queries), None, appended)
    assert result.returncode == 2 and "inside the index folder" in result.stderr, result.stderr
    assert shard.read_bytes() == before


@pytest.mark.parametrize("output", ["-", "/dev/stdout"])
def test_a_reader_that_closed_the_pipe_ends_dev_stdout_quietly(demo_index, output):
    """``-o /dev/stdout | head -1`` was exit 8 "Broken pipe" where ``-o -`` is exit 0 (README's exit codes)."""
    reader, writer = os.pipe()
    os.close(reader)  # a reader gone before the first line
    with os.fdopen(writer, "w") as closed:
        result = _score(demo_index, output, closed)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_a_path_that_turned_into_a_pipe_is_never_renamed_over(cli, demo_index, tmp_path, monkeypatch):
    """A path judged a file that is something else when the results are renamed over it (a race; /dev/null was
    found replaced by a file on a shared host): exit 8, the pipe (here standing in for /dev/null) left as it was."""
    from cli import _output_file

    fifo, link = tmp_path / "fifo", tmp_path / "out.jsonl"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    monkeypatch.setattr(_output_file, "_written_in_place", lambda output: False)
    result = cli("score", demo_index[1], demo_index[0], "-o", link, "-k", 1, "-q")
    assert result.exit_code == 8 and "not a regular file (a named pipe)" in result.stderr, result.output
    assert fifo.is_fifo() and link.is_symlink() and sorted(os.listdir(tmp_path)) == ["fifo", "out.jsonl"]
