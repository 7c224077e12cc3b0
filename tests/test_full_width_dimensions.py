"""``encode --dimensions N`` with N the model's output width cuts nothing: it is no setting, as ``--pool-factor 1``
is none. It re-encoded every row ("an encoding setting changed"), and the next run without it every row again,
for identical vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import manifest, read_index, write_parquet

SAMPLE_IMAGES = __import__("conftest").SAMPLE_DATA / "images"


def _encode(cli, corpus, out, model, *extra) -> dict:
    result = cli("encode", corpus, "-o", out, "--model", model, "--store-dtype", "float32", "--log-format", "json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _check_full_width_is_no_setting(cli, corpus, model, tmp_path, rows: int) -> None:
    plain, full = tmp_path / "plain", tmp_path / "full"
    _encode(cli, corpus, plain, model)
    width = manifest(plain)["dim"]
    _encode(cli, corpus, full, model, "--dimensions", width)
    for key in ("settings", "settings_fingerprint", "flags", "dim"):
        assert manifest(full)[key] == manifest(plain)[key], key
    with_flag, without = read_index(full), read_index(plain)
    assert list(with_flag) == list(without)
    for key in without:
        assert np.array_equal(with_flag[key][0], without[key][0]) and np.array_equal(with_flag[key][1], without[key][1])
    for index, extra in ((full, ()), (plain, ("--dimensions", width))):  # the other run's flags: nothing changed
        again = _encode(cli, corpus, index, model, *extra)
        assert (again["unchanged"], again["updated"], again["full_rebuild"]) == (rows, 0, False), again


@pytest.mark.parametrize("name", ["stanford", "raw_projection"])
def test_text_models_full_width_dimensions_change_nothing(cli, checkpoint, tmp_path, name):
    corpus = write_parquet(tmp_path / "corpus.parquet", [{"id": f"d{i}", "text": f"text number {i}"} for i in range(3)])
    _check_full_width_is_no_setting(cli, corpus, checkpoint(name), tmp_path, 3)


def test_an_image_models_full_width_dimensions_change_nothing(cli, tmp_path):
    from vision_checkpoints import build_colpali

    colpali = build_colpali(tmp_path / "colpali")
    _check_full_width_is_no_setting(cli, SAMPLE_IMAGES, colpali, tmp_path, len(list(SAMPLE_IMAGES.iterdir())))


def test_score_encodes_queries_of_an_index_an_earlier_release_built_at_full_width(cli, checkpoint, tmp_path):
    """Its manifest's flags say ``dimensions`` = the width: the queries are encoded as without it."""
    from tokembed.embedder import Embedder

    stanford = checkpoint("stanford")
    corpus = write_parquet(tmp_path / "corpus.parquet", [{"id": "d0", "text": "alpha"}])
    _encode(cli, corpus, tmp_path / "index", stanford)
    data = manifest(tmp_path / "index")
    recorded = {**data, "flags": {**data["flags"], "dimensions": data["dim"]}}
    assert Embedder.for_index(recorded).settings == Embedder.for_index(data).settings
