"""Pipeline settings of PyLate / sentence-transformers ColBERT checkpoints, each changed on its own from the tiny
builders' values: applied as ``MultiVectorEncoder`` applies them (same ids, vectors within 1e-5), or refused
with exit 4 naming the file and the setting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import manifest, write_parquet
from test_parity import TEXTS, reference_outputs
from tokembed.embedder import Embedder
from tokembed.errors import UsageError
from tokembed.settings import EncodeFlags


def set_keys(file: str, **values):
    def change(path):
        target = path / file
        data = json.loads(target.read_text()) if target.exists() else {}
        data.update(values)
        target.write_text(json.dumps(data))

    return change


def drop_module(type_name: str, then=None):
    def change(path):
        modules = json.loads((path / "modules.json").read_text())
        kept = [module for module in modules if not module["type"].endswith(type_name)]
        (path / "modules.json").write_text(json.dumps(kept))
        if then is not None:
            then(path)

    return change


NO_EXPANSION = set_keys("config_sentence_transformers.json", do_query_expansion=False)
ATTENDED_EXPANSION = set_keys(
    "sentence_bert_config.json", query_expansion={"strategy": "fixed", "attend": True, "token": None, "length": 16}
)
MASK_CONFIG = "2_MultiVectorMask/config.json"
LEFT_PADDING = set_keys("tokenizer_config.json", padding_side="left")


def both(*changes):
    def change(path):
        for each in changes:
            each(path)

    return change


VARIANTS = {
    # query_length still cuts queries when expansion is off; a native save without expansion keeps the model's limit
    "pylate_bert without expansion": ("pylate_bert", NO_EXPANSION, ["query"]),
    "pylate_modernbert without expansion": ("pylate_modernbert", NO_EXPANSION, ["query"]),
    "pylate_xlmr without expansion": ("pylate_xlmr", NO_EXPANSION, ["query"]),
    "native without expansion": ("st_native", set_keys("sentence_bert_config.json", query_expansion=None), ["query"]),
    # MultiVectorMask's skiplist_tasks (a list, or one task as a string) and keep_only_token_ids
    "skiplist on both kinds": ("st_native", set_keys(MASK_CONFIG, skiplist_tasks=["query", "document"]),
                               ["query", "document"]),
    "skiplist on queries only": ("st_native", set_keys(MASK_CONFIG, skiplist_tasks="query"), ["query", "document"]),
    "keep only some ids": ("st_native", set_keys(MASK_CONFIG, keep_only_token_ids=[5, 6, 60, 61, 62, 86]),
                           ["query", "document"]),
    # a native save runs modules.json as written
    "no Normalize module": ("st_native", drop_module("Normalize"), ["query", "document"]),
    "no MultiVectorMask module": ("st_native", drop_module("MultiVectorMask"), ["query", "document"]),
    "no MultiVectorMask, attended expansion": ("st_native", drop_module("MultiVectorMask", ATTENDED_EXPANSION),
                                               ["query"]),
    # a native save's tokenizer pads on the left: MultiVectorEncoder expands queries before the text
    "native left padding": ("st_native", LEFT_PADDING, ["query"]),
    "native left padding, attended expansion": ("st_native", both(LEFT_PADDING, ATTENDED_EXPANSION), ["query"]),
    "native left padding, skiplist on queries": ("st_native", both(LEFT_PADDING, set_keys(MASK_CONFIG, skiplist_tasks="query")),
                                                 ["query"]),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pipeline_setting_matches_multivector_encoder(checkpoint, variant):
    layout, change, kinds = VARIANTS[variant]
    path = checkpoint(layout)
    change(path)
    for kind in kinds:
        expected = reference_outputs(path, TEXTS, kind)
        got = Embedder.load(str(path), EncodeFlags(kind=kind, store_dtype="float32")).embed(TEXTS, batch_tokens=64)
        for text, (ref_ids, ref_vecs), (vecs, ids) in zip(TEXTS, expected, got):
            assert ids.tolist() == ref_ids.tolist(), (variant, kind, text)
            assert vecs.shape == ref_vecs.shape, (variant, kind, text)
            assert np.abs(vecs - ref_vecs).max(initial=0) <= 1e-5, (variant, kind, text)


def test_native_left_padding_expands_queries_before_the_text(checkpoint):
    path = checkpoint("st_native")
    LEFT_PADDING(path)
    embedder = Embedder.load(str(path), EncodeFlags(kind="query", store_dtype="float32"))
    (_, ids), = embedder.embed(["what is bread"])
    expansion = embedder.model.tokenizer.mask_token_id
    assert ids[0] == expansion and ids[-1] != expansion and len(ids) == 16


def test_native_left_padding_documents_match_multivector_encoder_unbatched(checkpoint):
    # MultiVectorEncoder left-pads a batch of documents, which moves the BERT positions of all but the longest;
    # tokembed encodes each document as that reference does alone.
    path = checkpoint("st_native")
    LEFT_PADDING(path)
    got = Embedder.load(str(path), EncodeFlags(store_dtype="float32")).embed(TEXTS, batch_tokens=64)
    for text, (vecs, ids) in zip(TEXTS, got):
        ((ref_ids, ref_vecs),) = reference_outputs(path, [text], "document")
        assert ids.tolist() == ref_ids.tolist(), text
        assert np.abs(vecs - ref_vecs).max(initial=0) <= 1e-5, text


def test_an_index_of_a_native_left_padding_save_scores_queries_expanded_on_the_left(checkpoint, cli, tmp_path):
    path = checkpoint("st_native")
    LEFT_PADDING(path)
    corpus = write_parquet(tmp_path / "texts.parquet", [{"id": "a", "text": "hi"}])
    result = cli("encode", corpus, "-o", tmp_path / "index", "--model", path, "--quiet")
    assert result.exit_code == 0, result.output
    written = manifest(tmp_path / "index")
    assert written["colbert"]["expansion_side"] == "left"
    assert Embedder.for_index(written, kind="query").settings.expansion_side == "left"


def test_the_expansion_side_is_in_the_query_fingerprint_only_where_left():
    from tokembed.settings import ColbertConfig, resolve

    right = resolve(EncodeFlags(kind="query"), ColbertConfig(), 512)
    left = resolve(EncodeFlags(kind="query"), ColbertConfig(expansion_side="left"), 512)
    assert "expansion_side" not in right.to_json() and left.to_json()["expansion_side"] == "left"
    assert left.fingerprint("model") != right.fingerprint("model")
    assert ColbertConfig.from_json(ColbertConfig(expansion_side="left").to_json()).expansion_side == "left"


def test_pool_factor_is_refused_where_the_pipeline_does_not_normalize(checkpoint):
    path = checkpoint("st_native")
    drop_module("Normalize")(path)
    with pytest.raises(UsageError, match="does not normalize"):
        Embedder.load(str(path), EncodeFlags(pool_factor=2))


REFUSED = {
    # MultiVectorEncoder pads queries before the text, PyLate and colbert-ai put their marker among the padding
    "pylate left padding": ("pylate_modernbert", set_keys("tokenizer_config.json", padding_side="left"),
                            "document", "tokenizer_config.json", "padding_side 'left'"),
    "stanford left padding": ("stanford", set_keys("tokenizer_config.json", padding_side="left"),
                              "query", "tokenizer_config.json", "padding_side 'left'"),
    # unattended expansion, no MultiVectorMask: left padding moves the query tokens after unscored expansion positions
    "native left padding, no MultiVectorMask": ("st_native", drop_module("MultiVectorMask", LEFT_PADDING),
                                                "document", "sentence_bert_config.json", "query_expansion"),
    # a mask token the embeddings have no row for: was an IndexError traceback (exit 1) on short queries
    "mask token not in the vocabulary": ("stanford", set_keys("tokenizer_config.json", mask_token="<mask>"),
                                         "query", "tokenizer_config.json", "mask_token '<mask>'"),
    # an explicit expansion token the vocabulary lacks: was queries expanded with [UNK] (the Transformer refuses it)
    "expansion token not in the vocabulary": (
        "st_native", set_keys("sentence_bert_config.json", query_expansion={
            "strategy": "fixed", "attend": False, "token": "[NOPE]", "length": 16}),
        "query", "sentence_bert_config.json", "token '[NOPE]'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_settings_the_references_cannot_agree_on_are_refused(checkpoint, cli, tmp_path, case):
    layout, change, kind, file, named = REFUSED[case]
    path = checkpoint(layout)
    change(path)
    corpus = write_parquet(tmp_path / "texts.parquet", [{"id": "a", "text": "hi"}, {"id": "b", "text": "what is it?"}])
    out = tmp_path / "index"
    result = cli("encode", corpus, "-o", out, "--model", path, "--kind", kind, "--quiet")
    assert result.exit_code == 4, result.output
    assert named in result.stderr and file in result.stderr
    assert not (out / "manifest.json").exists()


def test_the_reference_refuses_an_expansion_token_outside_the_vocabulary(checkpoint):
    from sentence_transformers import MultiVectorEncoder

    path = checkpoint("st_native")
    REFUSED["expansion token not in the vocabulary"][1](path)
    with pytest.raises(ValueError, match="isn't in this tokenizer's vocabulary"):
        MultiVectorEncoder(str(path), device="cpu", local_files_only=True)


def test_settings_at_their_defaults_write_the_manifest_keys_an_earlier_release_reads():
    # An earlier release builds ColbertConfig(**manifest["colbert"]): a key it does not know is a TypeError there.
    from dataclasses import replace

    from tokembed.settings import ColbertConfig, EncodeFlags, resolve

    earlier = {"query_prefix", "document_prefix", "query_length", "document_length", "expand_queries",
               "attend_to_expansion_tokens", "expansion_token", "skiplist_words", "register_prefix_tokens"}
    assert set(ColbertConfig().to_json()) == earlier
    assert "skiplist_tasks" in ColbertConfig(skiplist_tasks=("query",)).to_json()
    document = resolve(EncodeFlags(), ColbertConfig(), 512)
    assert "keep_only_ids" not in document.to_json()
    assert replace(document, keep_only_ids=(5,)).to_json()["keep_only_ids"] == [5]
