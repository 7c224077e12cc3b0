"""The PLAID codec on its own: centroid assignment, residual packing and buckets, the code files' layout."""

from __future__ import annotations

import numpy as np
import pytest

from plaid_support import DIM, clustered_docs
from tokembed.search.plaid.codec import Codec, pack, residual_buckets, train, unpack


@pytest.fixture(params=["faiss", "numpy"])
def search_with(request, monkeypatch):
    """Both ways to find a token's best two centroids: faiss's search where installed, numpy's product without."""
    from tokembed.search.plaid import codec as codec_module

    if request.param == "numpy":
        monkeypatch.setattr(codec_module, "FAISS_MIN_CENTROIDS", codec_module.MAX_CENTROIDS + 1)  # never faiss
    else:
        pytest.importorskip("faiss")
        monkeypatch.setattr(codec_module, "FAISS_MIN_CENTROIDS", 2)  # faiss for these small tests too
        monkeypatch.setattr(codec_module, "FAISS_MIN_ROWS", 1)
    return request.param


def test_centroid_assignment_does_not_depend_on_the_other_tokens_of_the_product(search_with):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((700, DIM)).astype(np.float32)
    centroids = rng.standard_normal((300, DIM)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    codec = Codec(centroids, np.zeros(1, np.float32), np.zeros(2, np.float32), 1)
    whole = codec.assign(x)
    assert np.array_equal(whole, np.concatenate([codec.assign(x[i : i + 1]) for i in range(len(x))]))
    assert np.array_equal(whole[3::7], codec.assign(x[3::7]))
    brute = np.argmax(x.astype(np.float64) @ centroids.astype(np.float64).T, axis=1)
    assert np.array_equal(whole, brute)


def test_near_ties_get_the_float64_argmax_and_exact_ties_the_lowest_id(search_with, monkeypatch):
    from tokembed.search.plaid import codec as codec_module

    monkeypatch.setattr(codec_module, "SCORE_ELEMENTS", 64 * 3)  # scores of 3 tokens at a time: several steps
    rng = np.random.default_rng(5)
    centroids = rng.standard_normal((64, DIM)).astype(np.float16).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids[40] = centroids[7]  # an exact duplicate: every token near it ties, id 7 must win
    a, b = centroids[3].astype(np.float64), centroids[9].astype(np.float64)
    halfway = [(a + b) / 2 + shift * (a - b) for shift in (0.0, 1e-7, -1e-7, 1e-5, -1e-5, 3e-4)]
    x = np.concatenate([np.asarray(halfway, np.float32), centroids[[7, 40]] + 1e-6, rng.standard_normal((50, DIM)).astype(np.float32)])
    codec = Codec(centroids, np.zeros(1, np.float32), np.zeros(2, np.float32), 1)
    exact = x.astype(np.float64) @ centroids.astype(np.float64).T
    expected = np.argmax(exact, axis=1)  # the first of equal maxima: the lowest id
    assert np.array_equal(codec.assign(x), expected)
    assert codec.assign(x)[6] == codec.assign(x)[7] == 7
    with np.errstate(invalid="ignore"):
        nan = codec.assign(np.full((2, DIM), np.nan, np.float32))
    assert (nan < 64).all()  # never an id past the centroids (faiss finds nothing for a NaN vector)


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_pack_round_trip(nbits):
    values = np.random.default_rng(nbits).integers(0, 1 << nbits, size=(9, 20)).astype(np.uint8)
    packed = pack(values, nbits)
    assert packed.shape == (9, -(-20 * nbits // 8))
    assert np.array_equal(unpack(packed, nbits, 20), values)


def test_more_bits_decode_closer_to_the_vectors():
    rng = np.random.default_rng(1)
    x = np.concatenate(clustered_docs(rng, 200)).astype(np.float32)
    errors = []
    for nbits in (1, 2, 4):
        codec = train(x, 64, nbits)
        ids, packed, _ = codec.encode(x)
        cosine = (codec.decode(ids, packed) * x).sum(axis=1)
        centroid_only = (codec.centroids[ids] * x).sum(axis=1)
        assert cosine.mean() > centroid_only.mean()  # the residual code adds information
        errors.append(1 - cosine.mean())
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("nbits", [1, 2, 4])
def test_residual_buckets_are_the_squared_error_optimum_and_beat_colbert_quantiles(nbits):
    values = np.random.default_rng(nbits).laplace(0.0, 0.05, 20_000)  # residuals: peaked, long tails
    levels = 1 << nbits
    cutoffs, weights = residual_buckets(values, levels)
    assert cutoffs.shape == (levels - 1,) and weights.shape == (levels,)
    np.testing.assert_allclose(cutoffs, (weights[1:] + weights[:-1]) / 2, rtol=1e-6)
    buckets = np.searchsorted(cutoffs, values, side="right")
    means = np.array([values[buckets == b].mean() for b in range(levels)])
    np.testing.assert_allclose(weights, means, rtol=1e-4, atol=1e-7)  # Lloyd's fixed point

    quantiles = np.arange(levels) / levels  # colbert-ai's ResidualCodec buckets
    q_cutoffs, q_weights = np.quantile(values, quantiles[1:]), np.quantile(values, quantiles + 0.5 / levels)
    error = np.mean((weights[buckets] - values) ** 2)
    q_error = np.mean((q_weights[np.searchsorted(q_cutoffs, values, side="right")] - values) ** 2)
    assert error < 0.95 * q_error


@pytest.mark.parametrize("longest, k", [(200, 32), (300, 4096), (70_000, 65_536), (90, 2)])
def test_code_files_store_lengths_counts_and_ids_narrowly_and_read_the_offsets_layout_too(tmp_path, longest, k):
    from tokembed.search.plaid.codes import ShardCodes, inverted_lists
    from tokembed.search.plaid.files import map_tensors, write_tensors

    rng = np.random.default_rng(longest)
    lengths = np.concatenate([rng.integers(0, 40, size=50), [longest]])
    ids = rng.integers(0, k, size=int(lengths.sum())).astype(np.uint16)
    ids[:2] = [0, k - 1]
    bits = max(1, (k - 1).bit_length())
    list_offsets, list_rows = inverted_lists(ids, lengths, k)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    residuals = rng.integers(0, 255, size=(len(ids), 4)).astype(np.uint8)
    codes = ShardCodes(offsets, ids, residuals, list_offsets, list_rows, bits)
    codes.write(tmp_path / "new.safetensors")
    stored, metadata = map_tensors(tmp_path / "new.safetensors")
    assert stored["doc_lengths"].dtype == (np.uint8 if longest < 256 else np.uint16 if longest < 65_536 else np.uint32)
    widest_list = int(np.diff(list_offsets).max())
    assert stored["list_counts"].dtype == (np.uint8 if widest_list < 256 else np.uint16) and "doc_offsets" not in stored
    if bits < 16:  # ids packed: bits/8 bytes each, plus 2 padding bytes
        assert "centroid_ids" not in stored and metadata["centroid_id_bits"] == str(bits)
        assert stored["centroid_ids_packed"].nbytes == -(-len(ids) * bits // 8) + 2
    else:
        assert stored["centroid_ids"].dtype == np.uint16 and "centroid_ids_packed" not in stored
    old_layout = {"doc_offsets": offsets, "centroid_ids": ids, "residuals": residuals,
                  "list_offsets": list_offsets, "list_rows": list_rows}  # code files of earlier releases
    write_tensors(tmp_path / "old.safetensors", old_layout)
    wide_counts = {**stored, "list_counts": np.diff(list_offsets).astype(np.uint16)}
    write_tensors(tmp_path / "wide.safetensors", wide_counts, metadata)  # uint16 counts, as before this release
    for name in ("new", "old", "wide"):
        read = ShardCodes.open(tmp_path / f"{name}.safetensors")
        for field in ("doc_offsets", "centroid_ids", "residuals", "list_offsets", "list_rows"):
            assert np.array_equal(np.asarray(getattr(read, field)), getattr(codes, field)), (name, field)
        assert read.rows == len(lengths) and np.array_equal(read.row_codes(50)[0], ids[offsets[50]:])
        picks = rng.integers(0, len(ids), size=500)
        assert np.array_equal(read.centroid_ids[picks], ids[picks]) and len(read.centroid_ids) == len(ids)
        assert np.array_equal(read.centroid_ids[7:len(ids) - 3], ids[7:-3])


def test_list_counts_widen_when_a_list_holds_more_than_255_rows(tmp_path):
    from tokembed.search.plaid.codes import ShardCodes, inverted_lists
    from tokembed.search.plaid.files import map_tensors

    lengths = np.ones(300, np.int64)
    ids = np.zeros(300, np.uint16)  # every row's one token in centroid 0: a list of 300 rows
    list_offsets, list_rows = inverted_lists(ids, lengths, 4)
    offsets = np.arange(301, dtype=np.int64)
    ShardCodes(offsets, ids, np.zeros((300, 4), np.uint8), list_offsets, list_rows, 2).write(tmp_path / "c.safetensors")
    assert map_tensors(tmp_path / "c.safetensors")[0]["list_counts"].dtype == np.uint16
    assert np.array_equal(ShardCodes.open(tmp_path / "c.safetensors").list_offsets, [0, 300, 300, 300, 300])


def test_a_truncated_packed_id_stream_or_an_unknown_layout_is_a_corrupt_index(tmp_path):
    from tokembed.errors import IndexCorruptError
    from tokembed.search.plaid.codes import ShardCodes, pack_ids
    from tokembed.search.plaid.files import write_tensors

    ids = np.arange(100, dtype=np.uint16) % 300
    tensors = {"doc_lengths": np.array([60, 40], np.uint8), "centroid_ids_packed": pack_ids(ids, 9)[:-3],
               "residuals": np.zeros((100, 4), np.uint8), "list_counts": np.zeros(300, np.uint16),
               "list_rows": np.zeros(0, np.uint16)}
    write_tensors(tmp_path / "bad.safetensors", tensors, {"centroid_id_bits": "9"})
    with pytest.raises(IndexCorruptError, match="bad.safetensors.*112 bytes where 100 ids of 9 bits take 115"):
        ShardCodes.open(tmp_path / "bad.safetensors")
    del tensors["centroid_ids_packed"]  # a layout a later release might write
    write_tensors(tmp_path / "later.safetensors", {**tensors, "centroid_ids_v9": ids})
    with pytest.raises(IndexCorruptError, match="later.safetensors: a code file layout .*no centroid_ids.*--exact"):
        ShardCodes.open(tmp_path / "later.safetensors")


def test_decoding_a_centroid_id_past_the_codec_is_reported_not_clipped():
    from tokembed.errors import IndexCorruptError

    rng = np.random.default_rng(3)
    codec = train(rng.standard_normal((400, 8)).astype(np.float32), 16, nbits=2)
    ids, packed, _ = codec.encode(rng.standard_normal((5, 8)).astype(np.float32))
    ids[2] = codec.k
    with pytest.raises(IndexCorruptError, match="centroid id"):
        codec.decode(ids, packed)


def test_training_keeps_identical_centroids_once():
    """k-means with a centroid per sample vector, 40 of them equal: it makes identical centroids, of which all but
    the first took probe slots with empty lists (``assign`` codes a tie to the lowest id)."""
    rng = np.random.default_rng(2)
    sample = rng.standard_normal((60, 16)).astype(np.float32)
    sample[20:] = sample[19]
    codec = train(sample, len(sample), 2)
    assert codec.k < len(sample) and len(np.unique(codec.centroids, axis=0)) == codec.k
    assert len(set(codec.assign(sample[19:]).tolist())) == 1
