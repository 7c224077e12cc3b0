"""Inputs, models, query files and hub caches this user may not reach: exit 3 (input) or 4 (model) naming the path
and "Permission denied", never a PermissionError traceback (exit 1). Each lies in a folder this user may not search
(another user's home, mode 700) or is ``chmod 000``; as root, the commands run in a process that dropped root's
override (``bound_by_permissions``)."""

from __future__ import annotations

import shutil

import pytest

from helpers import write_jsonl
from plaid_support import corpus_rows
from test_refused_paths import bound_by_permissions, compressed  # noqa: F401 (fixtures)

BAD_INPUT, MODEL = 3, 4


@pytest.fixture
def private(tmp_path):
    """A folder this user may not search (mode 0), searchable again after the test."""
    folder = tmp_path / "private"
    folder.mkdir()
    yield folder
    folder.chmod(0o700)


def _refused(result, code: int, path) -> None:
    assert result.returncode == code, result.stderr
    assert str(path) in result.stderr and "Permission denied" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["folder", "jsonl file"])
def test_an_input_in_a_folder_this_user_may_not_search_is_bad_input(private, tmp_path, colbert_ckpt,
                                                                     bound_by_permissions, kind):
    rows = corpus_rows(3)
    if kind == "folder":
        (private / "docs").mkdir()
        (private / "docs" / "a.txt").write_text("alpha")
        given = private / "docs"
    else:
        given = write_jsonl(private / "docs.jsonl", rows)
    private.chmod(0)
    result = bound_by_permissions("encode", given, "--model", colbert_ckpt, "-o", tmp_path / "index", "--quiet")
    _refused(result, BAD_INPUT, given)
    assert not (tmp_path / "index").exists()


def test_a_model_folder_this_user_may_not_search_is_a_model_error(private, tmp_path, colbert_ckpt,
                                                                  bound_by_permissions):
    model = shutil.copytree(colbert_ckpt, private / "model")
    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_rows(3))
    private.chmod(0)
    result = bound_by_permissions("encode", corpus, "--model", model, "-o", tmp_path / "index", "--quiet")
    _refused(result, MODEL, model)


@pytest.mark.parametrize("where", ["chmod 000", "in a private folder"])
def test_a_query_file_this_user_may_not_read_is_bad_input(compressed, private, tmp_path, colbert_ckpt,  # noqa: F811
                                                          bound_by_permissions, where):
    queries = (tmp_path if where == "chmod 000" else private) / "q.txt"
    queries.write_text("alpha\n")
    (queries if where == "chmod 000" else private).chmod(0)
    result = bound_by_permissions("score", queries, compressed, "--model", colbert_ckpt, "--exact")
    _refused(result, BAD_INPUT, queries)


def test_a_hub_cache_this_user_may_not_read_is_a_model_error(hub_cache, checkpoint, tmp_path, bound_by_permissions):
    """Another user's shared HF_HOME, mode 700: the offline look-up's listing of its snapshots raised."""
    hub_cache("org/tiny", checkpoint("pylate_bert"), "a" * 40)
    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_rows(3))
    snapshots = hub_cache.root / "models--org--tiny" / "snapshots"
    snapshots.chmod(0)
    try:
        result = bound_by_permissions("encode", corpus, "--model", "org/tiny", "-o", tmp_path / "index", "--quiet")
    finally:
        snapshots.chmod(0o755)
    _refused(result, MODEL, snapshots)
    assert "cannot read the Hugging Face cache" in result.stderr


def test_an_output_in_a_folder_this_user_may_not_search_is_a_write_error(private, tmp_path, colbert_ckpt,
                                                                         bound_by_permissions):
    # the first run's check of the folder's files raised a PermissionError traceback (exit 1)
    corpus = write_jsonl(tmp_path / "docs.jsonl", corpus_rows(3))
    private.chmod(0)
    result = bound_by_permissions("encode", corpus, "--model", colbert_ckpt, "-o", private / "sub" / "index", "--quiet")
    assert result.returncode == 8, result.stderr
    assert "Permission denied" in result.stderr and "Traceback" not in result.stderr
