"""A PyLate / sentence-transformers ColBERT checkpoint whose query expansion width (PyLate ``query_length``, a native
``query_expansion`` length) is more than the model's positions: PyLate and ``MultiVectorEncoder`` pad every query to
it and fail on each one; tokembed refuses colbert queries (exit 4) naming the file and the key, as it refuses a
Stanford ``query_maxlen`` (``tests/test_stanford_markers.py``), where it used to expand them to the positions.
Documents and raw mode encode. Without expansion the length only cuts: tokembed matches the reference on every
query the reference encodes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import write_parquet
from test_colbert_pipeline_settings import NO_EXPANSION, both, drop_module, set_keys
from test_parity import TEXTS, reference_outputs
from tokembed.embedder import Embedder
from tokembed.errors import ModelError
from tokembed.settings import EncodeFlags

WIDE_EXPANSION = set_keys("sentence_bert_config.json",
                          query_expansion={"strategy": "fixed", "attend": False, "token": None, "length": 600})
WIDE = {
    "pylate query_length": ("pylate_bert", set_keys("config_sentence_transformers.json", query_length=600),
                            r"config_sentence_transformers\.json: query_length 600"),
    "native query_expansion length": ("st_native", WIDE_EXPANSION,
                                      r"sentence_bert_config\.json: query_expansion length 600"),
    # tokembed drops the unscored expansion here, but the reference still pads every query to its length
    "native, no MultiVectorMask": ("st_native", drop_module("MultiVectorMask", WIDE_EXPANSION),
                                   r"sentence_bert_config\.json: query_expansion length 600"),
}


@pytest.mark.parametrize("case", sorted(WIDE))
def test_an_expansion_width_past_the_positions_fails_the_reference_on_every_query(checkpoint, case):
    from sentence_transformers import MultiVectorEncoder

    layout, change, _ = WIDE[case]
    path = checkpoint(layout)
    change(path)
    reference = MultiVectorEncoder(str(path), device="cpu", local_files_only=True)
    for text in ("hi", ""):
        with pytest.raises(RuntimeError, match=r"\(600\) must match .* \(512\)"):
            reference.encode_query([text])


@pytest.mark.parametrize("case", sorted(WIDE))
def test_an_expansion_width_past_the_positions_is_refused_for_queries_only(checkpoint, cli, tmp_path, case):
    layout, change, named = WIDE[case]
    path = checkpoint(layout)
    change(path)
    with pytest.raises(ModelError, match=named + " is more than this model's 512 positions"):
        Embedder.load(str(path), EncodeFlags(kind="query"))
    corpus = write_parquet(tmp_path / "docs.parquet", [{"id": "a", "text": "hello"}])
    result = cli("encode", corpus, "-o", tmp_path / "queries", "--model", path, "--kind", "query")
    assert result.exit_code == 4 and "600 is more than" in result.stderr, result.output
    # documents and raw mode read no query width: they encode (an index they built stays searchable raw)
    assert cli("encode", corpus, "-o", tmp_path / "docs", "--model", path).exit_code == 0
    assert cli("encode", corpus, "-o", tmp_path / "raw", "--model", path, "--mode", "raw").exit_code == 0
    assert cli("score", "--query", "hello", tmp_path / "raw").exit_code == 0
    result = cli("score", "--query", "hello", tmp_path / "docs")
    assert result.exit_code == 4 and "600 is more than" in result.stderr, result.output


@pytest.mark.parametrize("layout, change", [
    ("pylate_bert", both(NO_EXPANSION, set_keys("config_sentence_transformers.json", query_length=600))),
    ("st_native", set_keys("sentence_bert_config.json", query_expansion=None, query_length=600)),
])
def test_a_query_length_past_the_positions_without_expansion_cuts_as_the_reference(checkpoint, layout, change):
    # the reference fails only on a query longer than the positions (as on such a document), which tokembed cuts
    path = checkpoint(layout)
    change(path)
    expected = reference_outputs(path, TEXTS, "query")
    got = Embedder.load(str(path), EncodeFlags(kind="query", store_dtype="float32")).embed(TEXTS, batch_tokens=64)
    for text, (ref_ids, ref_vecs), (vecs, ids) in zip(TEXTS, expected, got):
        assert ids.tolist() == ref_ids.tolist(), text
        assert vecs.shape == ref_vecs.shape and np.abs(vecs - ref_vecs).max(initial=0) <= 1e-5, text


def _backbone_query_length(length: int):
    """A PyLate save with no flat ``query_length``, and a ``query_length`` in the Transformer's own config."""
    def change(path):
        st_config = json.loads((path / "config_sentence_transformers.json").read_text())
        st_config.pop("query_length")
        (path / "config_sentence_transformers.json").write_text(json.dumps(st_config))
        set_keys("sentence_bert_config.json", query_length=length)(path)

    return change


def test_the_transformers_own_query_length_caps_and_does_not_set_the_expansion_width(checkpoint):
    # MultiVectorEncoder expands a PyLate save to its flat query_length, else 32; the Transformer's key only caps
    path = checkpoint("pylate_bert")
    _backbone_query_length(40)(path)
    expected = reference_outputs(path, TEXTS, "query")
    got = Embedder.load(str(path), EncodeFlags(kind="query", store_dtype="float32")).embed(TEXTS, batch_tokens=64)
    assert {len(ids) for ids, _ in expected} == {32}
    for text, (ref_ids, ref_vecs), (vecs, ids) in zip(TEXTS, expected, got):
        assert ids.tolist() == ref_ids.tolist(), text
        assert np.abs(vecs - ref_vecs).max(initial=0) <= 1e-5, text


EXPANSION_32 = {"strategy": "fixed", "attend": False, "token": None, "length": 32}


@pytest.mark.parametrize("layout, change, named", [
    ("pylate_bert", _backbone_query_length(20), "sentence_bert_config"),
    ("st_native", set_keys("sentence_bert_config.json", query_length=20, query_expansion=EXPANSION_32),
     "sentence_bert_config"),
    # PyLate's flat query_length caps where the expansion comes from a query_expansion dict, not from it
    ("pylate_bert", set_keys("config_sentence_transformers.json", query_expansion=EXPANSION_32, query_length=20),
     "config_sentence_transformers"),
    ("pylate_bert", both(set_keys("config_sentence_transformers.json", do_query_expansion=False, query_length=20),
                         set_keys("sentence_bert_config.json", query_expansion=EXPANSION_32)),
     "config_sentence_transformers"),
])
def test_a_query_length_under_the_expansion_width_is_refused_as_the_reference_refuses_it(checkpoint, layout, change,
                                                                                         named):
    from sentence_transformers import MultiVectorEncoder

    path = checkpoint(layout)
    change(path)
    with pytest.raises(ValueError, match="query_length=20 is smaller than query_expansion"):
        MultiVectorEncoder(str(path), device="cpu", local_files_only=True)
    with pytest.raises(ModelError, match=named + r"\.json: query_length 20 is smaller than the query expansion "
                                                 r"length 32"):
        Embedder.load(str(path), EncodeFlags())


def test_a_flat_query_length_beside_a_transformers_own_expansion_is_no_cap(checkpoint):
    # sentence-transformers folds the flat key into an expansion of its own, which the saved one overrides: no cap
    path = checkpoint("st_native")
    expansion = json.loads((path / "sentence_bert_config.json").read_text())["query_expansion"]
    set_keys("config_sentence_transformers.json", query_length=expansion["length"] // 2)(path)
    expected = reference_outputs(path, TEXTS, "query")
    got = Embedder.load(str(path), EncodeFlags(kind="query", store_dtype="float32")).embed(TEXTS, batch_tokens=64)
    for text, (ref_ids, ref_vecs), (vecs, ids) in zip(TEXTS, expected, got):
        assert ids.tolist() == ref_ids.tolist(), text
        assert np.abs(vecs - ref_vecs).max(initial=0) <= 1e-5, text


def test_a_flat_query_length_beside_a_transformers_null_expansion_cuts_nothing(checkpoint):
    # the Transformer's query_expansion: null overrides the expansion sentence-transformers folds the flat key into
    path = checkpoint("pylate_bert")
    both(set_keys("config_sentence_transformers.json", query_length=8),
         set_keys("sentence_bert_config.json", query_expansion=None))(path)
    expected = reference_outputs(path, TEXTS, "query")
    got = Embedder.load(str(path), EncodeFlags(kind="query", store_dtype="float32")).embed(TEXTS, batch_tokens=64)
    assert max(len(ids) for ids, _ in expected) > 8
    for text, (ref_ids, ref_vecs), (vecs, ids) in zip(TEXTS, expected, got):
        assert ids.tolist() == ref_ids.tolist(), text
        assert np.abs(vecs - ref_vecs).max(initial=0) <= 1e-5, text


def _same_as_the_reference(path, kind):
    expected = reference_outputs(path, TEXTS, kind)
    got = Embedder.load(str(path), EncodeFlags(kind=kind, store_dtype="float32")).embed(TEXTS, batch_tokens=64)
    for text, (ref_ids, ref_vecs), (vecs, ids) in zip(TEXTS, expected, got):
        assert ids.tolist() == ref_ids.tolist(), text
        assert np.abs(vecs - ref_vecs).max(initial=0) <= 1e-5, text
    return expected


@pytest.mark.parametrize("change", [
    # PyLate's flat query_length would cap (expansion off), but the Transformer's saved null wins: no cut
    both(set_keys("config_sentence_transformers.json", do_query_expansion=False, query_length=8),
         set_keys("sentence_bert_config.json", query_length=None)),
    # nor a cap under the width to refuse
    both(set_keys("config_sentence_transformers.json", query_expansion=EXPANSION_32, query_length=20),
         set_keys("sentence_bert_config.json", query_length=None)),
], ids=["no expansion", "expansion"])
def test_a_transformers_saved_null_query_length_is_no_cap(checkpoint, change):
    path = checkpoint("pylate_bert")
    change(path)
    expected = _same_as_the_reference(path, "query")
    assert max(len(ids) for ids, _ in expected) > 20


@pytest.mark.parametrize("layout, saved", [("pylate_bert", 12), ("st_native", 12), ("st_native", None)])
def test_the_transformers_saved_document_length_wins_over_the_flat_key(checkpoint, layout, saved):
    # the flat key is only a default for the Transformer's own (sentence-transformers' setdefault); null: no cut
    path = checkpoint(layout)
    both(set_keys("config_sentence_transformers.json", document_length=40),
         set_keys("sentence_bert_config.json", document_length=saved))(path)
    expected = _same_as_the_reference(path, "document")
    longest = max(len(ids) for ids, _ in expected)
    assert longest <= saved if saved else longest > 40  # (skipped punctuation leaves fewer than the cut)


@pytest.mark.parametrize("layout, file, key", [("st_native", "sentence_bert_config.json", "document_length"),
                                               ("st_native", "sentence_bert_config.json", "query_length"),
                                               ("pylate_bert", "config_sentence_transformers.json", "document_length")])
def test_a_length_of_0_is_refused_naming_it(checkpoint, layout, file, key):
    # sentence-transformers hands the tokenizer max_length 0: no cut at all, not even at max_seq_length
    path = checkpoint(layout)
    set_keys(file, **{key: 0})(path)
    with pytest.raises(ModelError, match=rf"{file}: {key} 0 is not a positive number of tokens"):
        Embedder.load(str(path), EncodeFlags())


@pytest.mark.parametrize("file, values, named", [
    ("sentence_bert_config.json", {"document_length": -1}, "document_length -1 is not a positive number of tokens"),
    ("sentence_bert_config.json", {"query_length": "12"}, "query_length '12' is not a positive number of tokens"),
    ("sentence_bert_config.json", {"query_expansion": {**EXPANSION_32, "length": 0}},
     "query_expansion length 0 is not a positive number of tokens"),
    ("sentence_bert_config.json", {"query_expansion": {**EXPANSION_32, "attend": "no"}},
     "query_expansion attend 'no' is not true or false"),
    ("sentence_bert_config.json", {"query_expansion": {**EXPANSION_32, "lenght": 32}},
     r"query_expansion has unknown keys \['lenght'\]"),
    ("sentence_bert_config.json", {"query_expansion": {"attend": False, "length": 32}},
     "query_expansion strategy None is not 'fixed' or 'min'"),
    ("sentence_bert_config.json", {"query_expansion": {**EXPANSION_32, "strategy": "min"}},
     "query_expansion strategy 'min' is not supported"),
    ("sentence_bert_config.json", {"query_expansion": [32]}, r"query_expansion \[32\] is not an object"),
])
def test_settings_the_transformer_refuses_are_refused_naming_them(checkpoint, file, values, named):
    from sentence_transformers import MultiVectorEncoder

    path = checkpoint("st_native")
    set_keys(file, **values)(path)
    if "query_expansion" in named and "not supported" not in named:  # the reference checks the expansion only
        with pytest.raises((ValueError, TypeError, AttributeError)):
            MultiVectorEncoder(str(path), device="cpu", local_files_only=True)
    with pytest.raises(ModelError, match=rf"{file}: {named}"):
        Embedder.load(str(path), EncodeFlags())


def _index_an_earlier_release_built(cli, checkpoint, tmp_path):
    """A PyLate save with only the Transformer's ``query_length`` 40, and its index as the release before this one
    wrote it: that release took the key for the expansion width and recorded ``colbert.query_length`` 40 (its
    documents, which no query width reaches, and their settings fingerprint are this release's)."""
    from helpers import manifest, write_manifest

    path = checkpoint("pylate_bert")
    _backbone_query_length(40)(path)
    corpus = write_parquet(tmp_path / "docs.parquet", [{"id": f"d{i}", "text": text} for i, text in enumerate(TEXTS)])
    folder = tmp_path / "index"
    assert cli("encode", corpus, "-o", folder, "--model", path, "-q").exit_code == 0
    current = manifest(folder)
    earlier = json.loads(json.dumps(current))
    earlier["colbert"]["query_length"] = 40
    write_manifest(folder, earlier)
    return path, folder, current


def test_an_index_an_earlier_release_recorded_40_wide_queries_for_is_scored_with_the_reference_width(
        cli, checkpoint, tmp_path):
    # the queries are the ones this release (and MultiVectorEncoder) encode, not 40-wide ones, before any encode run
    from tokembed.search import encode_queries

    path, folder, _ = _index_an_earlier_release_built(cli, checkpoint, tmp_path)
    expected = reference_outputs(path, TEXTS, "query")
    got = encode_queries(folder, TEXTS)
    for text, (ref_ids, ref_vecs), vecs in zip(TEXTS, expected, got):
        assert vecs.shape == ref_vecs.shape == (32, ref_vecs.shape[1]), text
        assert np.abs(vecs - ref_vecs).max(initial=0) <= 1e-5, text


def test_score_and_serve_read_the_query_width_of_an_earlier_releases_index_as_a_rebuild_would(
        cli, checkpoint, tmp_path):
    from helpers import write_manifest
    from tokembed.serve import EmbeddingService

    path, folder, current = _index_an_earlier_release_built(cli, checkpoint, tmp_path)
    earlier = cli("score", folder, "--query", TEXTS[0], "--query", TEXTS[2])
    service = EmbeddingService.load(None, "cpu", index=str(folder))
    try:
        assert service.profiles["index"].encoder.settings.expand_to == 32
        assert service.profiles["query"].encoder.settings.expand_to == 32
    finally:
        service.close()
    write_manifest(folder, current)  # as this release's encode run writes it
    rebuilt = cli("score", folder, "--query", TEXTS[0], "--query", TEXTS[2])
    assert earlier.exit_code == rebuilt.exit_code == 0, earlier.output
    assert earlier.stdout == rebuilt.stdout


def test_an_index_of_queries_keeps_the_query_settings_it_was_encoded_with(cli, checkpoint, tmp_path):
    # its vectors are queries: an earlier release's 40-wide ones are scored against 40-wide queries until re-encoded
    from helpers import manifest, write_manifest
    from tokembed.search import encode_queries

    path = checkpoint("pylate_bert")
    _backbone_query_length(40)(path)
    corpus = write_parquet(tmp_path / "queries.parquet", [{"id": "q", "text": "what is the capital of france?"}])
    folder = tmp_path / "index"
    assert cli("encode", corpus, "-o", folder, "--model", path, "--kind", "query", "-q").exit_code == 0
    assert encode_queries(folder, ["hi"])[0].shape[0] == 32
    earlier = manifest(folder)
    earlier["colbert"]["query_length"] = 40
    earlier["settings"]["expand_to"] = earlier["settings"]["max_length"] = 40
    write_manifest(folder, earlier)
    assert encode_queries(folder, ["hi"])[0].shape[0] == 40


def _document_length_read_otherwise(cli, checkpoint, tmp_path):
    """An index of a PyLate save whose Transformer says document_length 12 beside the flat 40, as a release that
    took the flat key recorded it."""
    from helpers import manifest, write_manifest

    path = checkpoint("pylate_bert")
    both(set_keys("config_sentence_transformers.json", document_length=40),
         set_keys("sentence_bert_config.json", document_length=12))(path)
    corpus = write_parquet(tmp_path / "docs.parquet", [{"id": f"d{i}", "text": text} for i, text in enumerate(TEXTS)])
    folder = tmp_path / "index"
    assert cli("encode", corpus, "-o", folder, "--model", path, "-q").exit_code == 0
    current = manifest(folder)
    earlier = json.loads(json.dumps(current))
    earlier["colbert"]["document_length"] = earlier["settings"]["max_length"] = 40
    write_manifest(folder, earlier)
    return folder, current


def test_score_and_serve_warn_of_documents_this_release_reads_otherwise(cli, checkpoint, tmp_path, caplog):
    from helpers import write_manifest
    from tokembed.serve import EmbeddingService

    folder, current = _document_length_read_otherwise(cli, checkpoint, tmp_path)
    warning = "the index's documents were encoded by a release that read the checkpoint otherwise (document_length 40, now 12)"
    result = cli("score", folder, "--query", "hello")
    assert result.exit_code == 0 and f"tokembed: warning: {warning}" in result.stderr, result.output
    service = EmbeddingService.load(None, "cpu", index=str(folder))
    service.close()
    assert warning in caplog.text
    write_manifest(folder, current)  # as this release's next encode run writes it
    result = cli("score", folder, "--query", "hello")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output


def test_a_reading_the_index_was_encoded_without_is_named():
    from tokembed.index_colbert import documents_read_otherwise

    weights, dtype = "weight files by the reference's names", "sub-models built in the run's dtype"
    manifest = {"settings": {"kind": "document", "dtype": "float32", "reading": [weights]}}
    assert documents_read_otherwise(manifest, None, (weights,), "float32") == []
    assert documents_read_otherwise(manifest, None, (dtype,), "float32") == [f"reading {dtype!r}"]
    assert documents_read_otherwise({"settings": {**manifest["settings"], "reading": []}}, None, (weights,),
                                    "bfloat16") == [f"reading {weights!r}"]
    # a reading of the dtype queries are loaded in says nothing of documents encoded in another (a GPU's bfloat16)
    assert documents_read_otherwise({"settings": {**manifest["settings"], "dtype": "bfloat16"}}, None, (dtype,),
                                    "float32") == []
    assert documents_read_otherwise({"settings": {"kind": "query"}}, None, (dtype,), "float32") == []
