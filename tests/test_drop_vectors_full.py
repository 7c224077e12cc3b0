"""``encode --full`` of a compressed-only index whose re-encoded vectors code differently (other batches move a
bfloat16 vector by a rounding step): its shards without vectors have the committed generation's bytes, and so
its code files the committed ones' names."""

from __future__ import annotations

import hashlib
import json

from helpers import manifest
from plaid_support import corpus_rows


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
