"""Damage around an index, and what every command makes of it.

* Once a run's manifest is written, nothing that fails after it may undo it: the clean-up of files no manifest
  lists skips what is not ours (a folder a user put there) with a warning, and an error after the commit leaves
  the committed shards in place.
* A manifest that parses but lacks a field, holds one of the wrong type, lists a shard twice or totals that are
  not the sums of its shards' counts, is a corrupt index (exit 6) naming the field, for every reader.
* A damaged search structure stops the structure's search, not ``score --exact``, which reads the vectors only.
* A damaged shard stops ``compress`` before its vectors are trained on or coded.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from helpers import manifest, read_index, write_jsonl, write_manifest
from plaid_support import clustered_docs, corpus_rows, edited
from test_score import write_index


@pytest.fixture()
def compressed(tmp_path, cli, colbert_ckpt):
    """A compressed ColBERT index of 60 rows: (index folder, corpus file, its rows)."""
    rows = corpus_rows(60)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", rows)
    index = tmp_path / "index"
    assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--shard-rows", 20, "--quiet").exit_code == 0
    assert cli("compress", index, "--centroids", 16, "--quiet").exit_code == 0
    return index, corpus, rows


def listed_files(index) -> set[str]:
    entries = manifest(index)
    return {shard["file"] for shard in entries["shards"]} | {entry["file"] for entry in entries["search"]["shards"]}


def assert_readable(index, cli) -> None:
    for path in listed_files(index):
        assert (index / path).is_file(), path
    assert cli("info", index, "--verify").exit_code == 0
    result = cli("score", "--query", "alpha beta", index, "--top-k", 3)
    assert result.exit_code == 0, result.output


def test_a_folder_among_the_index_files_is_left_alone_and_the_rerun_commits(compressed, cli, colbert_ckpt):
    index, corpus, rows = compressed
    code_name = "plaid/codes-000000000000000000000000-000000000000.safetensors"
    (index / code_name).mkdir()  # named like a code file, but a folder
    (index / "plaid" / "notes").mkdir()  # named like nothing of tokembed's: not its to remove, nothing said
    (index / "data" / "part-000099.arrow").mkdir()  # named like a shard, but a folder
    old_shards = {shard["file"] for shard in manifest(index)["shards"]}
    write_jsonl(corpus, edited(rows))

    result = cli("encode", corpus, "--model", colbert_ckpt, "-o", index)

    assert result.exit_code == 0, result.output
    assert "tokembed: warning: " in result.stderr and f"{code_name}: a folder among tokembed's own files; left alone" in result.stderr
    assert "notes" not in result.stderr and (index / code_name).is_dir()
    assert (index / "plaid" / "notes").is_dir() and (index / "data" / "part-000099.arrow").is_dir()
    assert set(read_index(index)) == {row["id"] for row in edited(rows)}
    replaced = old_shards - {shard["file"] for shard in manifest(index)["shards"]}
    assert replaced and not any((index / path).exists() for path in replaced)  # the rest was still cleaned up
    assert_readable(index, cli)
    quiet = cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--quiet")  # cron: only errors on stderr
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_a_failure_after_the_commit_keeps_the_committed_shards(compressed, cli, colbert_ckpt, monkeypatch):
    index, corpus, rows = compressed
    write_jsonl(corpus, edited(rows))

    def clean_up_fails(folder, manifest):
        raise OSError("clean-up failed")

    monkeypatch.setattr("tokembed.encode._remove_stale_structure", clean_up_fails)
    with pytest.raises(OSError, match="clean-up failed"):
        cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--quiet")

    assert set(read_index(index)) == {row["id"] for row in edited(rows)}  # the new generation, whole
    assert_readable(index, cli)


def test_dropping_vectors_with_a_folder_in_the_structure_completes_its_clean_up(compressed, cli):
    index, _, _ = compressed
    (index / "plaid" / "codes-000000000000000000000000-000000000000.safetensors").mkdir()  # a code file's name
    before = {shard["file"] for shard in manifest(index)["shards"]}

    result = cli("compress", index, "--drop-vectors")

    assert result.exit_code == 0, result.output
    assert "left alone" in result.stderr
    assert not any((index / path).exists() for path in before)  # the shards with vectors are freed
    assert sorted(p.name for p in (index / "plaid").iterdir() if not p.name.startswith("codes-")) == [
        entry for entry in [manifest(index)["search"]["codec"]["file"].split("/")[-1]]]
    assert cli("score", "--query", "alpha beta", index, "--top-k", 3).exit_code == 0


def scored(cli, index, *flags) -> tuple[int, list]:
    result = cli("score", "--query", "alpha beta", "--query", "kappa mu", index, "--top-k", 5, *flags)
    hits = [(hit["doc_id"], round(hit["score"], 4)) for hit in map(json.loads, result.stdout.splitlines())] if result.exit_code == 0 else []
    return result.exit_code, hits


def flip_a_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["code file altered", "codec gone", "structure folder gone"])
def test_a_damaged_structure_still_answers_score_exact(compressed, cli, tmp_path, damage):
    index, _, _ = compressed
    code, exact = scored(cli, index, "--exact")
    assert code == 0 and exact
    structure = manifest(index)["search"]
    if damage == "code file altered":
        flip_a_byte(index / structure["shards"][0]["file"])
    elif damage == "codec gone":
        (index / structure["codec"]["file"]).unlink()
    else:
        shutil.rmtree(index / "plaid")

    refused = cli("score", "--query", "alpha beta", index)
    assert refused.exit_code == 6 and "hint: score --exact still searches the vectors" in refused.stderr, refused.output
    assert scored(cli, index, "--exact") == (0, exact)


@pytest.mark.parametrize("read", ["to train", "to code"])
def test_compress_refuses_a_shard_damaged_since_its_commit(tmp_path, cli, read):
    """compress trained on and coded a damaged shard's vectors unchecked (exit 0), and the structure then ranked a
    damaged row first for every query. Each shard it reads is checked against the manifest's sha256 first."""
    index = write_index(tmp_path / "index", clustered_docs(np.random.default_rng(5), 120), shard_rows=40, batch_rows=10)
    if read == "to code":  # the shard's code file gone: that shard alone is read, to code it again
        assert cli("compress", index, "--centroids", 16, "--quiet").exit_code == 0
        (index / manifest(index)["search"]["shards"][1]["file"]).unlink()
    before = manifest(index)
    shard = index / before["shards"][1]["file"]
    flip_a_byte(shard)

    result = cli("compress", index, "--centroids", 16)

    assert result.exit_code == 6, result.output
    assert f"{shard}: sha256 does not match the manifest" in result.stderr and "--full" in result.stderr
    assert manifest(index) == before


def edit_manifest(index, edit) -> None:
    data = edit(manifest(index))
    if isinstance(data, dict):
        write_manifest(index, data)  # sealed: the checks after the seal's are what is tested
    else:
        (index / "manifest.json").write_text(json.dumps(data))


def _without(key):
    def edit(data):
        del data[key]
        return data
    return edit


def _setting(path, value):
    def edit(data):
        section = data
        for key in path[:-1]:
            section = section[key]
        section[path[-1]] = value
        return data
    return edit


def _drop_sha256(data):
    del data["shards"][0]["sha256"]
    return data


def _totals_plus(name, extra):
    def edit(data):
        data["totals"][name] += extra
        return data
    return edit


def _first_shard_twice(data):
    """Shard 0 listed again, the totals grown to match: each shard's counts and the sums agree, the list does not."""
    data["shards"].append(dict(data["shards"][0]))
    for name in ("rows", "tokens"):
        data["totals"][name] += data["shards"][0][name]
    return data


def _shard_count_plus(number, name, extra):
    """A shard entry's count changed, and the totals with it (so that they still add up)."""
    def edit(data):
        data["shards"][number][name] += extra
        data["totals"][name] += extra
        return data
    return edit


def _renamed_drift_key(data):
    drift = data["search"]["drift"]
    drift["tooens_coded_since_training"] = drift.pop("tokens_coded_since_training")
    return data


WRONG_SHAPES = {
    "a JSON array": (lambda data: [1, 2], "not a tokembed index manifest"),
    "no shards": (_without("shards"), "no shards"),
    "shards null": (_setting(["shards"], None), "shards is None, not a JSON array"),
    "shards a string": (_setting(["shards"], "x"), "shards is 'x'"),
    "no dim": (_without("dim"), "no dim"),
    "dim a string": (_setting(["dim"], "x"), "dim is 'x', not a JSON integer"),
    "no model": (_without("model"), "no model"),
    "model null": (_setting(["model"], None), "model is None, not a JSON object"),
    "no settings": (_without("settings"), "no settings"),
    "a shard without its sha256": (_drop_sha256, "no shards[0].sha256"),
    "a shard outside the folder": (_setting(["shards", 0, "file"], "../elsewhere.arrow"), "not a path inside the index folder"),
    "a structure without its lists": (_setting(["search"], {"kind": "plaid"}), "no search.codec"),
    "totals.rows more than the shards hold": (_totals_plus("rows", 5), "totals.rows is 65, the shards listed hold 60"),
    "totals.tokens fewer than the shards hold": (_totals_plus("tokens", -1), "totals.tokens is"),
    "a shard listed twice": (_first_shard_twice, "shards[3].file 'data/part-000000.arrow' is listed twice (also shards[0])"),
    "an embedding_dtype no shard is stored in": (_setting(["embedding_dtype"], "float!6"),
                                                 "embedding_dtype is 'float!6', not one of float16, float32"),
    "a drift key renamed": (_renamed_drift_key, "no search.drift.tokens_coded_since_training"),
    "an nbits no codec packs": (_setting(["search", "nbits"], 3), "search.nbits is 3, not one of 1, 2, 4"),
}


@pytest.mark.parametrize("shape", WRONG_SHAPES)
def test_a_manifest_of_the_wrong_shape_is_a_corrupt_index_for_every_reader(compressed, cli, tmp_path, shape):
    index, _, _ = compressed
    edit, message = WRONG_SHAPES[shape]
    edit_manifest(index, edit)
    for command in (["score", "--query", "alpha", index], ["score", "--query", "alpha", index, "--exact"],
                    ["info", index], ["info", index, "--verify"],
                    ["export", index, "--to", tmp_path / "out", "--format", "parquet"]):
        result = cli(*command)
        assert result.exit_code == 6, (command, result.output)
        assert "manifest.json" in result.stderr and message in result.stderr, (command, result.stderr)


@pytest.mark.parametrize("shape", ["a drift key renamed", "an nbits no codec packs"])
def test_a_cron_run_over_a_manifest_of_the_wrong_shape_is_a_corrupt_index(compressed, cli, colbert_ckpt, shape):
    """The re-run failed on the committed manifest's structure: a KeyError traceback (exit 1) for a drift key, and
    "usage error: --nbits 3" (exit 2) for a flag nobody passed."""
    index, corpus, _ = compressed
    edit, message = WRONG_SHAPES[shape]
    edit_manifest(index, edit)
    result = cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--shard-rows", 20, "--quiet")
    assert result.exit_code == 6, result.output
    assert "manifest.json" in result.stderr and message in result.stderr and "Traceback" not in result.output


def test_a_code_file_with_a_tensor_this_release_does_not_know(compressed, cli):
    """Search ignores a tensor it does not use; info counts its bytes as "other" (it used to fail on it)."""
    from tokembed.search.plaid.files import map_tensors, write_tensors

    index, _, _ = compressed
    before = scored(cli, index)
    entries = manifest(index)
    entry = entries["search"]["shards"][0]
    tensors, metadata = map_tensors(index / entry["file"])
    tensors = {name: array.copy() for name, array in tensors.items()}
    extra = tensors["residuals"][:2]
    entry.update(write_tensors(index / entry["file"], {**tensors, "weird_new": extra}, metadata))
    entries["search"]["bytes"] += entry["bytes"] - manifest(index)["search"]["shards"][0]["bytes"]
    write_manifest(index, entries)

    result = cli("info", index, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["search_structure"]["bytes_by_part"]["other"] == extra.nbytes
    assert scored(cli, index) == before


COUNT_EDITS = {
    "rows": (_shard_count_plus(1, "rows", -1), "holds 20 rows, manifest says 19"),
    "tokens": (_shard_count_plus(0, "tokens", 1), "tokens, manifest says"),
    "dim": (_setting(["dim"], 64), "dimensions, manifest says dim 64"),
}


@pytest.mark.parametrize("count", COUNT_EDITS)
def test_a_manifest_whose_counts_disagree_with_its_shards_is_a_corrupt_index(compressed, cli, colbert_ckpt, tmp_path, count):
    """The search structure maps documents by the manifest's counts: counts that disagree with the files would pair
    ids with other documents' codes, so every reader and compress refuse them (exit 6), naming the shard."""
    index, _, _ = compressed
    edit, message = COUNT_EDITS[count]
    edit_manifest(index, edit)
    for command in (["info", index, "--verify"], ["compress", index, "--centroids", 16, "--quiet"],
                    ["score", "--query", "alpha", index], ["score", "--query", "alpha", index, "--exact"],
                    ["export", index, "--to", tmp_path / "out", "--format", "parquet"]):
        result = cli(*command)
        assert result.exit_code == 6, (command, result.output)
        assert "part-" in result.stderr and message in result.stderr, (command, result.stderr)


@pytest.mark.parametrize("damaged", ["shard", "code file"])
def test_an_incremental_run_refuses_to_carry_damaged_rows_or_codes(compressed, cli, colbert_ckpt, tmp_path, damaged):
    """The run copied a damaged row (or its codes) byte for byte into a generation whose manifest vouched for it
    with a fresh sha256: info --verify passed afterwards and the row ranked first for every query (exit 0)."""
    index, corpus, rows = compressed
    entries = manifest(index)
    target = entries["shards"][0]["file"] if damaged == "shard" else entries["search"]["shards"][0]["file"]
    flip_a_byte(index / target)
    before = (index / "manifest.json").read_bytes()
    write_jsonl(corpus, rows + [{"id": "new", "text": "a new row"}])
    result = cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--shard-rows", 20, "--quiet")
    assert result.exit_code == 6 and "sha256 does not match" in result.stderr, result.output
    assert "hint: its rows cannot be carried over: tokembed encode --full" in result.stderr
    assert (index / "manifest.json").read_bytes() == before
    rebuilt = cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--shard-rows", 20, "--quiet", "--full")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert_readable(index, cli)
    assert "new" in read_index(index)


def test_info_reads_the_new_generation_when_a_commit_replaces_the_structure_under_it(compressed, cli, tmp_path, monkeypatch):
    """A compress committing while info read the structure made info call a sound index corrupt (exit 6, once in
    ~1,700 runs of a loop): now it reads the new manifest, as score does."""
    from tokembed.search.plaid import report

    index, _, _ = compressed
    other = tmp_path / "other"
    shutil.copytree(index, other)
    assert cli("compress", other, "--nbits", 4, "--centroids", 16, "--quiet").exit_code == 0
    real, calls = report.structure_facts, []

    def committed_meanwhile(opened):
        calls.append(opened.manifest["search"]["nbits"])
        if len(calls) == 1:  # the writer's commit lands between open_index and the structure's files
            shutil.rmtree(index / "plaid")
            shutil.copytree(other / "plaid", index / "plaid")
            shutil.copy(other / "manifest.json", index / "manifest.json")
        return real(opened)

    monkeypatch.setattr(report, "structure_facts", committed_meanwhile)
    result = cli("info", index, "--json")
    assert result.exit_code == 0, result.output
    assert calls == [2, 4] and json.loads(result.stdout)["search_structure"]["nbits"] == 4


def zero_tensor(path, name: str) -> None:
    """Bit rot inside one tensor of a safetensors file: its bytes zeroed, the file's size and header kept."""
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8 : 8 + length])[name]["data_offsets"]
    data[8 + length + begin : 8 + length + end] = bytes(end - begin)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("tensor", ["list_rows", "residuals"])
@pytest.mark.parametrize("rerun", ["compress", "encode --full"])
def test_a_retrain_codes_a_damaged_code_file_again(compressed, cli, colbert_ckpt, rerun, tensor):
    """A retrain over the same shards trains the same centroids, which name the same code files: the damaged one
    was kept as if a killed run had written it, its new sha256 recorded, info --verify passed and score returned
    wrong hits (exit 0), after the very remedy score's exit 6 had named."""
    index, corpus, _ = compressed
    query = ["score", "--query", "alpha beta", "--query", "kappa mu", index, "--top-k", 5, "--format", "jsonl"]
    sound = cli(*query)
    assert sound.exit_code == 0 and sound.stdout, sound.output
    entry = manifest(index)["search"]["shards"][1]
    zero_tensor(index / entry["file"], tensor)
    assert cli(*query).exit_code == 6
    if rerun == "compress":
        result = cli("compress", index, "--retrain", "--quiet")
    else:
        result = cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--shard-rows", 20, "--full", "--retrain", "--quiet")
    assert result.exit_code == 0, result.output
    coded = manifest(index)["search"]["shards"][1]  # the same centroids: the file coded again, byte for byte
    assert (coded["file"], coded["sha256"]) == (entry["file"], entry["sha256"])
    assert cli("info", index, "--verify").exit_code == 0
    assert cli(*query).stdout == sound.stdout


def test_a_killed_runs_code_file_damaged_since_is_coded_again(compressed, cli, monkeypatch):
    from plaid_support import structure_files
    from tokembed.search.plaid import build, compress_index

    index, _, _ = compressed
    reference = index.parent / "reference"
    shutil.copytree(index, reference)
    assert cli("compress", reference, "--nbits", 4, "--quiet").exit_code == 0

    class Killed(BaseException):
        pass

    def kill_at_the_second_code_file(event, count):
        if (event, count) == ("codes", 2):
            raise Killed

    monkeypatch.setattr(build, "fault_point", kill_at_the_second_code_file)
    with pytest.raises(Killed):
        compress_index(index, nbits=4)
    monkeypatch.undo()
    left = [name for name in structure_files(index) if name.startswith("codes-") and name in structure_files(reference)]
    assert len(left) == 2  # the killed run's, not yet listed
    zero_tensor(index / "plaid" / left[0], "residuals")
    assert cli("compress", index, "--nbits", 4, "--quiet").exit_code == 0
    assert structure_files(index) == structure_files(reference)
    assert cli("info", index, "--verify").exit_code == 0
