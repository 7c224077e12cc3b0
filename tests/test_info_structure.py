"""``tokembed info`` and the search structure's codec: a codec file missing or truncated is a corrupt index (exit 6)
without --verify too, as a code file is (sizes are checked, nothing hashed); a manifest whose nbits or centroid count
is not its codec's is a corrupt index, naming both (search uses the codec's), for score and an encode re-run too; and
info runs the checks score runs of each code file's entry (its rows, tokens and shard)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from helpers import manifest, write_jsonl, write_manifest
from plaid_support import corpus_rows, encode_and_compress


@pytest.fixture(scope="module")
def compressed_index(tmp_path_factory, colbert_ckpt):
    """A ColBERT index of 40 rows compressed with 16 centroids at nbits 2."""
    return encode_and_compress(tmp_path_factory.mktemp("info"), colbert_ckpt)


@pytest.fixture(params=["vectors stored", "compressed-only"])
def index(request, compressed_index, cli, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(compressed_index, folder)
    if request.param == "compressed-only":  # a lost codec cannot be rebuilt: the vectors are gone
        assert cli("compress", folder, "--drop-vectors", "-q").exit_code == 0
    return folder


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_info_refuses_an_index_whose_codec_is_missing_or_truncated(index, cli, damage):
    """It said exit 0, with the whole structure section and bytes_on_disk counting the lost codec, while score
    refused the index (exit 6)."""
    codec = index / manifest(index)["search"]["codec"]["file"]
    if damage == "missing":
        codec.unlink()
    else:
        os.truncate(codec, 100)
    result = cli("info", index, "--json")
    assert result.exit_code == 6 and codec.name in result.stderr and not result.stdout, result.output


@pytest.mark.parametrize("verify", [[], ["--verify"]])
def test_info_refuses_a_manifest_whose_nbits_and_centroids_are_not_its_codecs(index, cli, verify):
    """info --verify printed the edited manifest's nbits 4 and centroids + 1, exit 0, while score used the codec's."""
    data = manifest(index)
    nbits, centroids = data["search"]["nbits"], data["search"]["centroids"]
    data["search"].update(nbits=4, centroids=centroids + 1)
    write_manifest(index, data)
    result = cli("info", index, *verify)
    assert result.exit_code == 6, result.output
    assert (f"the codec has nbits {nbits}, centroids {centroids}; the manifest says nbits 4, centroids {centroids + 1}"
            in result.stderr), result.stderr


def test_info_of_a_sound_structure_reports_its_codecs_values(index, cli):
    result = cli("info", index, "--json", "--verify")
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)["search_structure"]
    assert (facts["nbits"], facts["centroids"]) == (2, 16)


def _code_entry_edit(field: str):
    def edit(entry):
        entry[field] = entry[field] + 1 if field != "shard" else "data/part-000099.arrow"
    return edit


@pytest.mark.parametrize("field", ["rows", "tokens", "shard"])
@pytest.mark.parametrize("verify", [[], ["--verify"]])
def test_info_refuses_a_code_file_entry_that_disagrees_with_its_file_as_score_does(index, cli, field, verify):
    """info --verify said the index was sound (exit 0) while score refused it (exit 6): info never ran the reader's
    checks of a code file's rows and tokens, nor of the shard each entry codes."""
    data = manifest(index)
    _code_entry_edit(field)(data["search"]["shards"][0])
    (index / "manifest.json").write_text(json.dumps(data))
    for command in (["info", index, *verify], ["score", index, "--query", "alpha"]):
        result = cli(*command)
        assert result.exit_code == 6 and "Traceback" not in result.output, (command, result.output)
        named = "rows/tokens do not match the manifest" if field != "shard" else "does not list the manifest's shards"
        assert named in result.stderr, (command, result.stderr)


def test_a_manifest_whose_nbits_is_not_its_codecs_is_refused_by_score_and_encode(index, cli, colbert_ckpt):
    """info refused the manifest's nbits 4 over a 2-bit codec (exit 6), score searched with the codec (exit 0) and
    an encode re-run coded with it, recording the codes as 4-bit."""
    data = manifest(index)
    data["search"]["nbits"] = 4
    (index / "manifest.json").write_text(json.dumps(data))
    message = "the codec has nbits 2; the manifest says nbits 4"
    corpus = index.parent / "corpus.jsonl"
    write_jsonl(corpus, corpus_rows(41))
    for command in (["score", index, "--query", "alpha"], ["encode", corpus, "--model", colbert_ckpt, "-o", index, "-q"]):
        result = cli(*command)
        assert result.exit_code == 6 and message in result.stderr, (command, result.output)


def test_info_verify_records_the_structures_hashed_files_once(colbert_ckpt, tmp_path, cli, monkeypatch):
    """info --verify checks the structure's files a group at a time; each group rewrote the whole record of hashed
    files (read, sealed, every entry stat'ed), quadratic in the shards: 2,000 one-row shards took 6 s, not 1."""
    from tokembed.index.verified import VerifiedFiles

    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(20))
    folder = tmp_path / "index"
    assert cli("encode", corpus, "--model", colbert_ckpt, "-o", folder, "--nbits", 1, "--shard-rows", 1, "-q").exit_code == 0
    assert len(manifest(folder)["search"]["shards"]) == 20
    calls = []
    remember = VerifiedFiles.remember
    monkeypatch.setattr(VerifiedFiles, "remember", lambda self, matched: (calls.append(len(matched)), remember(self, matched)))
    assert cli("info", folder, "--verify").exit_code == 0
    assert calls == [21], calls  # the codec and the 20 code files, recorded at once (was 8, 8 and 5)
