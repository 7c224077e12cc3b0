"""The library's switches, ``timings=`` and ``progress=`` of the wrong type are a ``UsageError`` naming them before
the index's model loads (README, "Library"), as its other arguments are: a list as ``timings`` was a TypeError and
an int as ``progress`` an AttributeError once the queries were encoded; ``exact="no"`` counted as True."""

from __future__ import annotations

import numpy as np
import pytest

from test_score import random_docs, write_index
from tokembed.errors import UsageError
from tokembed.index import open_index
from tokembed.search import encode_queries, search, search_vectors


@pytest.fixture
def index(tmp_path, monkeypatch):
    from tokembed.embedder import Embedder

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(Embedder, "for_index", loaded)
    return write_index(tmp_path / "index", random_docs(np.random.default_rng(0), [3, 5, 4]))


QUERY = [np.ones((2, 16), dtype=np.float32)]


@pytest.mark.parametrize("call, message", [
    (lambda index: search(index, ["x"], timings=[]), "timings: expected a dict .* got list"),
    (lambda index: search(index, ["x"], timings=()), "timings: expected a dict .* got tuple"),
    (lambda index: search(index, ["x"], progress=5), r"progress: expected an object with start\(total_rows\) .* got int"),
    (lambda index: search(index, ["x"], progress=True), "progress: .* got bool"),
    (lambda index: search(index, ["x"], exact="no"), "exact='no': must be True or False"),
    (lambda index: search(index, ["x"], allow_model_mismatch="no"), "allow_model_mismatch='no': must be True or False"),
    (lambda index: search(index, ["x"], trust_remote_code=1), "trust_remote_code=1: must be True or False"),
    (lambda index: encode_queries(index, ["x"], timings=[]), "timings: expected a dict .* got list"),
    (lambda index: encode_queries(index, ["x"], allow_model_mismatch="no"), "allow_model_mismatch='no': must be"),
    (lambda index: search_vectors(index, QUERY, progress=5), "progress: .* got int"),
    (lambda index: search_vectors(open_index(index), QUERY, exact="no"), "exact='no': must be True or False"),
    (lambda index: open_index(index, structure="no"), "open_index: structure 'no': must be True or False"),
])
def test_a_switch_timings_or_progress_of_the_wrong_type_is_a_usage_error_before_the_model_loads(index, call, message):
    with pytest.raises(UsageError, match=message):
        call(index)


def test_a_dict_for_timings_and_an_object_with_start_and_advance_for_progress_are_taken(index):
    class Progress:
        def start(self, total_rows):
            self.total = total_rows

        def advance(self, rows, tokens):
            self.rows = rows

    progress = Progress()
    assert len(search_vectors(index, QUERY, top_k=2, progress=progress, exact=True)[0]) == 2
    assert progress.total == 3
