"""``tokembed score`` driven as a user does: encode with the demo model, score, parse the output.

Results are checked against a float64 brute force over the stored vectors (read with pyarrow) and
queries encoded independently with ``Embedder.for_index``. Faults: exit codes 3 (bad input),
5 (model mismatch), 6 (index not found / corrupt).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from helpers import write_jsonl
from tokembed.errors import BadInputError, DeviceError, UsageError
from tokembed.index import open_index
from tokembed.search import encode_queries, load_document, search, search_vectors

DOCS = [
    "The cat sat on the warm mat by the door.",
    "Quantum mechanics describes particles as waves.",
    "Dogs bark loudly at night in the village.",
    "Paris is the capital of France.",
    "A recipe for apple pie with cinnamon.",
    "The stock market fell sharply on Monday.",
    "Cats and dogs are common household pets.",
    "Photosynthesis turns sunlight into chemical energy.",
]
QUERIES = ["where do cats sleep", "", "capital city of France", "baking a pie"]  # line 2 is blank


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory):
    """One index encoded with the demo model (no --model), shared read-only by the tests of this module."""
    from cli.main import run

    root = tmp_path_factory.mktemp("score_cli")
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"doc{i}", "text": t}) + "\n" for i, t in enumerate(DOCS)))
    assert run(["encode", str(corpus), "--output", str(root / "index"), "--quiet"]) == 0
    queries = root / "queries.txt"
    queries.write_text("\n".join(QUERIES) + "\n", encoding="utf-8")
    return root / "index", queries


@pytest.fixture(scope="module")
def expected(demo_index):
    """query id -> [(doc id, score)] best first, from stored vectors and independently encoded queries."""
    from tokembed.embedder import Embedder

    index, _ = demo_index
    manifest = json.loads((index / "manifest.json").read_text())
    ids, docs = [], []
    for shard in manifest["shards"]:
        with pa.memory_map(str(index / shard["file"]), "r") as source:
            table = pa.ipc.open_file(source).read_all()
        ids += table.column("id").to_pylist()
        docs += [np.asarray(v, np.float64).reshape(-1, manifest["dim"]) for v in table.column("embeddings").to_pylist()]
    texts = [q for q in QUERIES if q]
    encoded = Embedder.for_index(manifest, kind="query").embed(texts)
    result = {}
    for qid, (vectors, _) in zip(["1", "3", "4"], encoded):
        q = vectors.astype(np.float64)
        scores = [(q @ d.T).max(axis=1).sum() for d in docs]
        order = sorted(range(len(docs)), key=lambda i: (-scores[i], i))
        result[qid] = [(ids[i], scores[i]) for i in order]
    return result


def check(rows: list[tuple[str, int, str, float]], expected: dict, k: int) -> None:
    """rows: (query id, rank, doc id, score) as printed."""
    by_query: dict[str, list] = {}
    for qid, rank, doc_id, score in rows:
        by_query.setdefault(qid, []).append((rank, doc_id, score))
    assert list(by_query) == list(expected)
    for qid, hits in by_query.items():
        want = expected[qid][:k]
        assert [rank for rank, _, _ in hits] == list(range(1, len(want) + 1))
        assert [doc_id for _, doc_id, _ in hits] == [doc_id for doc_id, _ in want]
        np.testing.assert_allclose([s for _, _, s in hits], [s for _, s in want], atol=1e-3)


def test_jsonl_on_stdout_progress_on_stderr(cli, demo_index, expected):
    index, queries = demo_index
    result = cli("score", queries, index, "--format", "jsonl", "--top-k", 3)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]  # every stdout line is JSON
    assert set(records[0]) == {"query_id", "query", "rank", "doc_id", "score"}
    assert records[0]["query"] == QUERIES[0]
    check([(r["query_id"], r["rank"], r["doc_id"], r["score"]) for r in records], expected, 3)
    assert "skipped 1 blank line(s) (line 2)" in result.stderr
    assert "queries/s" in result.stderr and "document tokens/s" in result.stderr


def test_tsv_to_output_file(cli, demo_index, expected, tmp_path):
    index, queries = demo_index
    out = tmp_path / "run.tsv"
    result = cli("score", queries, index, "--output", out, "-k", 100)  # format from the suffix
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    lines = out.read_text().splitlines()
    assert lines[0] == "query_id\trank\tdoc_id\tscore"
    rows = [(q, int(r), d, float(s)) for q, r, d, s in (line.split("\t") for line in lines[1:])]
    check(rows, expected, 100)  # k > documents: every document
    assert len(rows) == 3 * len(DOCS)


def test_trec_quiet(cli, demo_index, expected):
    index, queries = demo_index
    result = cli("score", queries, index, "--format", "trec", "-k", 1, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    fields = [line.split(" ") for line in result.stdout.splitlines()]
    assert all(f[1] == "Q0" and f[5] == "tokembed" for f in fields)
    check([(f[0], int(f[3]), f[2], float(f[4])) for f in fields], expected, 1)


def test_inline_queries_and_library_search(cli, demo_index, expected):
    index, _ = demo_index
    result = cli("score", index, "--query", "capital city of France", "--query", "baking a pie", "-k", 2, "-f", "jsonl")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["query_id"], r["rank"]) for r in records] == [("q1", 1), ("q1", 2), ("q2", 1), ("q2", 2)]
    assert [r["doc_id"] for r in records] == [d for d, _ in expected["3"][:2]] + [d for d, _ in expected["4"][:2]]
    hits = search(index, {"x": "capital city of France"}, top_k=2, device="cpu")
    assert [(h.id, h.rank) for h in hits[0]] == [(d, r) for r, (d, _) in enumerate(expected["3"][:2], start=1)]


def test_library_encode_queries_takes_a_folder_and_refuses_one_string(demo_index):
    index, _ = demo_index
    [by_path] = encode_queries(str(index), ["capital city of France"])  # was: AttributeError, no .manifest
    [opened] = encode_queries(open_index(index), ["capital city of France"])
    assert np.array_equal(by_path, opened)
    with pytest.raises(BadInputError, match="queries: expected a list of texts .* got one string"):
        encode_queries(open_index(index), "bread")  # was: five queries, one per character
    with pytest.raises(BadInputError, match="queries: query 'q2' is int, not a string"):
        encode_queries(index, ["bread", 1])
    with pytest.raises(UsageError, match=r"query_matrices: expected a list .* shape \(\d+, 384\)"):
        search_vectors(index, by_path)  # one matrix, not wrapped in a list


def test_library_search_takes_a_path_model_and_encode_queries_takes_searchs_devices(demo_index):
    index, _ = demo_index
    folder = Path(json.loads((index / "manifest.json").read_text())["model"]["path"])
    by_path = search(index, ["capital city of France"], top_k=3, model=folder, device="cpu")  # was: AttributeError
    assert by_path == search(index, ["capital city of France"], top_k=3, device="cpu")
    [on_cpu] = encode_queries(index, ["bread"])
    for device in ("auto", None):  # were: a RuntimeError from torch, an AttributeError
        assert encode_queries(index, ["bread"], device=device)[0].shape == on_cpu.shape
    with pytest.raises(DeviceError, match="--device 'gpu': expected auto, cpu, cuda or cuda:N"):
        encode_queries(index, ["bread"], device="gpu")
    with pytest.raises(UsageError, match="--device cpu:2: asks for worker processes"):  # was: encoded on cpu
        encode_queries(index, ["bread"], device="cpu:2")


def test_library_load_document_takes_an_index_and_search_vectors_a_tensor_with_grad(demo_index):
    import torch

    index, _ = demo_index
    vectors, token_ids = load_document(index, "doc3")
    opened_vectors, opened_ids = load_document(open_index(index), "doc3")  # was: "expected an index folder path"
    assert np.array_equal(vectors, opened_vectors) and np.array_equal(token_ids, opened_ids)
    with pytest.raises(BadInputError, match=r"document id 'doc\\ud800' is not valid Unicode \(a lone surrogate"):
        load_document(index, "doc\ud800")  # was: UnicodeEncodeError
    [query] = encode_queries(index, ["capital city of France"])
    tensor = torch.from_numpy(query).requires_grad_()  # was: RuntimeError, can't call numpy() on it
    assert search_vectors(index, [tensor], top_k=2) == search_vectors(index, [query], top_k=2)


@pytest.mark.parametrize("call, error, message", [
    (lambda index: search(index, None), BadInputError, "queries: .* got NoneType"),
    (lambda index: search(None, ["x"]), UsageError, "index_path: .* got NoneType"),
    (lambda index: encode_queries(3, ["x"]), UsageError, "index: .* got int"),
    (lambda index: open_index(None), UsageError, "open_index: .* got NoneType"),
    (lambda index: load_document(3, "doc0"), UsageError, "index_path: .* got int"),
    # before the index's checkpoint is looked up: were a TypeError from pathlib, an AttributeError from the device's
    (lambda index: search(index, ["x"], model=b"x"), UsageError, "--model: .* got bytes"),
    (lambda index: search(index, ["x"], model=5), UsageError, "--model: .* got int"),
    (lambda index: search(index, ["x"], device=5), UsageError, "--device: .* got int"),
    (lambda index: encode_queries(index, ["x"], model=b"x"), UsageError, "--model: .* got bytes"),
    (lambda index: encode_queries(index, ["x"], device=5), UsageError, "--device: .* got int"),
])
def test_library_arguments_of_the_wrong_type_are_tokembed_errors(demo_index, call, error, message):
    with pytest.raises(error, match=message):  # each was a bare TypeError
        call(demo_index[0])


# ---------------------------------------------------------------------------------------------- bad input


def test_missing_index_exits_6(cli, demo_index, tmp_path):
    _, queries = demo_index
    result = cli("score", queries, tmp_path / "nowhere")
    assert result.exit_code == 6
    assert "index not found" in result.stderr and "no such index folder" in result.stderr


def test_missing_shard_exits_6(cli, demo_index, tmp_path):
    index, queries = demo_index
    copy = shutil.copytree(index, tmp_path / "index")
    next((copy / "data").glob("part-*.arrow")).unlink()
    result = cli("score", queries, copy)
    assert result.exit_code == 6
    assert "index corrupt" in result.stderr and "which is missing" in result.stderr


def test_changed_shard_bytes_exit_6(cli, demo_index, tmp_path):
    index, queries = demo_index
    copy = shutil.copytree(index, tmp_path / "index")
    shard = next((copy / "data").glob("part-*.arrow"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, different bytes
    shard.write_bytes(bytes(data))
    result = cli("score", queries, copy, "-f", "jsonl")
    assert result.exit_code == 6
    assert "sha256 does not match the manifest" in result.stderr and shard.name in result.stderr
    assert result.stdout == ""


def test_bad_utf8_query_file_exits_3(cli, demo_index, tmp_path):
    index, _ = demo_index
    queries = tmp_path / "queries.txt"
    queries.write_bytes(b"fine\nnot \xff fine\n")
    result = cli("score", queries, index)
    assert result.exit_code == 3
    assert "bad input" in result.stderr and f"{queries} line 2: not valid UTF-8" in result.stderr


def test_a_null_or_structured_query_id_exits_3_naming_the_line_or_row(cli, demo_index, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    index, _ = demo_index
    jsonl = tmp_path / "queries.jsonl"
    jsonl.write_text('{"id": "a", "text": "cats"}\n{"id": null, "text": "dogs"}\n{"id": {"x": 1}, "text": "pie"}\n')
    result = cli("score", jsonl, index)
    assert result.exit_code == 3 and f"{jsonl} line 2: null id" in result.stderr
    parquet = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"id": [None, "0"], "text": ["cats", "dogs"]}), parquet)
    result = cli("score", parquet, index)
    assert result.exit_code == 3 and f"{parquet} row 1: null id" in result.stderr


def test_a_file_query_id_that_an_inline_query_also_has_exits_3(cli, demo_index, tmp_path):
    """A .tsv query q1 and the first --query (also q1) were one query: the file's came back with the inline
    query's results and the third query was dropped (exit 0)."""
    index, _ = demo_index
    tsv = tmp_path / "queries.tsv"
    tsv.write_text("q1\tcats\nq2\tdogs\n")
    result = cli("score", tsv, index, "--query", "pie", "-f", "jsonl")
    assert result.exit_code == 3 and f"{tsv} and --query: query id 'q1' appears more than once" in result.stderr
    assert cli("score", tsv, index, "-f", "jsonl").exit_code == 0


def test_a_named_id_column_a_query_file_lacks_exits_3(cli, demo_index, tmp_path):
    """Line / row numbers as ids when the file has no id column, as before, but not when --id-column names one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    index, _ = demo_index
    jsonl = tmp_path / "queries.jsonl"
    jsonl.write_text('{"qid": "a", "text": "cats"}\n')
    parquet = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"qid": ["a"], "text": ["cats"]}), parquet)
    for path, says in ((jsonl, f"{jsonl} line 1: no id field 'qid_typo'"), (parquet, f"{parquet}: no id column 'qid_typo'")):
        result = cli("score", path, index, "--id-column", "qid_typo")
        assert result.exit_code == 3 and says in result.stderr, result.output
        found = cli("score", path, index, "--id-column", "qid", "-f", "jsonl", "-k", 1)
        assert found.exit_code == 0 and json.loads(found.stdout)["query_id"] == "a"
        assert json.loads(cli("score", path, index, "-f", "jsonl", "-k", 1).stdout)["query_id"] == "1"


def test_a_column_flag_where_the_queries_have_no_columns_exits_2(cli, demo_index, tmp_path):
    """A .txt file's and --query's queries have no columns: --id-column / --text-column were ignored there (exit 0),
    though a column named must exist; a .tsv file's header line is what they name, so it takes them."""
    index, _ = demo_index
    txt = tmp_path / "queries.txt"
    txt.write_text("cats\n")
    for flag in ("--id-column", "--text-column"):
        for queries, says in (([txt], f"{txt} is a .txt query file"), ([txt, "--query", "dogs"], f"{txt} is a .txt"),
                              (["--query", "cats"], "--query texts have no columns")):
            result = cli("score", *queries, index, flag, "no_such_column")
            assert result.exit_code == 2 and f"{flag} 'no_such_column': {says}" in result.stderr, result.output
    tsv = tmp_path / "queries.tsv"
    tsv.write_text("qid\tquery\na\tcats\n")
    found = cli("score", tsv, index, "--id-column", "qid", "--text-column", "query", "-f", "jsonl", "-k", 1)
    assert found.exit_code == 0 and json.loads(found.stdout)["query_id"] == "a", found.output
    jsonl = tmp_path / "queries.jsonl"
    jsonl.write_text('{"qid": "a", "query": "cats"}\n')
    both = cli("score", jsonl, index, "--query", "dogs", "--id-column", "qid", "--text-column", "query", "-f", "jsonl", "-k", 1)
    assert both.exit_code == 0 and [json.loads(line)["query_id"] for line in both.stdout.splitlines()] == ["a", "q1"]


def cats_and_dogs(cli, tmp_path, cats: str, dogs: str) -> Path:
    """An index of two documents, "cats" and "dogs", under the ids given."""
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": cats, "text": "cats"}, {"id": dogs, "text": "dogs"}])
    assert cli("encode", corpus, "-o", tmp_path / "index", "--quiet").exit_code == 0
    return tmp_path / "index"


def test_ids_a_trec_or_tsv_line_cannot_hold_exit_2_before_writing(cli, tmp_path):
    """trec_eval splits on whitespace and tsv on tabs: "my doc.txt" made 7 fields of a 6-field trec line."""
    index = cats_and_dogs(cli, tmp_path, "my doc.txt", "tab\tdoc")
    out = tmp_path / "run.trec"
    result = cli("score", index, "--query", "cats", "-f", "trec", "-o", out)
    assert result.exit_code == 2 and "document id 'my doc.txt' contains whitespace" in result.stderr
    assert not out.exists()
    result = cli("score", index, "--query", "cats", "-f", "tsv")
    assert result.exit_code == 2 and "document id 'tab\\tdoc' contains a tab or a line break" in result.stderr
    assert result.stdout == ""
    rows = [json.loads(line) for line in cli("score", index, "--query", "cats", "-f", "jsonl").stdout.splitlines()]
    assert sorted(row["doc_id"] for row in rows) == ["my doc.txt", "tab\tdoc"]


def test_an_empty_id_in_a_trec_line_exits_2_before_writing(cli, demo_index, tmp_path):
    """An empty document id (encode takes {"id": ""}) or query id (.tsv) left its trec line 4 or 5 fields of 6,
    exit 0; in a tsv line it is an empty field, which keeps its place."""
    index = cats_and_dogs(cli, tmp_path, "", "a")
    out = tmp_path / "run.trec"
    result = cli("score", index, "--query", "cats", "-f", "trec", "-o", out)
    assert result.exit_code == 2 and "document id '' is empty" in result.stderr, result.output
    assert not out.exists()
    queries = tmp_path / "q.tsv"
    queries.write_text("\tcats\nq2\tdogs\n")
    result = cli("score", queries, demo_index[0], "-f", "trec")
    assert result.exit_code == 2 and "query id '' is empty" in result.stderr and result.stdout == ""
    tsv = cli("score", queries, demo_index[0], "-f", "tsv", "-k", 1).stdout.splitlines()
    assert [line.split("\t")[:2] for line in tsv[1:]] == [["", "1"], ["q2", "1"]]


def test_top_k_help_says_a_search_structure_can_return_fewer():
    """"all of them if the index is smaller": with a search structure -k 1000 returns only the documents the
    probed centroids' lists hold."""
    import typer.main

    from cli.main import app

    score = typer.main.get_command(app).commands["score"]
    help_text = next(param.help for param in score.params if param.name == "top_k")
    assert "search structure" in help_text and "--exact" in help_text


def test_errors_name_what_the_path_is_and_scores_own_flag(cli, demo_index, tmp_path):
    index, queries = demo_index
    result = cli("score", tmp_path, index)
    assert result.exit_code == 3 and f"{tmp_path}: a folder, not a query file" in result.stderr
    result = cli("score", queries, queries)
    assert result.exit_code == 6 and f"{queries}: a file, not an index folder" in result.stderr
    result = cli("score", queries, index, "--device", "gpu7")
    assert result.exit_code == 9 and "--device 'gpu7'" in result.stderr and "--devices" not in result.stderr


def test_usage_errors_exit_2(cli, demo_index):
    index, queries = demo_index
    assert cli("score", index).exit_code == 2  # no queries
    assert cli("score", queries, index, "--top-k", 0).exit_code == 2


def test_model_mismatch_exits_5_unless_allowed(cli, demo_index, minilm_path, tmp_path):
    index, queries = demo_index
    other = tmp_path / "other-model"
    other.mkdir()
    for item in minilm_path.iterdir():
        if item.suffix == ".safetensors":
            (other / item.name).symlink_to(item)  # same weights, different config: another fingerprint
        elif item.is_dir():
            shutil.copytree(item, other / item.name)
        else:
            shutil.copy(item, other / item.name)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "tokembed_test_marker": 1}))
    result = cli("score", queries, index, "--model", other)
    assert result.exit_code == 5
    assert "model mismatch" in result.stderr and "is not the model the index was built with" in result.stderr
    assert "--allow-model-mismatch" in result.stderr
    allowed = cli("score", queries, index, "--model", other, "--allow-model-mismatch", "-f", "jsonl", "-k", 1)
    assert allowed.exit_code == 0, allowed.output
    assert len(allowed.stdout.splitlines()) == 3


def test_score_runs_on_one_device_and_says_which_it_takes(cli, demo_index):
    """``--device cpu:2`` ran (what two CPU workers mean for a query was never said), and a bad value's message
    offered encode's lists of devices."""
    index, _ = demo_index
    result = cli("score", "--query", "sorting", index, "--device", "cpu:2")
    assert result.exit_code == 2 and "tokembed score runs in its own process on one device" in result.stderr, result.output
    result = cli("score", "--query", "sorting", index, "--device", "cpu:1")  # said "(1 worker(s) asked for)"
    assert result.exit_code == 2 and "--device cpu:1: asks for worker processes;" in result.stderr, result.output
    result = cli("score", "--query", "sorting", index, "--device", "cpu:0")  # was exit 9, "a positive number of workers"
    assert result.exit_code == 2 and "--device cpu:0: asks for worker processes;" in result.stderr, result.output
    result = cli("score", "--query", "sorting", index, "--device", "bogus")
    assert result.exit_code == 9 and "expected auto, cpu, cuda or cuda:N" in result.stderr, result.output
    assert cli("score", "--query", "sorting", index, "--device", "cpu").exit_code == 0


def test_quiet_silences_the_library_warnings_too(cli, demo_index, tmp_path, monkeypatch):
    """--quiet is "nothing on stderr but errors": a warning the library logs (no writable cache to record which
    files were hashed) went to stderr anyway; with --log-format json it is a line there, as encode's."""
    index, _ = demo_index
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("TOKEMBED_CACHE", str(blocker / "cache"))
    result = cli("score", "--query", "cats", index, "-f", "jsonl", "--log-format", "json")
    assert result.exit_code == 0, result.output
    assert "tokembed: warning: cannot record which files were already hashed" in result.stderr
    monkeypatch.setenv("TOKEMBED_CACHE", str(blocker / "other"))  # warned once per process and folder
    quiet = cli("score", "--query", "cats", index, "-f", "jsonl", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr


def test_probe_and_candidates_on_an_index_without_a_structure_warn_that_they_are_not_used(cli, demo_index):
    """They were taken silently: a scan has nothing they change. A warning, not an error: a cron line passes them
    whether or not the index was compressed yet."""
    index, _ = demo_index
    result = cli("score", "--query", "sorting", index, "--probe", 1, "--candidates", 1, "-k", 2, "-f", "jsonl")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 2, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == ["tokembed: warning: --probe and --candidates not used: the index has no search structure "
                        "(tokembed compress builds one); every document is scanned"]
    assert cli("score", "--query", "sorting", index, "--probe", 1, "-q").stderr == ""
    plain = cli("score", "--query", "sorting", index, "-f", "jsonl")
    assert "warning" not in plain.stderr and plain.stdout == cli("score", "--query", "sorting", index, "--candidates", 5,
                                                                 "-f", "jsonl").stdout
