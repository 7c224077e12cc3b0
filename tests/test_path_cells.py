"""Image, video and PDF path cells of a Parquet/JSONL corpus: a cell naming nothing that can be read is a bad row
saying why, and ``~name/...`` is a path relative to the file like any other (README "Paths").

Until this release a video cell too long for the file system (a ``data:`` URI) ended the run with an OSError
traceback from a JSONL file and exit 3 blaming a Parquet file ("cannot read row group"), under ``--on-error skip``
too; a NUL in an image cell was a ValueError traceback; ``~old/a.png`` beside the file a RuntimeError traceback
where no user ``old`` existed, and ``~root/a.png`` that user's home, the file beside it reported not found; a
video or PDF cell naming a folder "not found"; and an image over Pillow's own bomb limit a bad row in Pillow's
words, naming neither ``--max-image-pixels`` nor its value.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

import qwen_checkpoints
from helpers import manifest, read_index, write_jsonl, write_parquet
from pdfs import image_pdf
from test_video_refused import write_video

LONG = "x" * 300


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return qwen_checkpoints.build_colqwen3_5(tmp_path_factory.mktemp("colqwen3_5") / "ckpt")


@pytest.fixture(params=["jsonl", "parquet"])
def corpus_format(request) -> str:
    return request.param


def write_corpus(folder: Path, fmt: str, column: str, cells: dict[str, str]) -> Path:
    rows = [{"id": key, column: value} for key, value in cells.items()]
    return (write_jsonl if fmt == "jsonl" else write_parquet)(folder / f"corpus.{fmt}", rows)


def encode_skipping(cli, corpus: Path, checkpoint: Path, *flags) -> tuple[list[str], dict[str, str]]:
    """(the ids indexed, id -> the reason its row was skipped, without a JSONL line's "line N: ")."""
    out = corpus.parent / "index"
    result = cli("encode", corpus, "--model", checkpoint, "-o", out, "--on-error", "skip", "--quiet", *flags)
    assert result.exit_code == 0, result.output
    skipped = {entry["id"]: re.sub(r"^line \d+: ", "", entry["reason"]) for entry in manifest(out)["skipped"]}
    return sorted(read_index(out)), skipped


def png(path: Path, size=(24, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 40, 40)).save(path)
    return path


def test_video_cells_that_name_no_readable_file_are_bad_rows(cli, checkpoint, tmp_path, corpus_format):
    write_video(tmp_path / "clip.mp4")
    (tmp_path / "adir").mkdir()
    corpus = write_corpus(tmp_path, corpus_format, "video", {
        "ok": "clip.mp4", "long": LONG + ".mp4", "uri": "data:video/mp4;base64,AAAA", "dir": "adir", "nul": "a\0b.mp4",
    })
    indexed, skipped = encode_skipping(cli, corpus, checkpoint, "--video-column", "video")
    assert indexed == ["ok"]
    assert skipped == {
        "long": f"cannot read video file {LONG}.mp4 (File name too long)",  # a path is shown whole
        "uri": "video is a data: URI, which a video cell does not take (bytes, a path or {bytes, path})",
        "dir": "video path is a folder: adir",
        "nul": "video path holds a NUL character, which no file name can: 'a\\x00b.mp4'",
    }


def test_image_cells_that_name_no_readable_file_are_bad_rows(cli, checkpoint, tmp_path, corpus_format):
    png(tmp_path / "a.png")
    (tmp_path / "adir").mkdir()
    corpus = write_corpus(tmp_path, corpus_format, "image", {
        "ok": "a.png", "nul": "a\0b.png", "long": LONG + ".png", "dir": "adir",
    })
    indexed, skipped = encode_skipping(cli, corpus, checkpoint)
    assert indexed == ["ok"]
    assert skipped == {
        "nul": "image path holds a NUL character, which no file name can: 'a\\x00b.png'",
        "long": f"cannot read image file {LONG}.png (File name too long)",  # a path is shown whole
        "dir": "image path is a folder: adir",
    }


def test_pdf_cells_that_name_no_readable_file_are_bad_rows(cli, checkpoint, tmp_path, corpus_format):
    image_pdf(tmp_path / "good.pdf", [(200, 10, 10)])
    (tmp_path / "d.pdf").mkdir()
    corpus = write_corpus(tmp_path, corpus_format, "pdf", {"ok": "good.pdf", "dir": "d.pdf", "nul": "a\0b.pdf"})
    indexed, skipped = encode_skipping(cli, corpus, checkpoint, "--pdf-column", "pdf")
    assert indexed == ["ok#page=1"]
    assert skipped == {
        "dir": f"PDF path is a folder: {tmp_path / 'd.pdf'}",
        "nul": f"PDF path holds a NUL character, which no file name can: {str(tmp_path / 'a') + chr(0) + 'b.pdf'!r}",
    }


def test_tilde_names_are_files_beside_the_corpus_and_tilde_slash_is_home(cli, checkpoint, tmp_path, corpus_format,
                                                                         monkeypatch):
    """An image column holding images, a video and a PDF: ``~old/...`` (no such user) and ``~root/...`` (a user whose
    home is no folder of the test) are folders beside the file, ``~/...`` is $HOME."""
    png(tmp_path / "~old" / "a.png")
    write_video(tmp_path / "~old" / "a.mp4")
    image_pdf(tmp_path / "~old" / "a.pdf", [(10, 200, 10)])
    png(tmp_path / "~root" / "path-cell-test.png")
    png(tmp_path / "home" / "h.png")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    corpus = write_corpus(tmp_path, corpus_format, "image", {
        "png": "~old/a.png", "mp4": "~old/a.mp4", "pdf": "~old/a.pdf", "root": "~root/path-cell-test.png",
        "home": "~/h.png",
    })
    indexed, skipped = encode_skipping(cli, corpus, checkpoint)
    assert (indexed, skipped) == (["home", "mp4", "pdf#page=1", "png", "root"], {})


def test_an_image_over_pillows_own_bomb_limit_names_the_flag(cli, checkpoint, tmp_path, corpus_format, monkeypatch):
    """Pillow refuses in ``open`` past twice its ``MAX_IMAGE_PIXELS`` (178956970 pixels by default, over the default
    --max-image-pixels of 40M: a 20000x20000 page); a small limit stands in for it here."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    corpus = write_corpus(tmp_path, corpus_format, "image", {
        "ok": str(png(tmp_path / "ok.png", (20, 20))), "big": str(png(tmp_path / "big.png", (30, 30))),
        "bomb": str(png(tmp_path / "bomb.png", (100, 100))),
    })
    indexed, skipped = encode_skipping(cli, corpus, checkpoint, "--max-image-pixels", "500")
    assert indexed == ["ok"]
    assert skipped == {
        "big": "image is 30x30 = 900 pixels, over the limit of 500 (--max-image-pixels)",
        "bomb": "image is 10000 pixels, over the limit of 500 (--max-image-pixels)",
    }
