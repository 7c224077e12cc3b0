"""A run's Parquet/JSONL inputs of which some have the id column and some not: the ones were read for their ids,
the others numbered by row (across files), and the manifest recorded no id column, so the renamed-id-column check
was off: a later rename of the column replaced every id of the file by a row number, exit 0."""

from __future__ import annotations

from helpers import manifest, read_index, write_jsonl, write_parquet

BAD_INPUT = 3


def no_model_load(monkeypatch):
    """The refusal comes before the model loads."""
    from tokembed.embedder import Embedder

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Embedder, "load", load)


def test_parquet_files_with_and_without_the_id_column_are_refused_naming_both(cli, minilm_path, tmp_path, monkeypatch):
    folder, out = tmp_path / "corpus", tmp_path / "index"
    folder.mkdir()
    write_parquet(folder / "a.parquet", [{"id": "doc-a", "text": "hello world"}, {"id": "3", "text": "second"}])
    assert cli("encode", folder, "--model", minilm_path, "-o", out, "--quiet").exit_code == 0
    before = (out / "manifest.json").read_bytes()
    write_parquet(folder / "b.parquet", [{"text": "third"}, {"text": "fourth"}])  # rows 2, 3: "3" is a's id
    no_model_load(monkeypatch)
    for extra in ([], ["--full"], ["--on-error", "skip"]):
        result = cli("encode", folder, "--model", minilm_path, "-o", out, "--quiet", *extra)
        assert result.exit_code == BAD_INPUT, result.output
        assert (f"{folder / 'b.parquet'}: no id column 'id' (columns: text), while {folder / 'a.parquet'} has it: the "
                "run's ids would be the row numbers of the one and the id values of the other (a row number can equal "
                "another file's id") in result.stderr
        assert f"or drop it from {folder / 'a.parquet'} so all are numbered" in result.stderr
        assert (out / "manifest.json").read_bytes() == before


def test_jsonl_files_mixed_by_their_first_records_are_refused(cli, minilm_path, tmp_path, monkeypatch):
    """A JSONL file's first record decides its ids (a later record breaking the rule is a bad row of the file)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"text": "numbered"}, {"id": "k", "text": "a bad row of its file"}])
    write_jsonl(folder / "b.jsonl", [{"id": "b1", "text": "has ids"}])
    no_model_load(monkeypatch)
    result = cli("encode", folder, "--model", minilm_path, "-o", tmp_path / "index", "--quiet")
    assert result.exit_code == BAD_INPUT, result.output
    assert f"{folder / 'a.jsonl'}: its first record has no id field 'id' (fields: text), while {folder / 'b.jsonl'}" \
        in result.stderr
    assert not (tmp_path / "index" / "manifest.json").exists()


def test_an_explicit_id_column_a_file_lacks_is_left_to_its_reader(cli, minilm_path, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_parquet(folder / "a.parquet", [{"key": "a1", "text": "x"}])
    write_parquet(folder / "b.parquet", [{"text": "y"}])
    result = cli("encode", folder, "--model", minilm_path, "-o", tmp_path / "index", "--id-column", "key", "--quiet")
    assert result.exit_code == BAD_INPUT, result.output
    assert f"{folder / 'b.parquet'}: no id column 'key' (columns: text)" in result.stderr
    assert "row numbers of the one" not in result.stderr


def test_what_gives_no_ids_mixes_nothing(cli, minilm_path, tmp_path):
    """Text files (their paths are their ids), a Parquet file without rows, and a JSONL file without a record read
    beside a file with ids: the run reads its ids and records the column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs, data, out = tmp_path / "docs", tmp_path / "data", tmp_path / "index"
    docs.mkdir()
    data.mkdir()
    (docs / "note.txt").write_text("a text file")
    write_parquet(data / "a.parquet", [{"id": "a1", "text": "x"}])
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), data / "empty.parquet")  # a schema, no rows
    (data / "blank.jsonl").write_text("\n")
    result = cli("encode", docs, data, "--model", minilm_path, "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    ids = list(read_index(out))
    assert len(ids) == 2 and "a1" in ids and manifest(out)["id_column"] == "id"


def test_an_unreadable_file_beside_files_with_ids_is_left_to_its_reader(cli, minilm_path, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_parquet(folder / "a.parquet", [{"id": "a1", "text": "x"}])
    (folder / "b.parquet").write_bytes(b"not parquet")
    result = cli("encode", folder, "--model", minilm_path, "-o", tmp_path / "index", "--quiet")
    assert result.exit_code == BAD_INPUT, result.output
    assert f"{folder / 'b.parquet'}: not a readable Parquet file" in result.stderr
