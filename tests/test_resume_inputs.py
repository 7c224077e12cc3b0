"""A killed run resumes from its journaled shards only when they are made of the rows the inputs give now: an
image a Parquet path cell names, replaced between the kill and the re-run (no signature sees it: the Parquet file is
the same), or another --image-column / --max-image-pixels, start the shards again; the result equals an
uninterrupted run with the re-run's inputs, byte for byte."""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
from PIL import Image

from colpali_engine_checkpoints import build_colidefics3
from helpers import read_index, write_parquet
from test_cron import tokembed

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


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_resume_uses_its_shards_only_for_the_same_rows(model, tmp_path, change):
    data = corpus(tmp_path / "corpus")
    out = tmp_path / "index"
    killed = encode(model, data, out, "--image-column", "img_a", env={"TOKEMBED_TEST_KILL_AT": "shard:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(json.loads((out / "run-journal.json").read_text())["shards"]) == 3
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
