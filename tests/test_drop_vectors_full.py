"""``encode --full`` of a compressed-only index: where its re-encoded vectors code differently (other batches move
a bfloat16 vector by a rounding step), its shards without vectors have the committed generation's bytes, and so
its code files the committed ones' names; where they code the same, the drift does not count them."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path

import pytest

from helpers import manifest, write_jsonl
from plaid_support import corpus_rows, edited, tokembed


def test_a_full_run_on_a_compressed_only_index_commits_the_code_files_it_vouches_for(tmp_path, cli, checkpoint):
    """The new codes were linked only where no file of their size had the name: the committed generation's stayed,
    under a manifest that gave the new ones' sha256, and score, info --verify and the next encode said exit 6."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in corpus_rows(300)))
    folder, model = tmp_path / "index", checkpoint("raw_encoder")
    common = ["-o", folder, "--model", model, "--shard-rows", 100, "--dtype", "bfloat16", "-q"]
    assert cli("encode", corpus, "--nbits", 4, "--drop-vectors", *common).exit_code == 0
    assert cli("encode", corpus, "--full", "--batch-tokens", 64, *common).exit_code == 0
    entries = manifest(folder)["search"]["shards"]
    for entry in entries:
        assert hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], entry["file"]
    assert any(entry["file"].endswith(f"-{entry['sha256'][:12]}.safetensors") for entry in entries)  # the case tested
    assert cli("info", folder, "--verify").exit_code == 0
    query = tmp_path / "q.txt"
    query.write_text(corpus_rows(1)[0]["text"] + "\n")
    assert cli("score", query, folder).exit_code == 0
    result = cli("compress", folder)  # looked the committed codes up by the name without their sha256: exit 2
    assert result.exit_code == 0, result.output
    assert manifest(folder)["search"]["shards"] == entries  # unchanged shards keep their code files, names and all
    assert cli("encode", corpus, *common).exit_code == 0  # the next cron run
    for entry in manifest(folder)["search"]["shards"]:
        assert hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest() == entry["sha256"], entry["file"]
    assert cli("info", folder, "--verify").exit_code == 0


def test_a_full_run_counts_as_drift_only_the_rows_it_codes_anew(tmp_path, cli, checkpoint):
    """A compressed-only index's shards are written anew by ``--full`` (with vectors, dropped before the commit), so
    none kept its code file by name, and every token counted as coded since training even where its codes came out
    byte for byte as before: 100% drift, new centroids due on the next cron run. Rows coded to the codes the replaced
    generation holds for them count as carried, as on an index with its vectors; changed and new rows still count,
    and a changed model trains new centroids."""
    rows = corpus_rows(60)
    corpus, changed_corpus = write_jsonl(tmp_path / "corpus.jsonl", rows), write_jsonl(tmp_path / "edited.jsonl", edited(rows))
    folder, model = tmp_path / "index", checkpoint("raw_encoder")
    common = ["--model", model, "--shard-rows", 25]
    assert cli("encode", corpus, "-o", folder, "--nbits", 2, "--drop-vectors", *common, "-q").exit_code == 0
    built = manifest(folder)["search"]
    assert cli("encode", corpus, "-o", folder, "--full", *common, "-q").exit_code == 0
    again = manifest(folder)["search"]
    assert again["vectors"] == "dropped" and again["codec"] == built["codec"]
    assert [entry["sha256"] for entry in again["shards"]] == [entry["sha256"] for entry in built["shards"]]
    assert again["drift"] == built["drift"] and again["drift"]["tokens_coded_since_training"] == 0
    assert again["last_run"] == {"coded_tokens": 0, "carried_tokens": manifest(folder)["totals"]["tokens"]}
    nightly = cli("encode", corpus, "-o", folder, *common)
    assert nightly.exit_code == 0 and "new centroids are due" not in nightly.output

    incremental = tmp_path / "incremental"  # codes exactly the changed and new rows
    shutil.copytree(folder, incremental)
    assert cli("encode", changed_corpus, "-o", incremental, *common, "-q").exit_code == 0
    changed = manifest(incremental)["search"]["last_run"]["coded_tokens"]
    assert cli("encode", changed_corpus, "-o", folder, "--full", *common, "-q").exit_code == 0
    edited_full = manifest(folder)["search"]
    tokens = manifest(folder)["totals"]["tokens"]
    assert edited_full["codec"] == built["codec"]
    assert 0 < changed <= edited_full["last_run"]["coded_tokens"] < tokens
    assert edited_full["drift"]["tokens_coded_since_training"] == edited_full["last_run"]["coded_tokens"]

    _change_weights(model)
    assert cli("encode", changed_corpus, "-o", folder, "--full", *common, "-q").exit_code == 0
    retrained = manifest(folder)["search"]
    assert retrained["codec"] != built["codec"] and retrained["drift"]["tokens_coded_since_training"] == 0
    assert retrained["last_run"] == {"coded_tokens": tokens, "carried_tokens": 0}


# real encode subprocesses (torch import, model load): the kill before the commit, as other resume tests, is slow
@pytest.mark.parametrize("kill_at", [pytest.param("commit", marks=pytest.mark.slow), "committed"])
def test_a_full_run_killed_at_its_commit_counts_its_coded_tokens_once(tmp_path, cli, checkpoint, kill_at):
    """Killed after its commit, before its clean-up, a --full of a compressed-only index left its code files (named
    for its shards with vectors) and their .coded.json figures; the next identical --full wrote the same shards,
    took those figures as a killed run's to resume from and counted the committed run's coded tokens a second time.
    Killed before its commit, the rerun still takes them: the same drift as an uninterrupted run."""
    rows = corpus_rows(60)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", rows)
    reference, folder, model = tmp_path / "reference", tmp_path / "index", checkpoint("raw_encoder")
    common = ["--model", model, "--shard-rows", 25, "-q"]
    assert cli("encode", corpus, "-o", folder, "--nbits", 2, "--drop-vectors", *common).exit_code == 0
    shutil.copytree(folder, reference)
    write_jsonl(corpus, edited(rows))
    assert cli("encode", corpus, "-o", reference, "--full", *common).exit_code == 0
    killed = tokembed("encode", corpus, "-o", folder, "--full", *common, env={"TOKEMBED_TEST_KILL_AT": kill_at})
    assert killed.returncode == -signal.SIGKILL
    assert list((folder / "plaid").glob("*.coded.json"))  # the figures the killed run left
    assert cli("encode", corpus, "-o", folder, "--full", *common).exit_code == 0
    got, want = manifest(folder)["search"], manifest(reference)["search"]
    assert want["drift"]["tokens_coded_since_training"] > 0
    assert got["drift"] == want["drift"] and got["codec"] == want["codec"]
    rerun = {"coded_tokens": 0, "carried_tokens": manifest(folder)["totals"]["tokens"]}  # a second --full, coding none
    assert got["last_run"] == (want["last_run"] if kill_at == "commit" else rerun)
    assert not list((folder / "plaid").glob("*.coded.json"))
    assert cli("info", folder, "--verify").exit_code == 0

def _change_weights(model: Path) -> None:
    """One tensor of the checkpoint halved: another model, to the index's weights digest."""
    from safetensors.numpy import load_file, save_file

    weights = model / "model.safetensors"
    state = load_file(str(weights))
    name = next(name for name in sorted(state) if name.endswith("attention.self.query.weight"))
    state[name] = state[name] * 0.5
    save_file(state, str(weights), metadata={"format": "pt"})
