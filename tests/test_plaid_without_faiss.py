"""A cron ``encode`` from an install without the ``[search]`` extra (no faiss, so no k-means) on an index that
has a search structure: new rows are coded with the existing centroids (numpy). When drift calls for new
centroids the run keeps the current ones and says faiss is needed; a run that must train (``--retrain``,
another ``--nbits``, a new structure) is refused before any row is encoded. Until this release drift's retrain
encoded every row, then failed in k-means (exit 2) and committed nothing, on every later run too."""

from __future__ import annotations

import sys

import pytest

from helpers import manifest, write_manifest, write_parquet
from plaid_support import corpus_rows


@pytest.fixture
def structured(tmp_path, cli):
    """An index of 40 rows with a search structure (faiss installed), its drift past the retrain share."""
    out = tmp_path / "index"
    assert cli("encode", write_parquet(tmp_path / "c40.parquet", corpus_rows(40)), "-o", out, "--nbits", 2,
               "-q").exit_code == 0
    data = manifest(out)
    data["search"]["drift"]["share_coded_since_training"] = 0.9  # past RETRAIN_SHARE: new centroids are due
    write_manifest(out, data)
    return out


@pytest.fixture
def without_faiss(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError


@pytest.fixture
def nothing_encoded(monkeypatch):
    """A run that reaches the encoding of rows fails the test: a refusal must come first."""
    import tokembed.encode as encode_module

    def encode_stream(*args, **kwargs):
        raise AssertionError("rows were encoded before the refusal")

    monkeypatch.setattr(encode_module, "_encode_stream", encode_stream)


def test_drift_keeps_the_centroids_and_commits_without_faiss(structured, without_faiss, tmp_path, cli):
    before = manifest(structured)["search"]
    result = cli("encode", write_parquet(tmp_path / "c45.parquet", corpus_rows(45)), "-o", structured)
    assert result.exit_code == 0, result.output
    assert "new centroids are due" in result.stderr and "pip install 'tokembed[search]'" in result.stderr
    after = manifest(structured)
    assert after["totals"]["rows"] == 45
    assert after["search"]["codec"] == before["codec"]  # kept: coded with the same centroids
    assert after["search"]["last_run"]["coded_tokens"] > 0
    drift = after["search"]["drift"]
    assert drift["tokens_coded_since_training"] == before["drift"]["tokens_coded_since_training"] + after["search"]["last_run"]["coded_tokens"]


@pytest.mark.parametrize("asked, said", [(["--retrain"], "--retrain"), (["--nbits", 4], "--nbits 4 (the index has 2)")])
def test_an_asked_retrain_without_faiss_is_refused_before_encoding(structured, without_faiss, nothing_encoded, tmp_path,
                                                                   cli, asked, said):
    before = manifest(structured)
    result = cli("encode", write_parquet(tmp_path / "c45.parquet", corpus_rows(45)), "-o", structured, *asked)
    assert result.exit_code == 2, result.output
    assert f"{structured}: {said}: training centroids needs faiss" in result.stderr
    assert "pip install 'tokembed[search]'" in result.stderr
    assert manifest(structured) == before


def test_a_new_structure_without_faiss_is_refused_before_encoding(without_faiss, nothing_encoded, tmp_path, cli):
    out = tmp_path / "index"
    result = cli("encode", write_parquet(tmp_path / "c40.parquet", corpus_rows(40)), "-o", out, "--nbits", 2)
    assert result.exit_code == 2, result.output
    assert "a new search structure: training centroids needs faiss" in result.stderr
    assert not (out / "manifest.json").exists()
