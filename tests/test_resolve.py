"""Model resolution and fingerprints: which files a fingerprint covers (through linked sub-folders, without the
formats tokembed never reads), --revision and --model refusals, and the messages that name what is missing."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil

import pytest

from helpers import manifest, write_manifest
from tokembed.errors import ModelNotFoundError
from tokembed.models.resolve import model_fingerprint, resolve_model, weights_sha256

SHA_A = "a" * 40


def _docs(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "mars is the red planet"}\n{"id": "b", "text": "venus is hot"}\n')
    return docs


def _negate_weights(file) -> None:
    from safetensors.torch import load_file, save_file

    save_file({name: -tensor for name, tensor in load_file(file).items()}, file, metadata={"format": "pt"})


def test_a_linked_sub_folder_is_fingerprinted_through_the_link(checkpoint, tmp_path, cli):
    """A model whose 1_Dense is a link to a folder elsewhere: the walk did not follow it (Path.rglob on Python
    3.11), so new projection weights kept fingerprint and weights digest: encode said unchanged, and score mixed
    new query vectors with the old documents'."""
    model = checkpoint("pylate_bert")
    store = tmp_path / "store"
    store.mkdir()
    shutil.move(model / "1_Dense", store / "1_Dense")
    (model / "1_Dense").symlink_to(store / "1_Dense", target_is_directory=True)
    docs, index = _docs(tmp_path), tmp_path / "index"
    assert cli("encode", docs, "--model", model, "-o", index, "--quiet").exit_code == 0
    before = manifest(index)["model"]
    _negate_weights(store / "1_Dense" / "model.safetensors")
    assert cli("encode", docs, "--model", model, "-o", index, "--quiet").exit_code == 0
    after = manifest(index)
    assert after["model"]["fingerprint"] != before["fingerprint"]
    assert after["model"]["weights_sha256"] != before["weights_sha256"]
    assert after["stats"]["updated"] == 2 and after["stats"]["unchanged"] == 0


def test_a_link_back_up_the_folder_ends_the_walk(checkpoint, tmp_path):
    """Links are followed, but not one to the folder itself or above it (a cycle)."""
    model = checkpoint("pylate_bert")
    before = model_fingerprint(model), weights_sha256(model)
    (model / "1_Dense" / "loop").symlink_to(model, target_is_directory=True)
    (model / "up").symlink_to(tmp_path, target_is_directory=True)
    assert (model_fingerprint(model), weights_sha256(model)) == before


def test_files_tokembed_never_reads_are_not_fingerprinted(checkpoint):
    """`hf download` of the same commit adds what tokembed's own download skips (openvino/*.bin, onnx/): the
    fingerprint changed, score exited 5 and the next run re-encoded every row with identical vectors."""
    model = checkpoint("pylate_bert")
    before = model_fingerprint(model), weights_sha256(model)
    for name in ("openvino/openvino_model.bin", "onnx/model.onnx", "onnx/config.json", "flax_model.msgpack"):
        (model / name).parent.mkdir(exist_ok=True)
        (model / name).write_bytes(b"not read by tokembed")
    assert (model_fingerprint(model), weights_sha256(model)) == before


def _previous_release_fingerprint(path) -> str:
    """model_fingerprint as the previous release computed it (Path.rglob, every file)."""
    from tokembed.models.resolve import _FINGERPRINT_FILES, _WEIGHT_SUFFIXES, _weight_sample

    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if not file.is_file():
            continue
        rel = file.relative_to(path).as_posix()
        if file.name in _FINGERPRINT_FILES or rel.endswith(("config.json", ".jinja", ".py")) or "chat_template" in file.name:
            digest.update(rel.encode() + b"\0" + file.read_bytes())
        elif file.suffix in _WEIGHT_SUFFIXES:
            digest.update(rel.encode() + b"\0" + _weight_sample(file))
    return digest.hexdigest()


@pytest.mark.parametrize("layout", ["pylate_bert", "stanford"])
def test_an_ordinary_folder_keeps_the_fingerprint_of_the_previous_release(checkpoint, layout):
    model = checkpoint(layout)
    (model / "1_Dense.py").write_text("# sorts after 1_Dense/*: Path order, not string order")
    assert model_fingerprint(model) == _previous_release_fingerprint(model)


def _previous_release_weights_sha256(path) -> str:
    """weights_sha256 as the previous release computed it (every weight file, openvino/*.bin too)."""
    from tokembed.models.resolve import _WEIGHT_SUFFIXES

    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix in _WEIGHT_SUFFIXES:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0" + hashlib.sha256(file.read_bytes()).hexdigest().encode() + b"\0")
    return digest.hexdigest()


def test_an_index_of_the_previous_release_over_a_folder_with_unread_formats_is_still_scored(checkpoint, tmp_path, cli):
    """A git clone of a sentence-transformers repo holds onnx/ and openvino/: the previous release fingerprinted
    them, this one does not, and score refused every such index (exit 5) until it was encoded again."""
    model = checkpoint("pylate_bert")
    for name in ("openvino/openvino_model.bin", "onnx/model.onnx"):
        (model / name).parent.mkdir(exist_ok=True)
        (model / name).write_bytes(b"not read by tokembed")
    index = tmp_path / "index"
    assert cli("encode", _docs(tmp_path), "--model", model, "-o", index, "-q").exit_code == 0
    written = json.loads((index / "manifest.json").read_text())
    assert written["model"]["fingerprint"] != _previous_release_fingerprint(model)
    written["model"].update(fingerprint=_previous_release_fingerprint(model),
                            weights_sha256=_previous_release_weights_sha256(model))
    write_manifest(index, written, sealed=False)  # as the previous release wrote it
    result = cli("score", index, "--query", "alpha", "--model", model)
    assert result.exit_code == 0, result.output
    (model / "openvino" / "openvino_model.bin").write_bytes(b"other bytes: not the files it was built from")
    assert cli("score", index, "--query", "alpha", "--model", model).exit_code == 5


def _hub_adapter(checkpoint, tmp_path, hub_cache):
    """(adapter snapshot, base snapshot): ``someone/tiny-lora`` at commit c... over ``someone/tiny-colbert`` at b..."""
    from colpali_engine_checkpoints import build_adapter
    from tokembed.models.registry import load_model

    base = hub_cache("someone/tiny-colbert", checkpoint("pylate_bert"), "b" * 40)
    lora = build_adapter(copy.deepcopy(load_model(base).backbone), tmp_path / "lora", "someone/tiny-colbert",
                         target_modules=r".*attention\.(self\.(query|value)|output\.dense)$")
    return hub_cache("someone/tiny-lora", lora, "c" * 40), base


def test_an_index_of_an_earlier_release_over_a_hub_adapter_is_still_scored(checkpoint, tmp_path, cli, hub_cache):
    """The release before the previous one hashed the hub commits of an adapter and its base into its fingerprint.
    Reloaded from the snapshot folder the index recorded, the adapter had no commit, that fingerprint was never made
    again, and score refused the index (exit 5) while --model someone/tiny-lora scored it."""
    adapter, base = _hub_adapter(checkpoint, tmp_path, hub_cache)
    index = tmp_path / "index"
    assert cli("encode", _docs(tmp_path), "--model", "someone/tiny-lora", "-o", index, "-q").exit_code == 0
    written = manifest(index)
    assert written["model"]["path"] == str(adapter)
    payload = json.dumps({"adapter": _previous_release_fingerprint(adapter), "adapter_revision": "c" * 40,
                          "base": _previous_release_fingerprint(base), "base_revision": "b" * 40}, sort_keys=True)
    weights = f"{_previous_release_weights_sha256(adapter)}\0{_previous_release_weights_sha256(base)}"
    written["model"].update(fingerprint=hashlib.sha256(payload.encode()).hexdigest(),
                            weights_sha256=hashlib.sha256(weights.encode()).hexdigest())
    write_manifest(index, written, sealed=False)  # as that release wrote it
    result = cli("score", index, "--query", "red planet")
    assert result.exit_code == 0, result.output
    _negate_weights(adapter / "adapter_model.safetensors")
    assert cli("score", index, "--query", "red planet").exit_code == 5


@pytest.mark.parametrize("shadowed", [True, False])
def test_revision_with_a_local_folder_is_a_usage_error(checkpoint, tmp_path, cli, monkeypatch, shadowed):
    """--revision was ignored for a folder, also for a hub id that a folder of the same name shadows (a copy of
    another revision's weights loaded silently) and recorded as if it applied."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    shutil.copytree(checkpoint("pylate_bert"), tmp_path / "org" / "tiny")
    model = "org/tiny" if shadowed else str(tmp_path / "org" / "tiny")
    result = cli("encode", _docs(tmp_path), "--model", model, "--revision", "v1", "-o", tmp_path / "index")
    assert result.exit_code == 2, result.output
    assert "is a local folder" in result.stderr and "--revision v1 applies to hub ids only" in result.stderr
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_an_empty_model_is_a_usage_error(tmp_path, cli, monkeypatch):
    """`--model "$MODEL"` with MODEL unset loaded the folder encode ran in."""
    monkeypatch.chdir(tmp_path)
    result = cli("encode", _docs(tmp_path), "--model", "", "-o", tmp_path / "index")
    assert result.exit_code == 2 and "--model is empty" in result.stderr


def test_revision_with_the_demo_model_is_a_usage_error(tmp_path, cli):
    """No --model: the demo model is an installed folder, and --revision was ignored (exit 0) while the manifest
    recorded flags.revision as if it had pinned a commit."""
    result = cli("encode", _docs(tmp_path), "--revision", "deadbeef", "-o", tmp_path / "index")
    assert result.exit_code == 2, result.output
    assert "the demo model is a local folder" in result.stderr and "--revision deadbeef applies to hub ids only" in result.stderr
    assert not (tmp_path / "index" / "manifest.json").exists()


@pytest.mark.parametrize("flags", [["--base-model", "nosuch/base"], ["--base-revision", "v9"],
                                   ["--base-model", "nosuch/base", "--base-revision", "v9"]])
@pytest.mark.parametrize("demo", [False, True])
def test_base_flags_with_a_model_that_is_no_adapter_are_a_usage_error(checkpoint, tmp_path, cli, flags, demo):
    """--base-model / --base-revision name a PEFT adapter's base: with any other model they were ignored and
    recorded in the manifest's flags."""
    model = [] if demo else ["--model", checkpoint("stanford")]
    result = cli("encode", _docs(tmp_path), *model, *flags, "-o", tmp_path / "index")
    assert result.exit_code == 2, result.output
    assert "to PEFT adapters only" in result.stderr and "is no adapter" in result.stderr
    assert not (tmp_path / "index" / "manifest.json").exists()


@pytest.mark.parametrize("demo", [False, True])
def test_an_index_whose_manifest_recorded_ignored_model_flags_is_still_scored(checkpoint, tmp_path, cli, demo):
    """An earlier release recorded a --revision given with the demo model, and --base-model / --base-revision
    given with a model that is no adapter; score (and serve --index) take the flags from the manifest and must
    not now refuse them."""
    index = tmp_path / "index"
    model = [] if demo else ["--model", checkpoint("stanford")]
    assert cli("encode", _docs(tmp_path), *model, "-o", index, "-q").exit_code == 0
    written = json.loads((index / "manifest.json").read_text())
    written["flags"].update(revision="deadbeef", base_model="nosuch/base", base_revision="v9")
    write_manifest(index, written, sealed=False)
    result = cli("score", index, "--query", "red planet", "-f", "jsonl")
    assert result.exit_code == 0, result.output
    assert {json.loads(line)["doc_id"] for line in result.stdout.splitlines()} == {"a", "b"}


def test_a_revision_missing_from_the_cache_is_named_with_its_download(checkpoint, hub_cache):
    hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A)
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("org/tiny", "nope")
    assert "revision 'nope' is not in the Hugging Face cache" in str(error.value)
    assert "hf download org/tiny --revision nope" in error.value.hint


def test_score_names_the_recorded_model_folder_that_is_gone(checkpoint, tmp_path, cli, monkeypatch):
    """An index encoded with `--model mv1` whose folder was renamed: score called 'mv1' a hub id that is not in the
    Hugging Face cache."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(checkpoint("pylate_bert"), tmp_path / "mv1")
    assert cli("encode", _docs(tmp_path), "--model", "mv1", "-o", tmp_path / "index", "--quiet").exit_code == 0
    (tmp_path / "mv1").rename(tmp_path / "mv2")
    result = cli("score", tmp_path / "index", "--query", "red planet", "-f", "jsonl")
    assert result.exit_code == 4
    assert f"model folder {tmp_path / 'mv1'} (--model 'mv1' when it was encoded) is gone" in result.stderr
    assert "--model" in result.stderr.split("hint:")[1] and "Hugging Face cache" not in result.stderr
    assert cli("score", tmp_path / "index", "--query", "red planet", "--model", "mv2", "-f", "jsonl").exit_code == 0


def test_info_shows_the_hub_revision(checkpoint, hub_cache, tmp_path, cli):
    hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A)
    docs = _docs(tmp_path)
    assert cli("encode", docs, "--model", "org/tiny", "-o", tmp_path / "hub", "--quiet").exit_code == 0
    assert cli("encode", docs, "--model", checkpoint("pylate_bert"), "-o", tmp_path / "local", "--quiet").exit_code == 0
    assert json.loads(cli("info", tmp_path / "hub", "--json").stdout)["model_revision"] == SHA_A
    assert SHA_A in cli("info", tmp_path / "hub").stdout
    assert json.loads(cli("info", tmp_path / "local", "--json").stdout)["model_revision"] is None
    assert "model_revision" not in cli("info", tmp_path / "local").stdout


def _tokenizer_as_vocab_and_merges(model) -> None:
    """The same byte-level BPE tokenizer saved the older way: vocab.json + merges.txt, no tokenizer.json."""
    bpe = json.loads((model / "tokenizer.json").read_text())["model"]
    (model / "vocab.json").write_text(json.dumps(bpe["vocab"]))
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in bpe["merges"]]
    (model / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{merge}\n" for merge in merges))
    (model / "tokenizer.json").unlink()


def _drop_last_merges(model, count: int = 60) -> None:
    lines = (model / "merges.txt").read_text().splitlines()
    (model / "merges.txt").write_text("\n".join(lines[:-count]) + "\n")


def _token_ids(index) -> dict:
    import pyarrow as pa

    return {row["id"]: row["token_ids"] for shard in manifest(index)["shards"]
            for row in pa.ipc.open_file(index / shard["file"]).read_all().select(["id", "token_ids"]).to_pylist()}


def test_a_tokenizer_read_from_vocab_and_merges_is_fingerprinted(checkpoint, tmp_path, cli):
    """Merges removed from merges.txt split every row into more tokens, but the fingerprint hashed neither file: the
    cron re-run kept every row unchanged (the old tokens' vectors), and score mixed new queries with them."""
    model = checkpoint("raw_decoder")
    _tokenizer_as_vocab_and_merges(model)
    docs, index, fresh = tmp_path / "docs.jsonl", tmp_path / "index", tmp_path / "fresh"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": "alpha beta gamma retrieval index token vector " * (i + 1)})
                            + "\n" for i in range(2)))
    assert cli("encode", docs, "--model", model, "-o", index, "--quiet").exit_code == 0
    before = manifest(index)["model"]["fingerprint"]
    _drop_last_merges(model)
    assert cli("score", index, "--query", "alpha beta", "--model", model).exit_code == 5
    assert cli("encode", docs, "--model", model, "-o", index, "--quiet").exit_code == 0
    assert manifest(index)["model"]["fingerprint"] != before and manifest(index)["stats"]["updated"] == 2
    assert cli("encode", docs, "--model", model, "-o", fresh, "--quiet").exit_code == 0
    assert _token_ids(index) == _token_ids(fresh)


def test_slow_tokenizer_files_beside_a_tokenizer_json_are_not_read_nor_fingerprinted(checkpoint):
    """A tokenizer.json wins over vocab.json/merges.txt: hashing them would re-encode every such index for nothing."""
    model = checkpoint("raw_decoder")
    before = model_fingerprint(model)
    (model / "vocab.json").write_text('{"a": 0}')
    (model / "merges.txt").write_text("#version: 0.2\n")
    assert model_fingerprint(model) == before


def test_an_index_of_the_release_that_hashed_no_slow_tokenizer_file_is_still_scored(checkpoint, tmp_path, cli):
    model = checkpoint("raw_decoder")
    _tokenizer_as_vocab_and_merges(model)
    index = tmp_path / "index"
    assert cli("encode", _docs(tmp_path), "--model", model, "-o", index, "--quiet").exit_code == 0
    written = json.loads((index / "manifest.json").read_text())
    earlier = model_fingerprint(model, slow_tokenizer=False)
    assert written["model"]["fingerprint"] != earlier
    written["model"]["fingerprint"] = earlier  # as the release before wrote it
    write_manifest(index, written, sealed=False)
    assert cli("score", index, "--query", "alpha", "--model", model).exit_code == 0
