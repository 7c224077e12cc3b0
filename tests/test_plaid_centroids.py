"""How many centroids ``compress`` trains: a ``--centroids`` choice is remembered through retrains (one per token
caps a training, never the choice), recorded when it equals the current count, and refused above the tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers import manifest, write_parquet
from plaid_support import clustered_docs, corpus_rows
from test_score import write_index
from tokembed.search.plaid import compress_index


def test_a_chosen_centroid_count_survives_a_retrain_nobody_gave_it_to(tmp_path):
    from tokembed.search.plaid.codec import default_centroids

    rng = np.random.default_rng(12)
    docs = clustered_docs(rng, 80)
    folder = write_index(tmp_path / "index", docs, shard_rows=40, batch_rows=8)
    compress_index(folder, nbits=2, centroids=24)
    tokens = manifest(folder)["totals"]["tokens"]
    assert default_centroids(tokens) != 24
    compress_index(folder, nbits=1)  # another nbits: a retrain, without --centroids
    assert manifest(folder)["search"]["centroids"] == 24 and manifest(folder)["search"]["nbits"] == 1
    compress_index(folder, retrain=True)
    assert manifest(folder)["search"]["centroids"] == 24
    compress_index(folder, centroids=32)  # a new choice replaces it
    compress_index(folder, retrain=True)
    assert manifest(folder)["search"]["centroids"] == 32


def _shrunk_index(tmp_path, cli) -> tuple[Path, Path]:
    """An index compressed with ``--centroids 300`` at 40 rows, then re-encoded from 3 of them (19 tokens): the
    carried rows' codes keep the 300 centroids (no drift). Returns the index and the 40-row corpus."""
    full = write_parquet(tmp_path / "full.parquet", corpus_rows(40))
    out = tmp_path / "index"
    assert cli("encode", full, "-o", out, "-q").exit_code == 0
    assert cli("compress", out, "--centroids", 300, "-q").exit_code == 0
    assert cli("encode", write_parquet(tmp_path / "small.parquet", corpus_rows(3)), "-o", out, "-q").exit_code == 0
    assert manifest(out)["search"]["centroids"] == 300 and manifest(out)["totals"]["tokens"] < 300
    return out, full


def test_an_explicit_centroid_count_above_the_tokens_is_refused_even_where_the_index_has_it(tmp_path, cli):
    out, _ = _shrunk_index(tmp_path, cli)
    before = manifest(out)
    result = cli("compress", out, "--centroids", 300)  # the current count: it was a no-op, exit 0
    assert result.exit_code == 2 and f"only {before['totals']['tokens']} tokens" in result.stderr
    assert manifest(out) == before


def test_a_chosen_centroid_count_outlives_a_retrain_on_fewer_tokens(tmp_path, cli):
    out, full = _shrunk_index(tmp_path, cli)
    assert cli("compress", out, "--retrain", "-q").exit_code == 0
    search = manifest(out)["search"]
    assert search["centroids"] == manifest(out)["totals"]["tokens"]  # one per token, for this training only
    assert search["training"]["centroids_asked"] == 300  # was lowered to the 19 tokens, for good
    assert cli("encode", full, "-o", out, "-q").exit_code == 0
    assert cli("compress", out, "--retrain", "-q").exit_code == 0
    assert manifest(out)["search"]["centroids"] == 300



def test_a_chosen_centroid_count_outlives_a_night_with_no_rows(tmp_path, cli):
    """The empty generation's search_settings kept nbits and drop_vectors only: the next run with rows built the
    structure with the default count for its size, and the choice was lost for every later retrain."""
    from tokembed.search.plaid.codec import default_centroids

    rows = write_parquet(tmp_path / "rows.parquet", corpus_rows(40))
    empty = write_parquet(tmp_path / "empty.parquet", [])
    out = tmp_path / "index"
    assert cli("encode", rows, "-o", out, "-q").exit_code == 0
    assert cli("compress", out, "--centroids", 8, "-q").exit_code == 0
    assert default_centroids(manifest(out)["totals"]["tokens"]) != 8  # the case tested
    for _ in range(2):  # two nights with no input: the choice is kept with the other settings
        assert cli("encode", empty, "-o", out, "-q").exit_code == 0
        assert manifest(out)["search_settings"] == {"nbits": 2, "drop_vectors": False, "centroids_asked": 8}
    assert cli("encode", rows, "-o", out, "-q").exit_code == 0
    search = manifest(out)["search"]
    assert search["centroids"] == 8 and search["training"]["centroids_asked"] == 8
    assert "search_settings" not in manifest(out)

def test_an_explicit_centroid_count_equal_to_the_current_one_is_recorded(tmp_path, cli):
    from tokembed.search.plaid.codec import default_centroids

    out = tmp_path / "index"
    assert cli("encode", write_parquet(tmp_path / "c40.parquet", corpus_rows(40)), "-o", out, "--nbits", 2, "-q").exit_code == 0
    before = manifest(out)["search"]
    count = before["centroids"]
    assert cli("compress", out, "--centroids", count, "-q").exit_code == 0
    after = manifest(out)["search"]
    assert after["codec"] == before["codec"] and after["training"]["centroids_asked"] == count  # recorded, not retrained
    grown = write_parquet(tmp_path / "c200.parquet", corpus_rows(200))
    assert cli("encode", grown, "-o", out, "-q").exit_code == 0  # most tokens coded since training: drift
    assert default_centroids(manifest(out)["totals"]["tokens"]) != count
    assert cli("encode", grown, "-o", out, "-q").exit_code == 0
    assert manifest(out)["search"]["codec"] != after["codec"] and manifest(out)["search"]["centroids"] == count


def test_centroids_from_a_library_caller_numpy_taken_other_types_refused_before_any_work(tmp_path):
    """``compress_index(centroids=np.int64(24))`` is taken as 24 (its choice is recorded in the manifest's JSON);
    a float, bool or string is a UsageError naming it, the index untouched (each passed the range check or failed
    in it with a TypeError)."""
    import pytest

    from tokembed.errors import UsageError

    docs = clustered_docs(np.random.default_rng(3), 40)
    folder = write_index(tmp_path / "index", docs, shard_rows=40, batch_rows=8)
    before = (folder / "manifest.json").read_bytes()
    for value in (24.0, True, "24"):
        with pytest.raises(UsageError, match=rf"--centroids {value!r}: must be a whole number"):
            compress_index(folder, centroids=value)
        assert (folder / "manifest.json").read_bytes() == before
    compress_index(folder, centroids=np.int64(24))
    assert manifest(folder)["search"]["centroids"] == 24
