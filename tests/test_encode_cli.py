"""``tokembed encode`` / ``info`` / ``models`` driven as a user does, with the real demo model."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from helpers import TEXTS, manifest, read_index, write_parquet

CONTRACT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("embeddings", pa.list_(pa.list_(pa.float16(), 384))),
        ("token_ids", pa.list_(pa.int32())),
        ("content_hash", pa.binary(32)),
        ("source_file", pa.string()),  # PDF pages only (null here)
        ("page", pa.int32()),
    ]
)


@pytest.fixture
def corpus(tmp_path):
    return write_parquet(tmp_path / "corpus.parquet", [{"id": f"doc{i}", "text": t} for i, t in enumerate(TEXTS)])


def test_demo_encode_writes_contract_index(cli, corpus, tmp_path):
    out = tmp_path / "index"
    result = cli("encode", corpus, "--output", out)
    assert result.exit_code == 0, result.output
    assert "not a trained ColBERT model" in result.stderr
    data = manifest(out)
    assert data["format"] == "tokembed-index" and data["format_version"] == 1
    assert data["model"]["is_demo"] and data["settings"]["mode"] == "raw"
    assert data["totals"]["rows"] == len(TEXTS) and data["dim"] == 384
    assert len(data["settings_fingerprint"]) == 64 and data["shards"][0]["sha256"]
    shard = out / data["shards"][0]["file"]
    with pa.memory_map(str(shard), "r") as source:
        table = pa.ipc.open_file(source).read_all()
    assert table.schema.equals(CONTRACT_SCHEMA)
    assert table.column("id").to_pylist() == [f"doc{i}" for i in range(len(TEXTS))]  # input order
    lengths = [len(v) for v in table.column("token_ids").to_pylist()]
    assert sum(lengths) == data["totals"]["tokens"]
    assert all(len(h) == 32 for h in table.column("content_hash").to_pylist())


def test_independent_reader_opens_shards(cli, corpus, tmp_path):
    import polars as pl

    out = tmp_path / "index"
    assert cli("encode", corpus, "-o", out).exit_code == 0
    shard = out / manifest(out)["shards"][0]["file"]
    frame = pl.read_ipc(shard)  # polars' own Rust IPC reader, not pyarrow
    rows = read_index(out)
    assert frame["id"].to_list() == list(rows)
    for doc_id, vectors in zip(frame["id"].to_list(), frame["embeddings"].to_list()):
        assert np.array_equal(np.asarray(vectors, dtype=np.float32).reshape(-1, 384), rows[doc_id][0])


def test_raw_mode_matches_transformers_on_real_minilm(cli, corpus, tmp_path, minilm_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "index"
    assert cli("encode", corpus, "-o", out, "--store-dtype", "float32", "--batch-tokens", "300").exit_code == 0
    rows = read_index(out)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path).eval()
    for i, text in enumerate(TEXTS):
        encoded = tokenizer(text, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**encoded).last_hidden_state[0]
        expected = torch.nn.functional.normalize(hidden, dim=-1).numpy()
        vectors, ids = rows[f"doc{i}"]
        assert ids.tolist() == encoded["input_ids"][0].tolist()
        assert np.abs(vectors - expected).max() <= 1e-5
    assert len(rows["doc4"][1]) == 256  # the long text was truncated at the model limit


def test_two_batch_budgets_agree_and_keep_input_order(cli, corpus, tmp_path):
    small, large = tmp_path / "small", tmp_path / "large"
    assert cli("encode", corpus, "-o", small, "--batch-tokens", "64", "--store-dtype", "float32").exit_code == 0
    assert cli("encode", corpus, "-o", large, "--batch-tokens", "100000", "--store-dtype", "float32").exit_code == 0
    a, b = read_index(small), read_index(large)
    assert list(a) == list(b) == [f"doc{i}" for i in range(len(TEXTS))]
    for key in a:
        assert a[key][1].tolist() == b[key][1].tolist()
        assert np.abs(a[key][0] - b[key][0]).max() <= 1e-5


def test_dimensions_truncate_then_renormalize(cli, corpus, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli("encode", corpus, "-o", full, "--store-dtype", "float32", "--no-normalize").exit_code == 0
    assert cli("encode", corpus, "-o", cut, "--store-dtype", "float32", "--dimensions", "64").exit_code == 0
    assert manifest(cut)["dim"] == 64
    raw, short = read_index(full)["doc0"][0], read_index(cut)["doc0"][0]
    expected = raw[:, :64] / np.linalg.norm(raw[:, :64], axis=1, keepdims=True)
    assert np.abs(short - expected).max() <= 1e-5


@pytest.mark.parametrize("dpi, said", [("nan", "'nan' is not a number"), ("NaN", "'NaN' is not a number"),
                                       ("abc", "'abc' is not a number"), ("1201", "1201 is not from 1 to 1200"),
                                       ("0.5", "0.5 is not from 1 to 1200"), ("inf", "inf is not from 1 to 1200")])
def test_a_pdf_dpi_out_of_range_or_no_number_is_said_to_be_so(cli, corpus, tmp_path, dpi, said):
    """nan passed the range check's comparisons and was said to be over 1200."""
    result = cli("encode", corpus, "-o", tmp_path / "index", "--pdf-dpi", dpi)
    assert result.exit_code == 2 and said in result.stderr, result.output
    assert not (tmp_path / "index").exists()


def test_info_reports_the_index(cli, corpus, tmp_path):
    out = tmp_path / "index"
    cli("encode", corpus, "-o", out)
    result = cli("info", out, "--json")
    assert result.exit_code == 0
    facts = json.loads(result.stdout)
    data = manifest(out)
    assert facts["rows"] == len(TEXTS) and facts["tokens"] == data["totals"]["tokens"]
    assert facts["dim"] == 384 and facts["embedding_dtype"] == "float16"
    assert facts["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert facts["bytes_on_disk"] > data["totals"]["bytes"]
    assert facts["bytes_per_token"] == pytest.approx(facts["bytes_on_disk"] / facts["tokens"], abs=0.01)
    table = cli("info", out)
    for word in ("rows", "tokens", "dim", "bytes_per_token", "settings", "model"):
        assert word in table.stdout


def test_info_text_shows_prefixes_as_they_are(cli, corpus, tmp_path, checkpoint):
    """A Stanford checkpoint's prefix "[unused1] " is not rich markup: the table used to drop it."""
    out = tmp_path / "index"
    assert cli("encode", corpus, "--model", checkpoint("stanford"), "-o", out).exit_code == 0
    prefix = manifest(out)["settings"]["prefix"]
    assert prefix.startswith("[")
    result = cli("info", out)
    assert result.exit_code == 0 and f"prefix={prefix.strip()}" in result.stdout


def test_info_text_shows_a_setting_that_is_false(cli, corpus, tmp_path):
    """The table left out every False setting: an index encoded with --no-normalize showed no normalize at all."""
    for flags, shown in (([], "normalize=True"), (["--no-normalize"], "normalize=False")):
        out = tmp_path / f"index{len(flags)}"
        assert cli("encode", corpus, "-o", out, "-q", *flags).exit_code == 0
        result = cli("info", out)
        assert result.exit_code == 0 and shown in result.stdout, result.stdout


def test_json_summary_and_quiet(cli, corpus, tmp_path):
    result = cli("encode", corpus, "-o", tmp_path / "a", "--log-format", "json")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["rows"] == len(TEXTS) and 0 < summary["useful_token_fraction"] <= 1
    assert {"tokens", "seconds", "skipped"} <= set(summary)
    quiet = cli("encode", corpus, "-o", tmp_path / "b", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "" and len(quiet.stdout.strip().splitlines()) == 1


def test_models_lists_every_family(cli):
    from tokembed.models.registry import FAMILIES

    result = cli("models", "--json")
    keys = [f["key"] for f in json.loads(result.stdout)]
    assert keys == list(FAMILIES)
    piped = cli("models").stdout.splitlines()  # not a terminal: whole tab-separated lines, no name cut to fit 80 columns
    assert piped[0].split("\t")[:2] == ["family", "modes"]
    assert [line.split("\t")[0] for line in piped[1:]] == list(FAMILIES)


def test_models_on_a_terminal_names_every_family_whole_within_its_width(monkeypatch):
    from cli.models import _blocks
    from tokembed.models.registry import FAMILIES, describe_families

    monkeypatch.setenv("COLUMNS", "80")
    text = _blocks(describe_families())
    assert [block.splitlines()[0] for block in text.split("\n\n")] == list(FAMILIES)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "tokembed.models.stanford:StanfordColBERT" in text and "…" not in text


def test_every_flag_has_help():
    import typer.main

    from cli.main import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert command.help, name
        for param in command.params:
            if param.name != "help":
                assert getattr(param, "help", None), f"{name} --{param.name} has no help"
