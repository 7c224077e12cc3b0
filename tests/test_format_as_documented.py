"""The README's "Index format" read literally: a reader that follows it with plain numpy, hashlib and json gets
tokembed's own decoded vectors, seals and refusals (it had colbert-ai's bit order for the residuals, a seal over
UTF-8 JSON, and no word of the packed ids' padding)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from test_score import write_index
from tokembed.errors import IndexCorruptError
from tokembed.index.format import FORMAT, FORMAT_VERSION
from tokembed.index.reader import read_manifest
from tokembed.index.writer import IndexWriter
from tokembed.search.plaid import compress_index

DIM = 20  # at nbits 1 a byte holds 8 dimensions: the last byte of each token is half padding


def _documented_ids(packed: np.ndarray, b: int, tokens: int) -> np.ndarray:
    assert len(packed) == -(-tokens * b // 8) + 2  # the stream, then 2 bytes of padding
    stream = np.unpackbits(packed, bitorder="little")[: tokens * b].reshape(tokens, b)
    return (stream.astype(np.int64) << np.arange(b)).sum(1)


def _documented_buckets(residuals: np.ndarray, nbits: int) -> np.ndarray:
    fields = np.unpackbits(residuals, axis=1).reshape(len(residuals), -1, nbits)[:, :DIM].astype(np.int64)
    return (fields << np.arange(nbits)[::-1]).sum(2)


def _documented_lists(codes: dict) -> list[np.ndarray]:
    ends = np.cumsum(codes["list_counts"].astype(np.int64))
    return np.split(codes["list_rows"].astype(np.int64), ends[:-1])


@pytest.mark.parametrize("nbits,lengths", [(1, False), (2, False), (4, False), (2, True)],
                         ids=["nbits1", "nbits2", "nbits4", "nbits2-lengths"])
def test_a_reader_following_the_readme_decodes_tokembeds_vectors(tmp_path, monkeypatch, nbits, lengths):
    from tokembed.search.plaid import codec as codec_module
    from tokembed.search.plaid.codec import Codec
    from tokembed.search.plaid.codes import ShardCodes

    rng = np.random.default_rng(nbits)
    docs = []
    for n in rng.integers(3, 20, size=40):
        v = rng.standard_normal((n, DIM)) * (rng.uniform(0.5, 3.0, size=(n, 1)) if lengths else 1)
        docs.append((v if lengths else v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16))
    folder = write_index(tmp_path / "index", docs, shard_rows=25)
    if lengths:  # as for --no-normalize or --pool-factor vectors
        monkeypatch.setattr(codec_module, "needs_vector_norms", lambda manifest: True)
    compress_index(folder, nbits=nbits, centroids=16)
    search = json.loads((folder / "manifest.json").read_text())["search"]
    assert ("vector_norms" in search) == lengths  # absent, not false, where the codes keep no lengths
    codec_tensors = load_file(folder / search["codec"]["file"])
    assert ("vector_norms" in codec_tensors) == lengths
    if lengths:
        assert codec_tensors["vector_norms"].dtype == np.uint8 and codec_tensors["vector_norms"].tolist() == [1]
    centroids, weights, cutoffs = (codec_tensors[k].astype(np.float32) for k in ("centroids", "weights", "cutoffs"))
    assert len(cutoffs) == (1 << nbits) - 1 and len(weights) == 1 << nbits
    codec = Codec.from_tensors(codec_tensors, {"nbits": str(nbits)})
    row = 0
    for entry in search["shards"]:
        path = folder / entry["file"]
        codes = load_file(path)
        with safe_open(path, "np") as opened:
            bits = int(opened.metadata()["centroid_id_bits"])  # 16 centroids: 4 bits, packed
        tokens = int(codes["doc_lengths"].astype(np.int64).sum())
        assert (entry["tokens"], entry["rows"]) == (tokens, len(codes["doc_lengths"]))
        assert codes["residuals"].shape == (tokens, -(-DIM * nbits // 8))
        ids = _documented_ids(codes["centroid_ids_packed"], bits, tokens)
        buckets = _documented_buckets(codes["residuals"], nbits)
        y = centroids[ids] + weights[buckets]
        mine = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        if lengths:
            mine *= codes["vector_norms"].astype(np.float32)[:, None]
        stored = np.concatenate(docs[row : row + entry["rows"]]).astype(np.float32)
        assert np.array_equal(buckets, np.searchsorted(cutoffs, stored - centroids[ids], side="right"))

        theirs = ShardCodes.open(path)  # tokembed's own reading, as the compressed-only re-rank decodes it
        assert np.array_equal(ids, np.asarray(theirs.centroid_ids))
        decoded = codec.decode(np.asarray(theirs.centroid_ids), theirs.residuals)
        if lengths:
            decoded *= theirs.vector_norms.astype(np.float32)[:, None]
        np.testing.assert_allclose(mine, decoded, rtol=1e-6, atol=1e-6)

        owners = np.repeat(np.arange(entry["rows"]), codes["doc_lengths"].astype(np.int64))
        lists = _documented_lists(codes)
        assert len(lists) == len(centroids)
        for c, rows in enumerate(lists):
            assert np.array_equal(rows, np.unique(owners[ids == c]))  # ascending, each row once
        row += entry["rows"]


def _documented_seal(manifest: dict) -> str:
    rest = {key: value for key, value in manifest.items() if key != "content_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()


def test_the_documented_seal_recipe_matches_a_manifest_holding_non_ascii(tmp_path):
    folder = tmp_path / "index"
    writer = IndexWriter(folder, 4, "float16")
    writer.write(["a"], [np.eye(4, dtype=np.float16)[:2]], [np.arange(2, dtype=np.int32)], [bytes(32)])
    writer.close_shard()
    shards = [shard.to_json() for shard in writer.shards]
    skipped = [{"id": "café-1", "source": "corpus.jsonl", "row": 1, "reason": "null text"}]
    writer.commit({"format": FORMAT, "format_version": FORMAT_VERSION, "dim": 4, "embedding_dtype": "float16",
                   "shards": shards, "totals": {"rows": 1, "tokens": 2, "bytes": shards[0]["bytes"]},
                   "skipped": skipped})
    text = (folder / "manifest.json").read_text(encoding="utf-8")
    written = json.loads(text)
    assert "café-1" in text  # the file is UTF-8, unescaped; the seal is over the \u00e9 escape
    assert written["content_sha256"] == _documented_seal(written)

    written["skipped"].append({"id": "thé-2", "source": "corpus.jsonl", "row": 2, "reason": "null text"})
    for ascii_only, accepted in ((True, True), (False, False)):
        rest = {key: value for key, value in written.items() if key != "content_sha256"}
        digest = hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":"),
                                           ensure_ascii=ascii_only).encode()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps({**rest, "content_sha256": digest}, indent=2,
                                                         ensure_ascii=False) + "\n", encoding="utf-8")
        if accepted:
            assert [entry["id"] for entry in read_manifest(folder)["skipped"]] == ["café-1", "thé-2"]
        else:
            with pytest.raises(IndexCorruptError, match="does not match its content_sha256"):
                read_manifest(folder)


def test_packed_ids_without_their_padding_are_refused_saying_what_is_expected(tmp_path):
    from tokembed.search.plaid.codes import ShardCodes, pack_ids
    from tokembed.search.plaid.files import write_tensors

    ids = (np.arange(8042) % 64).astype(np.uint16)
    packed = pack_ids(ids, 6)
    assert len(packed) == 6032 + 2 and not packed[-2:].any()
    tensors = {"doc_lengths": np.full(4021, 2, np.uint8), "centroid_ids_packed": packed[:-2],
               "residuals": np.zeros((8042, 3), np.uint8), "list_counts": np.zeros(64, np.uint8),
               "list_rows": np.zeros(0, np.uint16)}
    write_tensors(tmp_path / "stream.safetensors", tensors, {"centroid_id_bits": "6"})
    with pytest.raises(IndexCorruptError, match=r"stream.safetensors: packed centroid ids: 6032 bytes where 8042 ids "
                                                r"of 6 bits take 6034, their 6032-byte stream and the 2 zero bytes"):
        ShardCodes.open(tmp_path / "stream.safetensors")
    write_tensors(tmp_path / "whole.safetensors", {**tensors, "centroid_ids_packed": packed}, {"centroid_id_bits": "6"})
    assert np.array_equal(np.asarray(ShardCodes.open(tmp_path / "whole.safetensors").centroid_ids), ids)
