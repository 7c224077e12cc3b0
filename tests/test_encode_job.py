"""``encode_corpus`` called as a library caller writes an ``EncodeJob``: str paths, one path alone, a generator
and a ``Path`` model encode as the CLI's ``Path`` lists do; a field of the wrong type is a ``UsageError``
naming it (each was an AttributeError, TypeError or IndexError from inside the run)."""

from __future__ import annotations

import pytest

from helpers import read_index, write_jsonl
from tokembed.encode import EncodeJob, encode_corpus
from tokembed.errors import UsageError

ROWS = [{"id": "a", "text": "alpha beta"}, {"id": "b", "text": "gamma delta epsilon"}]


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "docs.jsonl", ROWS)


@pytest.mark.parametrize("given", ["str list", "one path", "generator"])
def test_inputs_and_output_as_str_one_path_or_a_generator(checkpoint, corpus, tmp_path, given):
    model = checkpoint("stanford")  # a Path: was AttributeError 'PosixPath' object has no attribute 'strip'
    inputs = {"str list": [str(corpus)], "one path": corpus, "generator": (path for path in [corpus])}[given]
    summary = encode_corpus(EncodeJob(inputs, str(tmp_path / "index"), model=model, devices="cpu"))
    assert summary.rows == 2 and set(read_index(tmp_path / "index")) == {"a", "b"}


@pytest.mark.parametrize("field, value, message", [
    ("inputs", 3, r"inputs: expected a list of file or folder paths, got int"),
    ("inputs", [None], r"inputs\[0\]: expected a file or folder path \(str or Path\), got NoneType"),
    ("output", None, r"output: expected an index folder path \(str or Path\), got NoneType"),
    ("model", 3, r"--model: expected a checkpoint folder \(str or Path\) or a hub id, got int"),
    ("batch_tokens", "512", r"--batch-tokens '512': must be a whole number"),
    ("batch_tokens", 100.5, r"--batch-tokens 100.5: must be a whole number"),
    ("shard_rows", None, r"--shard-rows None: must be a whole number"),
    ("wait_seconds", "5", r"--wait must be a number of seconds, 0 or more; got '5'"),
])
def test_a_field_of_the_wrong_type_is_a_usage_error_naming_it(corpus, tmp_path, field, value, message):
    job = {"inputs": [corpus], "output": tmp_path / "index", "devices": "cpu", field: value}
    with pytest.raises(UsageError, match=message):
        encode_corpus(EncodeJob(**job))
    assert not (tmp_path / "index").exists()
