"""Files of the user's around an index: no command removes them, and no command writes where they are.

* ``compress`` and every ``encode`` remove only the names tokembed writes in ``INDEX/plaid/`` that no manifest lists.
* ``export --to`` inside the index folder or to a URI (``s3://``) is exit 2, nothing written.
* ``encode DIR -o DIR`` is exit 2 before anything is created.
* A first run into a folder that is no index yet is refused where its commit would remove a file that tokembed did
  not write (``data/part-NNNNNN.arrow``, ``staging/``); one that a killed first run left is still taken.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from helpers import manifest, read_index, write_jsonl
from plaid_support import corpus_rows


@pytest.fixture()
def index(tmp_path, cli, colbert_ckpt):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(20))
    folder = tmp_path / "index"
    assert cli("encode", corpus, "--model", colbert_ckpt, "-o", folder, "--quiet").exit_code == 0
    return folder, corpus


def test_compress_and_encode_remove_only_tokembeds_own_names_in_plaid(index, cli, colbert_ckpt):
    folder, corpus = index
    (folder / "plaid").mkdir()
    (folder / "plaid" / "README.txt").write_text("note")
    write_jsonl(corpus, corpus_rows(21))
    assert cli("encode", corpus, "--model", colbert_ckpt, "-o", folder, "--quiet").exit_code == 0  # no structure yet
    assert (folder / "plaid" / "README.txt").read_text() == "note"

    assert cli("compress", folder, "--centroids", 8, "--quiet").exit_code == 0
    stale = folder / "plaid" / "pending.json"  # tokembed's name, listed by no manifest: removed
    stale.write_text("{}")
    torn = folder / "plaid" / ".tmpQ3xZ9a"  # safetensors' own temp name: a run killed while it wrote a codes file
    torn.write_bytes(b"\0" * 64)
    (folder / "plaid" / "part-000000.parquet").write_bytes(b"PAR1")
    assert cli("compress", folder, "--centroids", 8, "--retrain", "--quiet").exit_code == 0

    assert not stale.exists() and not torn.exists()
    assert (folder / "plaid" / "README.txt").read_text() == "note"
    assert (folder / "plaid" / "part-000000.parquet").read_bytes() == b"PAR1"
    listed = {entry["file"] for entry in manifest(folder)["search"]["shards"]} | {manifest(folder)["search"]["codec"]["file"]}
    left = {f"plaid/{path.name}" for path in (folder / "plaid").iterdir()}
    assert left - listed == {"plaid/README.txt", "plaid/part-000000.parquet"}  # the replaced codec and codes went


@pytest.mark.parametrize("inside", [".", "plaid", "data", "exports", "exports/today"])
def test_export_into_the_index_folder_exits_2(index, cli, inside):
    folder, _ = index
    before = sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))

    result = cli("export", folder, "--to", folder / inside, "--format", "parquet")

    assert result.exit_code == 2, result.output
    assert "the index folder" in result.stderr
    assert sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) == before


@pytest.mark.parametrize("fmt", ["parquet", "lance"])
def test_export_to_a_uri_exits_2_writing_nothing(index, cli, tmp_path, monkeypatch, fmt):
    folder, _ = index
    monkeypatch.chdir(tmp_path)

    result = cli("export", folder, "--to", "s3://my-bucket/vectors", "--format", fmt)

    assert result.exit_code == 2, result.output
    assert "--to s3://my-bucket/vectors: a URI" in result.stderr
    assert not (tmp_path / "s3:").exists()


def test_encode_with_the_input_folder_as_output_exits_2_creating_nothing(tmp_path, cli, colbert_ckpt):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for number in range(3):
        (corpus / f"doc-{number}.txt").write_text(f"alpha beta {number}")

    result = cli("encode", corpus, "--model", colbert_ckpt, "-o", tmp_path / "." / "corpus")

    assert result.exit_code == 2, result.output
    assert "the input folder" in result.stderr
    assert sorted(path.name for path in corpus.iterdir()) == ["doc-0.txt", "doc-1.txt", "doc-2.txt"]


def _user_arrow_file(path) -> None:
    table = pa.table({"x": [1, 2, 3]})
    with pa.ipc.new_file(str(path), table.schema) as writer:
        writer.write_table(table)


@pytest.mark.parametrize("foreign", ["data/part-000000.arrow", "staging/results.csv"])
def test_a_first_run_into_a_folder_holding_a_users_file_under_tokembeds_names_exits_2(tmp_path, cli, colbert_ckpt, foreign):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(5))
    project = tmp_path / "project"
    (project / foreign).parent.mkdir(parents=True)
    _user_arrow_file(project / foreign)
    (project / "notes.txt").write_text("mine")

    result = cli("encode", corpus, "--model", colbert_ckpt, "-o", project)

    assert result.exit_code == 2, result.output
    assert f"{foreign}: not a" in result.stderr
    assert sorted(str(path.relative_to(project)) for path in project.rglob("*") if path.is_file()) == sorted([foreign, "notes.txt"])


def test_a_first_run_takes_the_shards_a_killed_first_run_left(index, cli, colbert_ckpt):
    folder, corpus = index
    (folder / "manifest.json").unlink()  # as a first run killed after its shard, before its commit
    (folder / "notes.txt").write_text("mine")

    result = cli("encode", corpus, "--model", colbert_ckpt, "-o", folder, "--quiet")

    assert result.exit_code == 0, result.output
    assert set(read_index(folder)) == {row["id"] for row in corpus_rows(20)}
    assert [path.name for path in (folder / "data").iterdir()] == ["part-000001.arrow"]  # the orphan removed
    assert (folder / "notes.txt").read_text() == "mine"
