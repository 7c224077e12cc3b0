"""What a manifest says of its files' types, checked against the files as its counts and dim are.

* ``embedding_dtype`` is the shards' own vector type (their schema says it): float32 over float16 shards was read,
  and reported by ``info``, as float32.
* The search structure's ``dim`` is its codec's, and the codec's the index's dim, as its nbits and centroid count
  are the codec's: a manifest saying otherwise was searched with the codec's.
* ``search.kind`` is one this release searches: a structure of another kind (a later release's?) was searched as
  PLAID. Every release wrote ``kind`` and ``dim``; a structure without them still reads.
"""

from __future__ import annotations

import shutil

import pytest

from helpers import manifest, write_jsonl, write_manifest
from plaid_support import corpus_rows, encode_and_compress


@pytest.fixture(scope="module")
def compressed_index(tmp_path_factory, colbert_ckpt):
    """A ColBERT index of 40 rows (float16 vectors) compressed with 16 centroids at nbits 2."""
    return encode_and_compress(tmp_path_factory.mktemp("types"), colbert_ckpt)


@pytest.fixture()
def index(compressed_index, tmp_path):
    shutil.copytree(compressed_index, tmp_path / "index")
    shutil.copy(compressed_index.parent / "corpus.jsonl", tmp_path / "corpus.jsonl")
    return tmp_path / "index"


def edited(index, **search) -> dict:
    """The index's manifest with its ``search`` section's ``search`` values set (None: the key removed)."""
    data = manifest(index)
    for key, value in search.items():
        data["search"].pop(key) if value is None else data["search"].update({key: value})
    return data


def results(cli, index, tmp_path, commands) -> dict:
    return {command: cli(*args) for command, args in _commands(index, tmp_path).items() if command in commands}


def _commands(index, tmp_path) -> dict:
    return {"score": ["score", index, "--query", "alpha beta"], "score --exact": ["score", index, "--query", "alpha", "--exact"],
            "info": ["info", index], "info --verify": ["info", index, "--verify"],
            "export": ["export", index, "--to", tmp_path / "out", "--format", "parquet"],
            "compress": ["compress", index, "--centroids", 16, "-q"]}


EVERY_READER = ("score", "score --exact", "info", "info --verify", "export", "compress")


def test_an_embedding_dtype_that_is_not_the_shards_is_a_corrupt_index_for_every_reader(index, cli, tmp_path):
    data = manifest(index)
    assert data["embedding_dtype"] == "float16"
    write_manifest(index, {**data, "embedding_dtype": "float32"})
    for command, result in results(cli, index, tmp_path, EVERY_READER).items():
        assert result.exit_code == 6 and "Traceback" not in result.output, (command, result.output)
        assert "part-000000.arrow: vectors of float16, manifest says embedding_dtype float32" in result.stderr, (command, result.stderr)


def test_a_float32_index_reads_and_refuses_a_manifest_saying_float16(tmp_path, cli, colbert_ckpt):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(12))
    index = tmp_path / "index"
    assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--store-dtype", "float32", "-q").exit_code == 0
    for command, result in results(cli, index, tmp_path, ("score --exact", "info --verify")).items():
        assert result.exit_code == 0, (command, result.output)
    write_manifest(index, {**manifest(index), "embedding_dtype": "float16"})
    result = cli("score", index, "--query", "alpha", "--exact")
    assert result.exit_code == 6 and "vectors of float32, manifest says embedding_dtype float16" in result.stderr, result.output


def test_a_search_dim_that_is_not_the_codecs_is_refused_where_the_codec_is_used(index, cli, tmp_path, colbert_ckpt):
    """score searched with the codec's dim while info reported the manifest's: as a wrong nbits, the structure's
    search, info and an encode re-run that codes with the codec refuse it, and score --exact reads on."""
    dim = manifest(index)["dim"]
    write_manifest(index, edited(index, dim=dim // 2))
    message = f"the codec has dim {dim}; the manifest says dim {dim // 2}"
    for command, result in results(cli, index, tmp_path, ("score", "info", "info --verify")).items():
        assert result.exit_code == 6 and message in result.stderr, (command, result.output)
    write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(41))
    rerun = cli("encode", tmp_path / "corpus.jsonl", "--model", colbert_ckpt, "-o", index, "-q")
    assert rerun.exit_code == 6 and message in rerun.stderr, rerun.output
    assert cli("score", index, "--query", "alpha", "--exact").exit_code == 0


def test_a_codec_whose_dim_is_not_the_indexs_is_refused(index, cli, tmp_path):
    """A codec of narrower centroids, listed with its own sha256 and dim: queries of the index's dim were scored
    against it."""
    from tokembed.search.plaid.files import map_tensors, write_tensors

    data = manifest(index)
    dim, entry = data["dim"], data["search"]["codec"]
    tensors, metadata = map_tensors(index / entry["file"])
    narrow = {name: array.copy() for name, array in tensors.items()}
    narrow["centroids"] = narrow["centroids"][:, : dim // 2].copy()
    new = write_tensors(index / entry["file"], narrow, metadata)
    data["search"]["bytes"] += new["bytes"] - entry["bytes"]
    entry.update(new)
    data["search"]["dim"] = dim // 2
    write_manifest(index, data)
    for command, result in results(cli, index, tmp_path, ("score", "info")).items():
        assert result.exit_code == 6 and "Traceback" not in result.output, (command, result.output)
        assert f"the codec has dim {dim // 2}; the manifest says the index's vectors have dim {dim}" in result.stderr, (command, result.stderr)


def test_a_structure_of_a_kind_this_release_does_not_know_is_refused_not_searched_as_plaid(index, cli, tmp_path):
    write_manifest(index, edited(index, kind="hnsw"))
    for command, result in results(cli, index, tmp_path, EVERY_READER).items():
        assert result.exit_code == 6 and "manifest.json" in result.stderr, (command, result.output)
        assert "search.kind is 'hnsw', not one this tokembed knows (plaid; written by a later release?)" in result.stderr


@pytest.mark.parametrize("sealed", [True, False])
def test_a_structure_without_kind_or_dim_still_reads(index, cli, tmp_path, sealed):
    """Every release wrote both; a manifest without them (hand-made, or unsealed as before the seal) is searched
    with its codec's dim, as before."""
    before = cli("score", index, "--query", "alpha beta").stdout
    write_manifest(index, edited(index, kind=None, dim=None), sealed=sealed)
    found = results(cli, index, tmp_path, ("score", "score --exact", "info --verify"))
    assert all(result.exit_code == 0 for result in found.values()), {c: r.output for c, r in found.items()}
    assert found["score"].stdout == before


@pytest.mark.parametrize("field, value", [("kind", "passage"), ("mode", "sparse")])
def test_settings_of_a_kind_or_mode_this_release_does_not_know_are_refused(index, cli, tmp_path, field, value):
    # every release wrote document/query and colbert/raw: another value (a later release's?) is not read as ours
    data = manifest(index)
    data["settings"][field] = value
    write_manifest(index, data)
    for command, result in results(cli, index, tmp_path, EVERY_READER).items():
        assert result.exit_code == 6 and "Traceback" not in result.output, (command, result.output)
        assert f"settings.{field} is {value!r}, not one this tokembed knows" in result.stderr, (command, result.stderr)
