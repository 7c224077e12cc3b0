"""Input files opened when the process has no descriptor left (EMFILE: ``ulimit -n`` reached): the limit's error
(exit 8, naming the limit), never a bad row or a bad file. An incremental run with ``--on-error skip`` under a low
limit made every PDF page a bad row and committed an index with all of them deleted, exit 0."""

from __future__ import annotations

import errno
import os
import pickle
import resource
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from helpers import manifest, write_jsonl, write_parquet
from pdfs import text_pdf
from tokembed.errors import OpenFilesLimitError
from tokembed.sources import SourceOptions, open_sources
from tokembed.sources.files import FolderWalks

LIMITED = r"cannot be opened: this process may hold \d+ open files \(ulimit -n"


@contextmanager
def no_descriptor_left():
    """Every descriptor up to a lowered soft limit taken; the limit and the descriptors given back after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 32, hard))
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def read(inputs: list[Path], **options) -> list:
    return [item for chunk in open_sources(inputs, SourceOptions(**options)) for item in chunk]


def write_video(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")),
                       *stream.encode()]:
            container.mux(packet)
    return path


def folder_of(tmp_path: Path, kind: str) -> tuple[Path, dict]:
    """(an input holding one file of ``kind``, the options to read it with)."""
    from PIL import Image

    folder = tmp_path / kind
    folder.mkdir()
    if kind in ("pdf text", "pdf image"):
        text_pdf(folder / "a.pdf", ["page one", "page two"])
        return folder, {"modality": kind.split()[1]}
    if kind == "pdf file":
        return text_pdf(folder / "a.pdf", ["page one"]), {}
    if kind == "text":
        (folder / "a.txt").write_text("some text")
        return folder, {}
    if kind == "image":
        Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "a.png")
        return folder, {"modality": "image"}
    if kind == "video":
        write_video(folder / "a.mp4")
        return folder, {"modality": "image"}
    if kind == "pdf cell":
        text_pdf(folder / "a.pdf", ["page one"])
        return write_parquet(tmp_path / "cells.parquet", [{"id": "r", "pdf": "pdf cell/a.pdf"}]), {
            "pdf_column": "pdf", "pdf_column_given": True}
    if kind == "image cell":
        Image.new("RGB", (8, 8)).save(folder / "a.png")
        return write_jsonl(tmp_path / "rows.jsonl", [{"id": "r", "image": "image cell/a.png"}]), {"modality": "image"}
    return write_parquet(tmp_path / "rows.parquet", [{"id": "r", "text": "some text"}]), {}


KINDS = ["pdf text", "pdf image", "pdf file", "text", "image", "video", "pdf cell", "image cell", "parquet"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_reader_out_of_descriptors_raises_the_limit_not_a_bad_row(kind, tmp_path):
    """A PDF read "cannot read the PDF file" (PDFium keeps no errno), a text or image file "cannot read (Too many
    open files)": bad rows, which ``--on-error skip`` deletes from the index."""
    given, options = folder_of(tmp_path, kind)
    walks = FolderWalks()  # walked here: the readers' own opens run out, not the walk's
    options["walks"] = walks
    good = read([given], **options)  # every lazy import done first
    assert good and not [item.error for item in good if item.error]
    with pytest.raises(OpenFilesLimitError, match=LIMITED), no_descriptor_left():
        read([given], **options)


def test_a_folder_that_cannot_be_listed_for_want_of_descriptors_is_the_limit_not_bad_input(tmp_path):
    """It was exit 3, "cannot list the folder (Too many open files)"."""
    (tmp_path / "a.txt").write_text("some text")
    with pytest.raises(OpenFilesLimitError, match=LIMITED), no_descriptor_left():
        read([tmp_path])


def test_a_render_worker_out_of_descriptors_sends_the_limit_not_a_page_error(tmp_path):
    """A ``--pdf-workers`` process answers with the limit's error itself, which the reading process raises."""
    from tokembed.sources.pdf_workers import render_in_worker

    pdf = str(text_pdf(tmp_path / "a.pdf", ["page one"]))
    assert render_in_worker(pdf, None, 1, 36, 10**7, {})[0][2] is None
    with no_descriptor_left():
        (_, _, error), _ = render_in_worker(pdf, None, 1, 36, 10**7, {})
    assert isinstance(error, OpenFilesLimitError) and "a.pdf: cannot be opened" in str(error)
    sent = pickle.loads(pickle.dumps(error))
    assert (str(sent), sent.hint) == (str(error), error.hint) and "ulimit -n" in sent.hint


def test_an_incremental_skip_run_whose_pdf_opens_run_out_is_exit_8_and_the_index_untouched(tmp_path, checkpoint_store, monkeypatch,
                                                                                            capsys):
    """Each PDF opened with no descriptor left (PDFium's own open hits EMFILE): the run stops with exit 8 naming
    the limit; it committed ``0 rows ... deleted 4, failed 2``, exit 0."""
    from cli.main import run
    from tokembed.sources import pdf

    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a", "b"):
        text_pdf(docs / f"{name}.pdf", [f"{name} page one", f"{name} page two"])
    index = tmp_path / "index"
    args = ["encode", str(docs), "-o", str(index), "--model", str(checkpoint_store("pylate_bert")), "--store-dtype", "float32", "-q"]
    assert run(args) == 0
    committed = manifest(index)
    opened = pdf.open_pdf

    def open_starved(*args):
        with no_descriptor_left():
            return opened(*args)

    monkeypatch.setattr(pdf, "open_pdf", open_starved)
    (docs / "a.pdf").touch()  # changed: read again, as in a run after an edit
    (docs / "b.pdf").touch()
    capsys.readouterr()
    assert run([*args, "--on-error", "skip"]) == 8
    assert manifest(index) == committed
    assert "tokembed: too many open files: " in capsys.readouterr().err


def test_a_shard_finished_with_no_descriptor_left_names_the_limit_not_a_write_error(tmp_path, monkeypatch):
    """Under ``ulimit -n 87`` the shard's fsync found none: "write error: ... cannot finish shard ([Errno 24] Too
    many open files ...)", which named no limit and said nothing of how to raise it."""
    from tokembed.index import writer as writing

    def publish(tmp, final):
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), str(final))

    monkeypatch.setattr(writing, "publish", publish)
    shards = writing.IndexWriter(tmp_path / "index", 4, "float32", shard_rows=1)
    with pytest.raises(OpenFilesLimitError, match=r"part-0+\.arrow: " + LIMITED):
        shards.write(["d"], [np.ones((2, 4), np.float32)], [np.arange(2, dtype=np.int32)], [bytes(32)])


@pytest.mark.parametrize("family", ["pylate_bert", "stanford"])
def test_a_checkpoint_loaded_with_no_descriptor_left_is_the_limit_not_a_model_error(checkpoint, family):
    """torch's ``unable to open file ...: Too many open files (24)`` and the loaders' own OSErrors were exit 4
    'cannot read the weights' / 'cannot load the checkpoint', a model error for a healthy checkpoint."""
    from tokembed.models.registry import load_model

    folder = checkpoint(family)
    load_model(folder)  # imports done: what runs out below is the checkpoint's files
    with no_descriptor_left(), pytest.raises(OpenFilesLimitError, match=LIMITED):
        load_model(folder)


def test_a_library_error_naming_the_limit_in_words_is_out_of_descriptors():
    """torch keeps no errno: ``RuntimeError: unable to open file <...>: Too many open files (24)``."""
    from tokembed.open_files import out_of_descriptors

    assert out_of_descriptors(RuntimeError("unable to open file <model.bin>: Too many open files (24)"))
    assert out_of_descriptors(RuntimeError("Too many open files in system"))
    assert not out_of_descriptors(RuntimeError("unable to open file <model.bin>: No such file or directory (2)"))
