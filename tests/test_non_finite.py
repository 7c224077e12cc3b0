"""Vectors holding NaN or inf are never stored nor searched with: a float16 forward that overflows (hidden states
past 65504 become inf, normalized they become NaN) or weights holding NaN. They were stored with exit 0, and
``score`` answered every document with a null score, in file order."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import manifest, read_index, write_parquet

TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "A recipe for apple pie."]


def scaled(checkpoint, change):
    from safetensors.numpy import load_file, save_file

    folder = checkpoint("stanford")
    weights = load_file(str(folder / "model.safetensors"))
    change(weights)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def last_norm(weights, factor=None, value=None):
    for name in ("bert.encoder.layer.1.output.LayerNorm.weight", "bert.encoder.layer.1.output.LayerNorm.bias"):
        weights[name] = weights[name] * factor if value is None else np.full_like(weights[name], value)


@pytest.fixture()
def corpus(tmp_path):
    return write_parquet(tmp_path / "corpus.parquet", [{"id": f"doc{i}", "text": t} for i, t in enumerate(TEXTS)])


def test_a_float16_forward_that_overflows_is_refused_and_float32_stores_it(cli, checkpoint, corpus, tmp_path):
    model = scaled(checkpoint, lambda w: last_norm(w, factor=1e5))  # hidden states ~1e5: inf in float16
    index = tmp_path / "index"
    result = cli("encode", corpus, "--model", model, "-o", index, "--dtype", "float16")
    assert result.exit_code == 2, result.output
    assert "row 'doc0'" in result.stderr and "NaN or inf" in result.stderr and "--dtype bfloat16 or float32" in result.stderr
    assert not (index / "manifest.json").exists()
    assert cli("encode", corpus, "--model", model, "-o", index, "--dtype", "float32", "-q").exit_code == 0
    assert manifest(index)["totals"]["rows"] == len(TEXTS)
    assert all(np.isfinite(vectors).all() for vectors, _ in read_index(index).values())


def test_weights_holding_nan_are_refused_in_float32_too(cli, checkpoint, corpus, tmp_path):
    model = scaled(checkpoint, lambda w: last_norm(w, value=np.nan))
    result = cli("encode", corpus, "--model", model, "-o", tmp_path / "index", "--dtype", "float32")
    assert result.exit_code == 2 and "NaN or inf" in result.stderr and "damaged weights" in result.stderr


def test_a_query_whose_vectors_are_not_finite_is_refused_by_name(cli, checkpoint, corpus, tmp_path, monkeypatch):
    from tokembed.embedder import Embedder
    from tokembed.errors import UsageError
    from tokembed.search import search

    index = tmp_path / "index"
    assert cli("encode", corpus, "--model", checkpoint("stanford"), "-o", index, "-q").exit_code == 0
    embed = Embedder.embed

    def with_nan(self, texts, *args, **kwargs):
        rows = embed(self, texts, *args, **kwargs)
        vectors, ids = rows[-1]
        rows[-1] = (np.full_like(vectors, np.nan), ids)
        return rows

    monkeypatch.setattr(Embedder, "embed", with_nan)
    with pytest.raises(UsageError, match="query 'second': .* NaN or inf"):
        search(index, {"first": "the cat", "second": "apple pie"})


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_the_finiteness_test_agrees_with_numpys_on_every_float16_bit_pattern(dtype):
    from tokembed.embedder import all_finite

    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(dtype)
    finite = np.isfinite(every)
    assert 0 < finite.sum() < len(every)  # inf, -inf and the NaNs among them
    assert all_finite(every[finite]) and all_finite(every[:0])
    for value in every[~finite]:  # each non-finite value alone, at the end of a row, in a strided view
        row = np.concatenate([every[finite][:383], [value]]).reshape(2, 192)
        assert not all_finite(row) and not all_finite(row.T) and not all_finite(row[:, ::-1])
