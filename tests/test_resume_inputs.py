"""A killed run resumes from its journaled shards only when they are made of the rows the inputs give now: an
image a Parquet path cell names, replaced between the kill and the re-run (no signature sees it: the Parquet file is
the same), or another --image-column / --max-image-pixels, start the shards again; the result equals an
uninterrupted run with the re-run's inputs, byte for byte. So do a text file rewritten with its size and mtime kept
(in any resumed chunk, over a committed index) and an earlier release's journal (no chunk digests); the check costs
no second read of the corpus."""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
from PIL import Image

from colpali_engine_checkpoints import build_colidefics3
from helpers import read_index, write_parquet
from test_cron import tokembed
from tokembed.index.journal import journaled_shards
from tokembed.index.journal_lines import read_journal

ROWS = 12


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_colidefics3(tmp_path_factory.mktemp("resume-inputs") / "colidefics3")


def noise(seed: int, size=(40, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


def corpus(folder):
    """Rows naming their image by a path (``img_a``) and holding another one's bytes (``img_b``)."""
    import io

    (folder / "imgs").mkdir(parents=True)
    rows = []
    for i in range(ROWS):
        noise(i).save(folder / "imgs" / f"i{i}.png")
        data = io.BytesIO()
        noise(100 + i, size=(50, 50)).save(data, format="PNG")
        rows.append({"id": f"r{i}", "img_a": f"imgs/i{i}.png", "img_b": data.getvalue()})
    return write_parquet(folder / "data.parquet", rows)


def encode(model, data, out, *flags, env=None):
    return tokembed("encode", data, "-o", out, "--model", model, "--shard-rows", 2, "--store-dtype", "float32",
                    "--log-format", "json", "--on-error", "skip", *flags, env=env)


def same_index(a, b) -> bool:
    rows_a, rows_b = read_index(a), read_index(b)
    return list(rows_a) == list(rows_b) and all(
        np.array_equal(rows_a[key][0], rows_b[key][0]) and np.array_equal(rows_a[key][1], rows_b[key][1]) for key in rows_a)


def replace_named_image(folder):
    noise(999).save(folder / "imgs" / "i0.png")  # row r0, in the first (journaled) shard


CHANGES = {  # between the kill and the re-run: (what changes on disk, the re-run's flags)
    "unchanged": (None, ("--image-column", "img_a")),
    "a path cell's image replaced": (replace_named_image, ("--image-column", "img_a")),
    "another --image-column": (None, ("--image-column", "img_b")),
    "another --max-image-pixels": (None, ("--image-column", "img_a", "--max-image-pixels", 1000)),
}


SLOW_CHANGES = {"another --max-image-pixels", "another --image-column"}  # a flag change as --image-column's (~20 s each on 2 cores)


@pytest.mark.parametrize("change", [pytest.param(change, marks=pytest.mark.slow) if change in SLOW_CHANGES else change
                                    for change in sorted(CHANGES)])
def test_a_resume_uses_its_shards_only_for_the_same_rows(model, tmp_path, change):
    data = corpus(tmp_path / "corpus")
    out = tmp_path / "index"
    killed = encode(model, data, out, "--image-column", "img_a", env={"TOKEMBED_TEST_KILL_AT": "shard:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(journaled_shards(out)) == 3
    alter, flags = CHANGES[change]
    if alter is not None:
        alter(tmp_path / "corpus")
    rerun = encode(model, data, out, *flags)
    assert rerun.returncode == 0, rerun.stderr
    fresh = tmp_path / "fresh"
    shutil.copytree(tmp_path / "corpus", fresh)
    uninterrupted = encode(model, fresh / "data.parquet", tmp_path / "uninterrupted", *flags)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    assert json.loads(rerun.stdout)["resumed_shards"] == (3 if change == "unchanged" else 0)
    assert same_index(out, tmp_path / "uninterrupted")
    assert not (out / "run-journal.json").exists()
    listed = {shard["file"].split("/")[-1] for shard in json.loads((out / "manifest.json").read_text())["shards"]}
    assert {p.name for p in (out / "data").iterdir()} == listed


# Text corpora: what no run signature sees (a file rewritten with its size and mtime kept), and the journal's own form.

def text_rows(version: int = 0) -> list[dict]:
    words = "alpha gamma delta kappa sigma omega".split()
    return [{"id": f"d{i:02d}", "text": f"{words[(i + version) % 6]} {words[i % 5]} row {i:02d}"} for i in range(ROWS)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rewrite_keeping_size_and_mtime(path, old: str, new: str) -> None:
    """The same bytes but ``old`` -> ``new`` (as long), the file's mtime put back: its run signature is the same."""
    stat = path.stat()
    text = path.read_text()
    assert len(old) == len(new) and text.count(old) == 1
    path.write_text(text.replace(old, new))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def encode_text(model, data, out, env=None):
    return tokembed("encode", data, "-o", out, "--model", model, "--shard-rows", 2, "--log-format", "json", env=env)


def killed_text_run(model, data, out):
    killed = encode_text(model, data, out, env={"TOKEMBED_TEST_KILL_AT": "shard:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(journaled_shards(out)) == 3


def counts(summary: dict) -> dict:
    return {key: summary[key] for key in ("rows", "added", "updated", "deleted", "unchanged", "skipped")}


def shard_files_listed_only(out) -> bool:
    listed = {shard["file"].split("/")[-1] for shard in json.loads((out / "manifest.json").read_text())["shards"]}
    return {p.name for p in (out / "data").iterdir()} == listed


def test_rows_changed_behind_the_signature_in_a_later_resumed_chunk_are_encoded_again(checkpoint, tmp_path):
    """An incremental run over a committed index, killed; a row of its third journaled shard changes in a way the
    run signature cannot see: the re-run starts again from the first chunk, with the counts of an uninterrupted run."""
    model = checkpoint("stanford")
    data = write_jsonl(tmp_path / "data.jsonl", text_rows())
    out, uninterrupted = tmp_path / "index", tmp_path / "uninterrupted"
    assert encode_text(model, data, out).returncode == 0
    write_jsonl(data, text_rows(version=1))
    shutil.copytree(out, uninterrupted)
    killed_text_run(model, data, out)
    rewrite_keeping_size_and_mtime(data, "row 05", "row 5!")  # d05: chunk 2, in the third shard
    rerun = encode_text(model, data, out)
    assert rerun.returncode == 0, rerun.stderr
    reference = encode_text(model, data, uninterrupted)
    assert reference.returncode == 0, reference.stderr
    assert same_index(out, uninterrupted)
    assert counts(json.loads(rerun.stdout)) == counts(json.loads(reference.stdout))
    assert json.loads(rerun.stdout)["resumed_shards"] == 0
    assert "other rows than the inputs give now" in rerun.stderr
    assert shard_files_listed_only(out)


def test_a_journal_without_chunk_digests_is_not_resumed(checkpoint, tmp_path):
    """An earlier release's journal records no digests: its shards cannot be checked, so they are encoded again."""
    model = checkpoint("stanford")
    data = write_jsonl(tmp_path / "data.jsonl", text_rows())
    out = tmp_path / "index"
    killed_text_run(model, data, out)
    journal, _ = read_journal((out / "run-journal.json").read_bytes())
    del journal["chunk_digests"]  # and written as one unsealed document
    (out / "run-journal.json").write_text(json.dumps(journal))
    rerun = encode_text(model, data, out)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["resumed_shards"] == 0
    assert encode_text(model, data, tmp_path / "uninterrupted").returncode == 0
    assert same_index(out, tmp_path / "uninterrupted")
    assert shard_files_listed_only(out)


def test_a_resume_reads_the_corpus_once(checkpoint, tmp_path, cli, monkeypatch):
    """The journaled chunks are checked as the run reads them (hashed, not encoded): no second pass over the corpus
    (a PDF corpus's pages rendered twice)."""
    import tokembed.plan

    model = checkpoint("stanford")
    data = write_jsonl(tmp_path / "data.jsonl", text_rows())
    killed_text_run(model, data, tmp_path / "index")
    opened = []
    read = tokembed.plan.open_sources
    monkeypatch.setattr(tokembed.plan, "open_sources", lambda *args: opened.append(args) or read(*args))
    rerun = cli("encode", data, "-o", tmp_path / "index", "--model", model, "--shard-rows", 2, "--log-format", "json")
    assert rerun.exit_code == 0, rerun.output
    assert json.loads(rerun.stdout)["resumed_shards"] == 3
    assert len(opened) == 1


@pytest.mark.parametrize("option", ["image_column", "image_column_given", "video_column", "video_column_given",
                                    "max_image_pixels", "modality"])
def test_every_source_option_that_changes_the_rows_read_is_in_the_run_signature(tmp_path, option):
    """Whether a column is given decides, too (an explicit one must exist; without it, a video column is read where
    the file has no image column); the PDF render processes do not change a row, and are left out."""
    from dataclasses import replace

    from tokembed.encode import EncodeJob
    from tokembed.index.journal import run_signature
    from tokembed.sources import SourceOptions

    other = {"image_column": "img_b", "image_column_given": True, "video_column": "clip", "video_column_given": True,
             "max_image_pixels": 1000, "modality": "image"}
    job = EncodeJob([write_jsonl(tmp_path / "data.jsonl", text_rows())], tmp_path / "index")

    def signature(sources):
        return run_signature(replace(job, sources=sources), "weights", "settings", None, None)

    assert signature(replace(SourceOptions(), **{option: other[option]})) != signature(SourceOptions())
    assert signature(replace(SourceOptions(), pdf_workers=4)) == signature(SourceOptions())


class _RecordedProgress:
    def __init__(self) -> None:
        self.total, self.rows = None, 0

    def start(self, total_rows) -> None:
        self.total = total_rows

    def set_total(self, total_rows) -> None:
        self.total = total_rows

    def advance(self, rows: int, tokens: int) -> None:
        self.rows += rows

    def log(self, message: str) -> None:
        pass


def test_a_resume_that_starts_again_counts_every_row_in_its_progress(checkpoint, tmp_path):
    """The bar's total leaves out the rows of the shards a run resumes; a journal found to hold other rows is started
    again and every row is encoded, but the total stayed short (a bar at 12/6 rows, its ETA wrong)."""
    from tokembed import EncodeJob, encode_corpus

    model = checkpoint("stanford")
    folder = tmp_path / "docs"
    folder.mkdir()
    for row in text_rows():
        (folder / f"{row['id']}.txt").write_text(row["text"])
    out = tmp_path / "index"
    killed_text_run(model, folder, out)
    rewrite_keeping_size_and_mtime(folder / "d01.txt", "row 01", "row 1!")  # in the first journaled shard
    progress = _RecordedProgress()
    summary = encode_corpus(EncodeJob([folder], out, model=model, shard_rows=2, devices="cpu"), progress)
    assert summary.resumed_shards == 0
    assert progress.total == progress.rows == ROWS
