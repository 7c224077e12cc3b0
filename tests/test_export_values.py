"""Values that a dtype or a search cannot carry as they are: refused or warned about, never silently changed.

* float16's largest finite value is 65504: ``export --dtype float16`` of a float32 index holding a larger one, and
  ``encode --store-dtype float16`` of vectors holding one (``--no-normalize``), are refused (exit 2), nothing
  written, instead of storing inf.
* LanceDB's multivector search is cosine only: ``export --format lance`` of an index whose vectors are not unit
  length warns that it will not rank as ``tokembed score`` does, and so does ``info``'s recipe.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from helpers import manifest, read_index, write_parquet

TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "A recipe for apple pie."]


def _float32_index(folder, docs: list[np.ndarray]):
    """A model-less float32 index of ``docs`` (each [n_tokens, 4]), one row per shard."""
    from tokembed.index.format import FORMAT, FORMAT_VERSION
    from tokembed.index.writer import IndexWriter

    writer = IndexWriter(folder, 4, "float32", shard_rows=1)
    for number, doc in enumerate(docs):
        writer.write([f"d{number}"], [doc], [np.arange(len(doc), dtype=np.int32)], [bytes(32)])
    shards = [shard.to_json() for shard in writer.shards]
    writer.commit({"format": FORMAT, "format_version": FORMAT_VERSION, "dim": 4, "embedding_dtype": "float32",
                   "shards": shards, "totals": {"rows": len(docs), "tokens": sum(len(d) for d in docs), "bytes": 0}})
    return folder


@pytest.mark.parametrize("fmt", ["parquet", "lance"])
def test_a_float16_export_of_values_beyond_its_range_exits_2_and_writes_nothing(cli, tmp_path, fmt):
    if fmt == "lance":
        pytest.importorskip("lancedb", reason="the [lance] extra is not installed")
    small = np.full((2, 4), 0.5, np.float32)
    large = np.array([[1.0, -70000.5, 3.0, 65504.0]], np.float32)
    index = _float32_index(tmp_path / "index", [small, large])
    out = tmp_path / "out"
    result = cli("export", index, "--to", out, "--format", fmt, "--dtype", "float16")
    assert result.exit_code == 2, result.output
    assert "part-000001.arrow" in result.stderr and "70000.5" in result.stderr and "inf" in result.stderr
    assert "hint: export with --dtype float32" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["index"]
    assert cli("export", index, "--to", out, "--format", fmt, "-q").exit_code == 0  # float32 holds it


def test_an_inf_the_index_itself_holds_is_exported_as_it_is(cli, tmp_path):
    import pyarrow.parquet as pq

    index = _float32_index(tmp_path / "index", [np.array([[np.inf, 1.0, 2.0, 60000.0]], np.float32)])
    result = cli("export", index, "--to", tmp_path / "out", "--format", "parquet", "--dtype", "float16", "-q")
    assert result.exit_code == 0, result.output
    values = pq.read_table(tmp_path / "out").column("embeddings").combine_chunks().flatten().flatten()
    assert values.to_pylist() == [np.inf, 1.0, 2.0, 60000.0]


@pytest.fixture()
def loud_checkpoint(checkpoint):
    """The tiny Stanford checkpoint with its projection scaled so that un-normalized vectors exceed 65504."""
    from safetensors.numpy import load_file, save_file

    folder = checkpoint("stanford")
    weights = load_file(str(folder / "model.safetensors"))
    weights["linear.weight"] = weights["linear.weight"] * 1e6
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_encode_refuses_to_store_values_beyond_float16_as_inf(cli, loud_checkpoint, tmp_path):
    corpus = write_parquet(tmp_path / "corpus.parquet", [{"id": f"doc{i}", "text": t} for i, t in enumerate(TEXTS)])
    index = tmp_path / "index"
    result = cli("encode", corpus, "--model", loud_checkpoint, "-o", index, "--no-normalize")
    assert result.exit_code == 2, result.output
    assert "row 'doc0'" in result.stderr and "65504" in result.stderr and "inf" in result.stderr
    assert "hint: encode with --store-dtype float32" in result.stderr
    assert not (index / "manifest.json").exists()

    for flags in (["--no-normalize", "--store-dtype", "float32"], []):  # float32 holds them; normalized never get there
        result = cli("encode", corpus, "--model", loud_checkpoint, "-o", index, "--full", *flags, "-q")
        assert result.exit_code == 0, (flags, result.output)
        assert manifest(index)["totals"]["rows"] == len(TEXTS)
        vectors = np.concatenate([v for v, _ in read_index(index).values()])
        assert np.isfinite(vectors).all() and (np.abs(vectors).max() > 65504) == bool(flags)


def test_lance_export_of_vectors_not_unit_length_warns_that_it_ranks_by_cosine(cli, tmp_path):
    pytest.importorskip("lancedb", reason="the [lance] extra is not installed")
    corpus = write_parquet(tmp_path / "corpus.parquet", [{"id": f"doc{i}", "text": t} for i, t in enumerate(TEXTS)])
    raw, unit = tmp_path / "raw", tmp_path / "unit"
    assert cli("encode", corpus, "-o", raw, "--no-normalize", "-q").exit_code == 0
    assert cli("encode", corpus, "-o", unit, "-q").exit_code == 0

    warned = cli("export", raw, "--to", tmp_path / "db", "--format", "lance", "--table", "raw")
    assert warned.exit_code == 0, warned.output
    assert "tokembed: warning: this index's vectors are not unit length" in warned.stderr and "cosine" in warned.stderr
    quiet = cli("export", raw, "--to", tmp_path / "db", "--format", "lance", "--table", "raw2", "-q")
    assert quiet.exit_code == 0 and "warning" not in quiet.output
    plain = cli("export", unit, "--to", tmp_path / "db", "--format", "lance", "--table", "unit")
    assert plain.exit_code == 0 and "warning" not in plain.output
    parquet = cli("export", raw, "--to", tmp_path / "parquet", "--format", "parquet")  # Parquet has no search
    assert parquet.exit_code == 0 and "warning" not in parquet.output

    assert "cosine: these vectors are not unit length" in cli("info", raw).stderr
    assert "cosine" not in cli("info", unit).stderr
