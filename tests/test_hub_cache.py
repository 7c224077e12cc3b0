"""Hub ids from a Hugging Face cache as downloads leave it: huggingface_hub 2.x's file list of the commit
(``trees/<sha>.json``), files `hf download --include/--exclude` left out, links to blobs that are gone, refs naming
commits that never arrived, short commit hashes."""

from __future__ import annotations

import json
import os

from tokembed.models.resolve import resolve_model

SHA_A, SHA_B, SHA_NEW = "a" * 40, "b1b2b3b4" + "b" * 32, "d" * 40


def _docs(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "mars is the red planet"}\n{"id": "b", "text": "venus is hot"}\n')
    return docs


def _file_list(snapshot, *also: str) -> None:
    """The commit's file list huggingface_hub 2.x writes at every online snapshot_download: the snapshot's files and
    ``also`` (files of the commit the download left out)."""
    names = {path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*") if path.is_file()} | set(also)
    trees = snapshot.parent.parent / "trees"
    trees.mkdir(exist_ok=True)
    files = {name: {"size": 10, "blob_id": "0" * 40} for name in names}
    (trees / f"{snapshot.name}.json").write_text(json.dumps({"format_version": 1, "files": files}))


def _break_link(file) -> None:
    """``file`` becomes a link to a blob that is not there (deleted from the cache, or never downloaded)."""
    file.unlink()
    os.symlink(f"../../blobs/{'9' * 64}", file)


def test_a_snapshot_missing_only_files_tokembed_does_not_read_loads(checkpoint, hub_cache, tmp_path, cli):
    """`hf download --include "*.json" "*.safetensors" vocab.txt` (no README, no .gitattributes) or `--exclude
    "*.bin"` (no pytorch_model.bin beside model.safetensors): huggingface_hub's offline check raised
    IncompleteSnapshotError and tokembed said "not in the Hugging Face cache". A download that never finished
    (model.safetensors missing) was said the same; it is named."""
    snapshot = hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A)
    _file_list(snapshot, "README.md", ".gitattributes", "pytorch_model.bin")
    assert resolve_model("org/tiny").path == snapshot
    (snapshot / "model.safetensors").unlink()
    result = cli("encode", _docs(tmp_path), "--model", "org/tiny", "-o", tmp_path / "index")
    assert result.exit_code == 4, result.output
    assert "is incomplete (a download that never finished)" in result.stderr
    assert "not there: model.safetensors" in result.stderr and "README" not in result.stderr
    assert f"hf download org/tiny --revision {SHA_A}" in result.stderr


def test_a_broken_link_or_an_unknown_pylate_prefix_is_refused(checkpoint, hub_cache, tmp_path, cli):
    """tokenizer.json a link to a missing blob: the tokenizer was read from vocab.txt, without the [Q]/[D] tokens
    only tokenizer.json holds, and the markers were encoded as text (exit 0, vectors off by up to 0.5). A PyLate
    prefix that is no token of the tokenizer: PyLate adds it with a random embedding, so it is refused too."""
    docs = _docs(tmp_path)
    snapshot = hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A)
    _break_link(snapshot / "tokenizer.json")
    local = checkpoint("pylate_bert")
    _break_link(local / "tokenizer.json")
    for model in ("org/tiny", local):
        result = cli("encode", docs, "--model", model, "-o", tmp_path / "index")
        assert result.exit_code == 4, result.output
        assert "tokenizer.json is a broken link to a missing file" in result.stderr
    (local / "tokenizer.json").unlink()  # no tokenizer.json at all: vocab.txt is the tokenizer
    result = cli("encode", docs, "--model", local, "-o", tmp_path / "index")
    assert result.exit_code == 4, result.output
    assert "the PyLate query_prefix '[Q] ' is not a token of this tokenizer" in result.stderr


def test_a_cache_that_lacks_the_commit_asked_for_says_what_it_has(checkpoint, hub_cache, tmp_path, cli):
    """A dangling config.json said "unknown checkpoint layout (no config.json; files: config.json, ...)"; refs/main
    naming a commit with no snapshot said "not in the Hugging Face cache"; a short hash of a cached commit said
    "not in the cache (other revisions of it are)" and hinted `hf download --revision <short>`."""
    docs, index = _docs(tmp_path), tmp_path / "index"
    snapshot = hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A)
    hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_B, ref=None)
    _break_link(snapshot / "config.json")
    result = cli("encode", docs, "--model", "org/tiny", "-o", index)
    assert result.exit_code == 4 and "config.json is a broken link" in result.stderr, result.output
    (snapshot.parent.parent / "refs" / "main").write_text(SHA_NEW)
    result = cli("encode", docs, "--model", "org/tiny", "-o", index)
    assert result.exit_code == 4, result.output
    assert "refs/main in the Hugging Face cache" in result.stderr and f"names commit {SHA_NEW}" in result.stderr
    assert f"cached: {SHA_A}, {SHA_B}" in result.stderr
    result = cli("encode", docs, "--model", "org/tiny", "--revision", SHA_B[:8], "-o", index)
    assert result.exit_code == 4, result.output
    assert "'b1b2b3b4' is a short commit hash" in result.stderr and f"--revision {SHA_B}" in result.stderr


def test_a_cache_with_commits_but_no_ref_to_main_names_them(checkpoint, hub_cache, tmp_path, cli):
    """`hf download ORG/NAME --revision SHA` (what tokembed's own hints say) writes no refs/main: `--model ORG/NAME`
    said "not a local folder, not in the Hugging Face cache" and hinted `hf download ORG/NAME`. No snapshot is
    picked: which commit main is cannot be known."""
    docs, index = _docs(tmp_path), tmp_path / "index"
    hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_A, ref=None)
    result = cli("encode", docs, "--model", "org/tiny", "-o", index)
    assert result.exit_code == 4, result.output
    assert "has no refs/main" in result.stderr and f"cached: {SHA_A}" in result.stderr
    assert f"--revision {SHA_A}" in result.stderr and "hf download org/tiny)" in result.stderr
    snapshot = hub_cache("org/tiny", checkpoint("pylate_bert"), SHA_B, ref=None)
    (snapshot.parent.parent / "refs" / "pr").mkdir(parents=True)
    (snapshot.parent.parent / "refs" / "pr" / "1").write_text(SHA_B)
    result = cli("encode", docs, "--model", "org/tiny", "-o", index)
    assert result.exit_code == 4, result.output
    assert f"cached: {SHA_A}, {SHA_B} (pr/1)" in result.stderr and not (index / "manifest.json").exists()


def test_hf_hub_offline_is_read_as_huggingface_hub_reads_it(hub_cache, tmp_path, cli, monkeypatch):
    """HF_HUB_OFFLINE=ON puts huggingface_hub offline, yet tokembed knew only 1/true/yes: it asked the hub, and an
    uncached model said "the hub could not be reached (OfflineModeIsEnabled ...)"."""
    from huggingface_hub import constants

    hub_cache("org/other", tmp_path, SHA_A)  # only this test's own cache
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as huggingface_hub read it at import
    monkeypatch.setenv("HF_HUB_OFFLINE", "ON")
    result = cli("encode", _docs(tmp_path), "--model", "org/missing", "-o", tmp_path / "index")
    assert result.exit_code == 4, result.output
    assert "(HF_HUB_OFFLINE is set)" in result.stderr and "OfflineModeIsEnabled" not in result.stderr
    from tokembed.models.hub import offline_setting

    for value, expected in (("on", "HF_HUB_OFFLINE"), ("Yes", "HF_HUB_OFFLINE"), ("0", None), ("off", None)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert offline_setting() == expected, value
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert offline_setting() is None  # HF_HUB_OFFLINE=off is set: huggingface_hub reads it alone
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert offline_setting() == "TRANSFORMERS_OFFLINE"
