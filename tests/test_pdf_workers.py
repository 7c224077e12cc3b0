"""``--pdf-workers N``: PDF pages rendered by worker processes are the pages the reading thread renders (pixels,
digests, errors, order), whatever N; a worker that dies costs one page, not the run; no worker outlives its run."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import read_index, same_rows, write_parquet
from pdfs import encrypt, image_pdf, render_directly, text_pdf
from tokembed.sources import SourceOptions, open_sources
from tokembed.sources.pdf_workers import auto_render_workers

COLORS = [(250 - 9 * i, 200 + 5 * i, 150 + 7 * i) for i in range(9)]


def read_pages(paths, **options) -> list:
    items = [item for chunk in open_sources([Path(p) for p in paths], SourceOptions(modality="image", **options)) for item in chunk]
    return [(i.id, i.page, i.error, i.image_sha256, None if i.image is None else np.asarray(i.image)) for i in items]


def worker_pids() -> set[int]:
    from tokembed.sources import pdf_workers

    return {worker.process.pid for worker in pdf_workers._workers}


def test_workers_render_the_pages_the_reading_thread_renders(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    image_pdf(docs / "a.pdf", COLORS)
    text_pdf(docs / "b.pdf", ["a page of text", "", "more text"])
    encrypt(image_pdf(docs / "locked.pdf", COLORS[:2]), "secret")
    image_pdf(docs / "wide.pdf", COLORS[:2], size=(4000, 100))  # 4000x100 pt at 72 dpi: over the pixel limit below
    cells = write_parquet(tmp_path / "cells.parquet", [{"id": "r1", "pdf": (docs / "a.pdf").read_bytes()}, {"id": "r2", "pdf": None}])
    options = {"pdf_dpi": 72, "max_image_pixels": 300_000, "pdf_password": "secret", "image_chunk_rows": 4}
    inline = read_pages([docs], **options) + read_pages([cells], pdf_column="pdf", pdf_column_given=True, **options)
    assert len(inline) == 9 + 3 + 2 + 2 + 9 + 1
    assert [p[2] for p in inline if p[2]] == [
        "cannot render page 1: 4000x100 pt at 72 dpi is 400000 pixels, over the limit of 300000 (lower --pdf-dpi or raise --max-image-pixels)",
        "cannot render page 2: 4000x100 pt at 72 dpi is 400000 pixels, over the limit of 300000 (lower --pdf-dpi or raise --max-image-pixels)",
        "null PDF",
    ]
    assert np.array_equal(inline[4][4], np.asarray(render_directly(docs / "a.pdf", 5, 72)))
    for workers in (1, 2, 3):
        rendered = read_pages([docs], pdf_workers=workers, **options)
        rendered += read_pages([cells], pdf_column="pdf", pdf_column_given=True, pdf_workers=workers, **options)
        assert same_rows(rendered, inline), workers
    assert not worker_pids()  # stopped with their run
    assert not list(Path(tempfile.gettempdir()).glob("tokembed-pdf-*.pdf"))  # the cells' temporary copies


def test_a_run_stopped_early_stops_its_workers(tmp_path):
    pdf = image_pdf(tmp_path / "long.pdf", [(i * 5 % 256, 100, 150) for i in range(40)], size=(60, 80))
    chunks = open_sources([pdf], SourceOptions(modality="image", image_chunk_rows=8, pdf_workers=2))
    assert len(next(chunks)) == 8
    pids = worker_pids()
    assert len(pids) == 2
    chunks.close()
    assert not worker_pids()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_that_dies_costs_its_page_only(tmp_path, monkeypatch):
    pdf = image_pdf(tmp_path / "scan.pdf", COLORS)
    inline = read_pages([pdf], pdf_dpi=72)
    monkeypatch.setenv("TOKEMBED_TEST_KILL_AT", "render:4")  # the worker given page 4 SIGKILLs itself
    rendered = read_pages([pdf], pdf_dpi=72, pdf_workers=2)
    assert rendered[3][2] == "cannot render page 4: the render process died (killed by SIGKILL)"
    assert rendered[3][4] is None
    assert same_rows(rendered[:3] + rendered[4:], inline[:3] + inline[4:])


def test_pages_sent_to_a_worker_that_already_died_go_to_its_successor(tmp_path, monkeypatch):
    from tokembed.sources.pdf_workers import close_render_pool, rendered_pages

    pdf = image_pdf(tmp_path / "scan.pdf", COLORS[:5])
    monkeypatch.setenv("TOKEMBED_TEST_KILL_AT", "render:2")
    pages = rendered_pages(pdf, 5, 1, None, 72, 10**8)  # one worker: pages 1 and 2 are sent before page 1 is read
    try:
        first = next(pages)
        time.sleep(0.5)  # the worker dies on page 2 meanwhile: page 3 is sent into a closed pipe
        rest = list(pages)
    finally:
        close_render_pool()
    assert first[2] is None and [error for _, _, error in rest] == [
        "cannot render page 2: the render process died (killed by SIGKILL)", None, None, None,
    ]


KILLED_READER = """
import sys, time
from pathlib import Path
from tokembed.sources import SourceOptions, open_sources
from tokembed.sources import pdf_workers
chunks = open_sources([Path(sys.argv[1])], SourceOptions(modality="image", image_chunk_rows=4, pdf_workers=2))
next(chunks)
print(" ".join(str(w.process.pid) for w in pdf_workers._workers), flush=True)
time.sleep(60)
"""


def test_workers_exit_when_the_reading_process_is_killed(tmp_path):
    pdf = image_pdf(tmp_path / "long.pdf", [(i * 5 % 256, 100, 150) for i in range(40)], size=(60, 80))
    reader = subprocess.Popen([sys.executable, "-c", KILLED_READER, str(pdf)], stdout=subprocess.PIPE, text=True)
    pids = [int(pid) for pid in reader.stdout.readline().split()]
    assert len(pids) == 2
    reader.send_signal(signal.SIGKILL)
    reader.wait()
    deadline = time.monotonic() + 10
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive.discard(pid)
        time.sleep(0.05)
    assert not alive  # orphans: nothing would ever stop them


def test_a_worker_whose_reader_went_away_exits_quietly(tmp_path):
    """A reader killed or interrupted mid-PDF left each worker printing a BrokenPipeError traceback on stderr,
    which a --quiet cron run promises to keep for errors only."""
    import pickle

    pdf = image_pdf(tmp_path / "a.pdf", COLORS[:2], size=(60, 80))
    worker = subprocess.Popen([sys.executable, "-m", "tokembed.sources.pdf_workers"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    worker.stdout.close()  # the reader is gone before the answer is written
    pickle.dump((str(pdf), None, 1, 72.0, 10**8), worker.stdin)
    worker.stdin.flush()
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0 and stderr == b""


def copies_of_gone_and_live_runs(folder: Path) -> tuple[Path, Path, Path]:
    """(a copy without a lock file, one whose lock file no process holds, one held by a lock the caller takes)."""
    dead = folder / "tokembed-pdf-999999999-0123abcd.pdf"  # no lock file: its process is gone
    dead.write_bytes(b"%PDF- half a copy")
    killed = folder / "tokembed-pdf-999999998-89abcdef.pdf"  # a SIGKILLed run's: its lock file left, unlocked
    killed.write_bytes(b"%PDF- whole")
    (folder / (killed.name + ".lock")).touch()
    live = folder / "tokembed-pdf-999999999-4567abcd.pdf"  # a pid this process cannot see (another container's)
    live.write_bytes(b"%PDF- in use")
    return dead, killed, live


def test_a_killed_readers_temporary_pdf_copy_is_removed_by_the_next_run(tmp_path, monkeypatch):
    """PDF bytes from a Parquet / JSONL cell are copied to a file the workers open; a SIGKILL left it for good."""
    from tokembed.sources import pdf_workers

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, killed, live = copies_of_gone_and_live_runs(tmp_path)
    with open(tmp_path / (live.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held, as its live process holds it
        pdf_workers.remove_abandoned_copies()
        copy = pdf_workers._temporary_copy(b"%PDF- new")
    assert not dead.exists() and live.exists() and copy.path.name.startswith(f"tokembed-pdf-{os.getpid()}-")
    assert copy.path.read_bytes() == b"%PDF- new" and (copy.path.stat().st_mode & 0o777) == 0o600
    copy.release()
    assert not copy.path.exists() and sorted(os.listdir(tmp_path)) == [live.name, live.name + ".lock"]


def test_every_encode_run_removes_a_killed_runs_temporary_pdf_copy(cli, checkpoint_store, tmp_path, monkeypatch):
    """Only a run that made a copy itself (a PDF cell rendered by --pdf-workers) swept them: the next run of a
    text model, or of --pdf-workers 0, left a killed run's copy of a document in the temp folder for good."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    dead, killed, live = copies_of_gone_and_live_runs(temp)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("no PDF read here")
    with open(temp / (live.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = cli("encode", tmp_path / "docs", "-o", tmp_path / "index", "--model", checkpoint_store("pylate_bert"), "-q")
    assert result.exit_code == 0, result.output
    assert sorted(temp.glob("tokembed-pdf-*")) == [live, temp / (live.name + ".lock")]


def test_cli_index_is_the_same_with_and_without_workers(cli, tmp_path):
    from vision_checkpoints import build_colpali

    colpali = build_colpali(tmp_path / "colpali")
    docs = tmp_path / "docs"
    docs.mkdir()
    image_pdf(docs / "scan.pdf", COLORS[:5])
    indexes = []
    for workers in ("0", "2"):
        out = tmp_path / f"index-{workers}"
        result = cli("encode", docs, "--model", colpali, "-o", out, "--pdf-dpi", 72, "--pdf-workers", workers, "--store-dtype", "float32")
        assert result.exit_code == 0, result.output
        indexes.append(read_index(out))
    assert list(indexes[0]) == [f"scan.pdf#page={n}" for n in range(1, 6)]
    for key, (vectors, token_ids) in indexes[0].items():
        assert np.array_equal(vectors, indexes[1][key][0]) and np.array_equal(token_ids, indexes[1][key][1])
    bad = cli("encode", docs, "--model", colpali, "-o", tmp_path / "bad", "--pdf-workers", "-1")
    assert bad.exit_code == 2


def test_default_workers_follow_the_device():
    assert auto_render_workers("cpu", cpu_count=16) == 0
    assert auto_render_workers("cpu:2", cpu_count=16) == 0
    assert auto_render_workers("cuda:0", cpu_count=16) == 8
    assert auto_render_workers("cuda:0", cpu_count=4) == 3
    assert auto_render_workers("cuda:0", cpu_count=1) == 1


def test_page_pixels_and_hashes_are_those_of_pypdfium2s_own_render(tmp_path):
    """Pages are rendered in RGB byte order and hashed from those bytes: pixels equal pypdfium2's own BGR render
    converted by Pillow (here at an odd width: 183-byte rows), and the hash is the one earlier releases stored
    (sha256 over that image's bytes), so upgrading re-encodes no page."""
    import hashlib

    pdf = image_pdf(tmp_path / "odd.pdf", COLORS[:3], size=(61, 80))
    for workers in (0, 2):
        for page_id, number, error, digest, pixels in read_pages([pdf], pdf_dpi=72, pdf_workers=workers):
            direct = render_directly(pdf, number, 72)
            assert error is None and direct.size == (61, 80) and np.array_equal(pixels, np.asarray(direct))
            before = hashlib.sha256("pdf page 61x80 at 72 dpi\0".encode() + direct.tobytes()).hexdigest()
            assert digest == before, page_id
