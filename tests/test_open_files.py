"""An index of many shards under a low limit on open files (``ulimit -n``): the CLI raises its soft limit to the
hard one; past the hard one, opening the index's files is exit 8 naming the limit, never a traceback or a corrupt
index; what never searches through the structure holds one file per shard, not two."""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys

import pytest

from helpers import exec_after, write_parquet
from plaid_support import corpus_rows
from tokembed.index.reader import open_index

SHARDS = 60
LIMIT = 100  # above the shards, below the shards and the structure's files (2 * SHARDS + 1) held at once


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory, checkpoint_store):
    """(index of SHARDS one-row shards with a search structure, a query file)."""
    from cli.main import run

    root = tmp_path_factory.mktemp("many-shards")
    corpus = write_parquet(root / "corpus.parquet", corpus_rows(SHARDS))
    folder = root / "index"
    args = ["encode", corpus, "-o", folder, "--model", checkpoint_store("pylate_bert"), "--shard-rows", 1, "--nbits", 2, "-q"]
    assert run([str(a) for a in args]) == 0
    (root / "q.txt").write_text("alpha beta gamma\n")
    return folder, root / "q.txt"


def tokembed_limited(args, soft: int, hard: int) -> subprocess.CompletedProcess:
    """The CLI in a process started with RLIMIT_NOFILE (soft, hard)."""
    limit = f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))"
    return subprocess.run(exec_after(limit, [sys.executable, "-m", "cli.main", *args]), capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def commands(folder, queries, out) -> dict[str, list]:
    return {
        "info": ["info", folder],
        "info --verify": ["info", "--verify", folder],
        "export": ["export", folder, "--to", out, "--format", "parquet"],
        "score --exact": ["score", queries, folder, "--top-k", 2, "--exact"],
    }


@pytest.mark.slow  # a CLI subprocess under a low limit; its sibling past the hard limit runs by default
def test_the_cli_raises_its_soft_limit_to_the_hard_one_and_reads_an_index_of_many_shards(many_shards, tmp_path):
    """With a soft limit of 100 (the hard one higher) every command failed with a traceback (OSError: Too many open
    files, while importing a module): an open index held 2 * 60 + 1 files."""
    folder, queries = many_shards
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 4 * SHARDS:
        pytest.skip(f"the hard limit on open files here is {hard}")
    searches = {**commands(folder, queries, tmp_path / "out"), "score": ["score", queries, folder, "--top-k", 2]}
    for name, args in searches.items():
        result = tokembed_limited(args, LIMIT, hard)
        assert result.returncode == 0, (name, result.stderr)
    assert "searched with the index's structure" in result.stderr


def test_past_the_hard_limit_opening_the_index_is_exit_8_naming_the_limit(many_shards, tmp_path):
    """Under ``ulimit -n 100`` (hard too): what never searches through the structure holds the shards alone and
    works; a structure search, which needs more, says which limit it reached, not a traceback or "corrupt"."""
    folder, queries = many_shards
    for name, args in commands(folder, queries, tmp_path / "out").items():
        result = tokembed_limited(args, LIMIT, LIMIT)
        assert result.returncode == 0, (name, result.stderr)
    result = tokembed_limited(["score", queries, folder, "--top-k", 2], LIMIT, LIMIT)
    assert result.returncode == 8, result.stderr
    assert "tokembed: too many open files: " in result.stderr and f"may hold {LIMIT} open files" in result.stderr
    assert "ulimit -n" in result.stderr and "Traceback" not in result.stderr and "corrupt" not in result.stderr


def test_an_index_opened_without_its_structure_holds_one_file_per_shard(many_shards):
    folder, _ = many_shards

    def held(**options) -> int:
        before = len(os.listdir("/proc/self/fd"))
        index = open_index(folder, **options)
        count = len(os.listdir("/proc/self/fd")) - before
        del index
        return count

    assert held(structure=False) == SHARDS
    assert held() == 2 * SHARDS + 1  # the codec and a code file per shard: a structure search reads its own generation


def test_a_structure_file_that_cannot_be_mapped_for_want_of_descriptors_is_not_a_corrupt_index(compressed, monkeypatch):
    """mmap takes a descriptor of its own: EMFILE there was "index corrupt: ... cannot map the file", exit 6, with
    the hint that ``compress --retrain`` rebuilds the structure."""
    from cli._errors import exit_code_for
    from tokembed.errors import TokembedError
    from tokembed.search import search_vectors
    from tokembed.search.plaid import files

    class NoDescriptors:
        def mmap(self, *args, **kwargs):
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

        def __getattr__(self, name):
            import mmap

            return getattr(mmap, name)

    folder, _, queries = compressed
    monkeypatch.setattr(files, "mmap", NoDescriptors())
    with pytest.raises(TokembedError, match=r"codec-.*: cannot be opened: this process may hold \d+ open files") as caught:
        search_vectors(folder, queries[:1], top_k=3)
    assert exit_code_for(caught.value) == (8, "too many open files")
