"""``encode_corpus`` called as a library caller writes an ``EncodeJob``: str paths, one path alone, a generator
and a ``Path`` model encode as the CLI's ``Path`` lists do, numpy integers as ints; a field of the wrong type is a
``UsageError`` naming it (each was an AttributeError, TypeError or IndexError from inside the run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import read_index, write_jsonl
from tokembed.encode import EncodeJob, encode_corpus
from tokembed.errors import UsageError
from tokembed.settings import EncodeFlags

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
    # each of these was a TypeError or AttributeError; --nbits 2.0 only after every row was encoded
    ("nbits", 2.0, r"--nbits 2.0: must be one of 1, 2, 4"),
    ("nbits", True, r"--nbits True: must be one of 1, 2, 4"),
    ("nbits", "2", r"--nbits '2': must be one of 1, 2, 4"),
    ("flags", None, r"flags: expected an EncodeFlags, got NoneType"),
    ("sources", None, r"sources: expected a SourceOptions, got NoneType"),
    ("flags", EncodeFlags(max_length="16"), r"--max-length '16': must be a whole number"),
    ("flags", EncodeFlags(dimensions=8.0), r"--dimensions 8.0: must be a whole number"),
    ("flags", EncodeFlags(pool_factor=None), r"--pool-factor None: must be a whole number"),
    ("flags", EncodeFlags(normalize="no"), r"normalize 'no' \(--no-normalize\): must be True or False"),
    ("flags", EncodeFlags(revision=5), r"--revision 5: expected a str, got int"),
    ("devices", 5, r"--devices: expected auto, cpu, .* \(a str\), got int"),
])
def test_a_field_of_the_wrong_type_is_a_usage_error_naming_it(corpus, tmp_path, field, value, message):
    job = {"inputs": [corpus], "output": tmp_path / "index", "devices": "cpu", field: value}
    with pytest.raises(UsageError, match=message):
        encode_corpus(EncodeJob(**job))
    assert not (tmp_path / "index").exists()


def test_numpy_integers_in_nbits_and_flags_are_taken_as_ints(checkpoint, corpus, tmp_path):
    """Each was a TypeError from the manifest's JSON after every row was encoded, the output left without one."""
    flags = EncodeFlags(max_length=np.int64(16), pool_factor=np.int64(2))
    job = EncodeJob([corpus], tmp_path / "index", model=checkpoint("stanford"), flags=flags, devices="cpu",
                    nbits=np.int64(2))
    assert encode_corpus(job).rows == 2
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["flags"]["max_length"] == 16 and manifest["flags"]["pool_factor"] == 2
    assert manifest["settings"]["max_length"] == 16 and manifest["search"]["nbits"] == 2
