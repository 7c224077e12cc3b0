"""Corpus readers: every input form, ids, and bad input named by file and row."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import write_jsonl, write_parquet
from tokembed.errors import BadInputError
from tokembed.sources import SourceOptions, open_sources


def read_all(paths, **options):
    return [item for chunk in open_sources([Path(p) for p in paths], SourceOptions(**options)) for item in chunk]


def test_parquet_file_streams_in_chunks(tmp_path):
    rows = [{"id": f"d{i}", "text": f"text {i}"} for i in range(10)]
    path = write_parquet(tmp_path / "c.parquet", rows, row_group_size=3)
    chunks = list(open_sources([path], SourceOptions(chunk_rows=4)))
    assert len(chunks) >= 3 and all(len(c) <= 4 for c in chunks)  # streamed, never the whole file
    assert [item.id for c in chunks for item in c] == [r["id"] for r in rows]


def test_parquet_folder_reads_files_in_name_order(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    write_parquet(folder / "b.parquet", [{"id": "b1", "text": "x"}])
    write_parquet(folder / "a.parquet", [{"id": "a1", "text": "y"}, {"id": "a2", "text": "z"}])
    assert [item.id for item in read_all([folder])] == ["a1", "a2", "b1"]


def test_missing_id_column_uses_row_numbers_across_files(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    write_parquet(folder / "a.parquet", [{"text": "x"}, {"text": "y"}])
    write_parquet(folder / "b.parquet", [{"text": "z"}])
    assert [item.id for item in read_all([folder])] == ["0", "1", "2"]


def test_custom_columns_and_explicit_missing_id_column(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", [{"key": 7, "body": "hello"}])
    items = read_all([path], id_column="key", text_column="body", id_column_given=True)
    assert (items[0].id, items[0].text) == ("7", "hello")
    with pytest.raises(BadInputError, match=r"c\.parquet: no id column 'nope'"):
        read_all([path], id_column="nope", text_column="body", id_column_given=True)


def test_missing_text_column_names_file_and_columns(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", [{"id": "a", "body": "x"}])
    with pytest.raises(BadInputError, match=r"c\.parquet: no text column 'text' \(columns: id, body\)"):
        read_all([path])


def test_truncated_parquet_is_bad_input(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", [{"id": str(i), "text": "x" * 50} for i in range(100)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match=r"c\.parquet: not a readable Parquet file"):
        read_all([path])


def test_null_text_is_an_item_error_with_its_row(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "x"}, {"id": "b", "text": None}])
    items = read_all([path])
    assert items[1].error == "null text" and items[1].row == 1 and "c.parquet row 1" in items[1].location


def test_jsonl_with_bad_line(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}])
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("{not json\n")
    items = read_all([path])
    assert items[0].text == "x"
    assert items[1].error.startswith("line 2: not valid JSON") and items[1].row == 1


def test_jsonl_lines_decode_as_json_loads_decodes_bytes(tmp_path):
    """Lines are decoded before parsing (so a huge line is held once): a UTF-8 BOM and blank lines of spaces and
    tabs behave as when ``json.loads`` got the bytes; a line that is not UTF-8 is a bad row saying so."""
    path = tmp_path / "c.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": "a", "text": "caf\xc3\xa9"}\n'  # BOM on the first line
        b" \t \n\n"  # blank lines: skipped, no row number
        b'{"id": "b", "text": "\xff\xfe bad"}\n'
        b'{"id": "c", "text": "\\ud800 lone surrogate escape"}\n'
    )
    items = read_all([path])
    assert [item.row for item in items] == [0, 1, 2]
    assert items[0].id == "a" and items[0].text == "café"
    assert items[1].id == "b" and items[1].error == "line 4: not valid UTF-8 (byte 21 of the line)"
    # json.loads makes the escape a lone surrogate, which no tokenizer takes: a bad row, named
    assert items[2].error == "line 5: text is not valid Unicode (a lone surrogate, U+D800, at character 0)"


def test_text_folder_ids_are_relative_paths_and_bad_utf8_is_reported(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha", encoding="utf-8")
    (folder / "sub" / "b.md").write_text("# beta", encoding="utf-8")
    (folder / "bad.txt").write_bytes(b"caf\xe9")
    (folder / "ignored.csv").write_text("x")
    items = {item.id: item for item in read_all([folder])}
    assert set(items) == {"a.txt", "sub/b.md", "bad.txt"}
    assert items["sub/b.md"].text == "# beta"
    assert items["bad.txt"].error == "not valid UTF-8 (byte 3)"


def test_a_text_files_byte_order_mark_is_no_part_of_its_text(tmp_path):
    # Windows editors write one; it was indexed as text (three more tokens on a byte-level BPE), where the JSONL
    # reader and score's query files drop it
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "bom.txt").write_bytes(b"\xef\xbb\xbfhello world")
    (folder / "inner.txt").write_bytes(b"hello\xef\xbb\xbf world")  # only a leading one is a byte-order mark
    (folder / "bad.md").write_bytes(b"\xef\xbb\xbfcaf\xe9")
    items = {item.id: item for item in read_all([folder])}
    assert items["bom.txt"].text == "hello world"
    assert items["inner.txt"].text == "hello\ufeff world"
    assert items["bad.md"].error == "not valid UTF-8 (byte 6)"  # the offset in the file, the mark counted


def test_a_folder_of_parquet_and_jsonl_files_reads_both_in_path_order(tmp_path):
    """The JSONL files of a folder that also held Parquet were skipped, unlisted (exit 0)."""
    folder = tmp_path / "parts"
    folder.mkdir()
    write_parquet(folder / "a.parquet", [{"id": "a1", "text": "x"}])
    write_jsonl(folder / "b.jsonl", [{"id": "b1", "text": "y"}])
    write_parquet(folder / "c.parquet", [{"id": "c1", "text": "z"}])
    assert [item.id for item in read_all([folder])] == ["a1", "b1", "c1"]


def test_folders_skip_hidden_entries_and_follow_linked_folders_once(tmp_path):
    """macOS ``._x`` AppleDouble files and ``.git/`` were read as documents (a ``._report.pdf`` failed the
    run); a linked sub-folder was neither read nor listed, while linked files were."""
    from tokembed.sources.base import ignored_files

    folder, elsewhere = tmp_path / "docs", tmp_path / "elsewhere"
    (folder / ".git").mkdir(parents=True)
    elsewhere.mkdir()
    (folder / "a.txt").write_text("alpha")
    (folder / "._a.txt").write_bytes(b"\x00\x05\x16\x07 binary junk")
    (folder / ".git" / "description.txt").write_text("git's own file")
    (folder / ".hidden.csv").write_text("not listed as ignored either")
    (elsewhere / "linked.txt").write_text("through a linked folder")
    (folder / "sub").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "back").symlink_to(folder, target_is_directory=True)  # a loop: each real folder is read once
    assert sorted(item.id for item in read_all([folder])) == ["a.txt", "sub/linked.txt"]  # not sub/back/...
    assert ignored_files([folder], SourceOptions()) == []


def test_a_linked_folder_never_renames_the_documents_of_a_real_one(tmp_path):
    """The first path that reached a folder claimed it, in directory order: adding a convenience link
    ``latest -> 2024-06`` renamed 2024-06/b.txt to latest/b.txt (deleted and re-added by the next cron run)."""
    from tokembed.sources.base import ignored_files

    folder, outside_tree = tmp_path / "corpus", tmp_path / "archive"
    (folder / "2024-06").mkdir(parents=True)
    outside_tree.mkdir()
    (folder / "2024-06" / "b.txt").write_text("june")
    (outside_tree / "c.txt").write_text("old")
    (folder / "a_latest").symlink_to(folder / "2024-06", target_is_directory=True)  # sorts before the real one
    (folder / "b_old").symlink_to(outside_tree, target_is_directory=True)
    (folder / "c_old").symlink_to(outside_tree, target_is_directory=True)  # the same folder again: once, as b_old
    assert sorted(item.id for item in read_all([folder])) == ["2024-06/b.txt", "b_old/c.txt"]
    index = outside_tree / "index"  # an index reached through a link is no corpus file
    (index / "data").mkdir(parents=True)
    (index / "data" / "part-000000.arrow").write_bytes(b"x")
    assert ignored_files([folder], SourceOptions(), output=index) == []


def test_a_folder_that_cannot_be_listed_is_bad_input_not_an_empty_folder(tmp_path, monkeypatch):
    """Unlisted, its documents were deleted from the index by the next run (exit 0)."""
    import os

    folder = tmp_path / "docs"
    (folder / "team").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    real = os.scandir

    def refusing(path="."):
        if str(path).endswith("team"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(BadInputError, match="team: cannot list the folder \\(Permission denied\\)"):
        read_all([folder])


def test_unsupported_or_missing_input(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        read_all([tmp_path / "nope.parquet"])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(BadInputError, match="unsupported input"):
        read_all([tmp_path / "x.csv"])


def _documents_folder(folder: Path) -> Path:
    """A folder of every kind of document a folder reader takes, in sub-folders too."""
    from PIL import Image

    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.md").write_text("# beta")
    (folder / "report.PDF").write_bytes(b"%PDF-1.4 not opened: the folder is refused first")
    Image.new("RGB", (8, 8)).save(folder / "sub" / "scan.png")
    (folder / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom")
    return folder


def test_a_folder_of_documents_and_data_files_is_refused_not_emptied(tmp_path):
    """One .jsonl anywhere in a folder of documents made the folder a data folder: every document row was
    deleted from the index (exit 0) and none listed as ignored."""
    from tokembed.sources.base import check_input

    folder = _documents_folder(tmp_path / "docs")
    assert {item.id for item in read_all([folder])} == {"a.txt", "report.PDF", "sub/b.md"}  # a text run's documents
    (folder / "sub" / "deep").mkdir()
    write_jsonl(folder / "sub" / "deep" / "export.jsonl", [{"id": "x", "text": "someone's export"}])
    write_parquet(folder / "rows.parquet", [{"id": "y", "text": "a data file"}])
    documents = {"text": "a.txt, report.PDF, sub/b.md", "image": "clip.mp4, report.PDF, sub/scan.png",
                 "auto": "a.txt, clip.mp4, report.PDF and 2 more"}  # what a reader of the run takes
    for modality, named in documents.items():
        with pytest.raises(BadInputError) as caught:
            read_all([folder], modality=modality)
        message = str(caught.value)
        assert message.startswith(f"{folder}: the folder holds both data files (rows.parquet, sub/deep/export.jsonl) "
                                  f"and documents ({named})"), message
        assert "give the data files as inputs" in caught.value.hint and "move them out" in caught.value.hint
        with pytest.raises(BadInputError, match="both data files"):
            check_input(folder, SourceOptions(modality=modality))
    check_input(folder)  # what encode asks of every input before the model (and so the modality) is known
    assert [item.id for item in read_all([folder / "rows.parquet", folder / "sub" / "deep" / "export.jsonl"])] == ["y", "x"]


@pytest.mark.parametrize("document", ["notes.txt", "scan.JPG", "talk.webm", "paper.pdf"])
def test_each_kind_of_document_makes_a_data_folder_ambiguous(tmp_path, document):
    folder = tmp_path / "parts"
    folder.mkdir()
    write_parquet(folder / "a.parquet", [{"id": "a1", "text": "x"}])
    (folder / document).write_bytes(b"x")
    with pytest.raises(BadInputError, match=rf"data files \(a\.parquet\) and documents \({document.replace('.', '[.]')}\)"):
        read_all([folder], modality="auto")


def test_a_file_the_runs_readers_do_not_take_leaves_a_data_folder_unmixed(tmp_path):
    """A Hugging Face dataset folder (data/*.parquet, its README.md card, an assets/banner.png) read by a text
    model: the banner is no document of that run, listed as ignored; an image model's run reads it, so refused."""
    from tokembed.sources.base import ignored_files

    folder = tmp_path / "dataset"
    (folder / "data").mkdir(parents=True)
    (folder / "assets").mkdir()
    write_parquet(folder / "data" / "train-00000-of-00001.parquet", [{"id": "t1", "text": "x"}])
    (folder / "README.md").write_text("---\nlicense: mit\n---\n")
    (folder / "assets" / "banner.png").write_bytes(b"x")
    assert [item.id for item in read_all([folder], modality="text")] == ["t1"]
    assert ignored_files([folder], SourceOptions(modality="text")) == [str(folder / "README.md"), str(folder / "assets" / "banner.png")]
    with pytest.raises(BadInputError, match=r"documents \(assets/banner\.png\)"):
        read_all([folder], modality="image")


def test_a_data_folder_lists_the_files_no_reader_takes_as_ignored(tmp_path):
    """A folder of data files beside files that are no documents (Spark's _SUCCESS, a .csv, a .TXT, which the
    text reader does not take) is read for its data files; the others were not even listed as ignored."""
    from tokembed.sources.base import ignored_files

    folder = tmp_path / "export"
    (folder / "part=1").mkdir(parents=True)
    write_parquet(folder / "part=1" / "a.parquet", [{"id": "a1", "text": "x"}])
    write_jsonl(folder / "b.jsonl", [{"id": "b1", "text": "y"}])
    for name in ("_SUCCESS", "part=1/schema.csv", "NOTES.TXT", ".part-0.parquet.crc", "README.md"):
        (folder / name).write_text("")  # README.md: a Hugging Face dataset folder's card, no document beside data
    assert [item.id for item in read_all([folder])] == ["b1", "a1"]
    expected = [str(folder / name) for name in ("NOTES.TXT", "README.md", "_SUCCESS", "part=1/schema.csv")]  # not the hidden .crc
    for modality in ("text", "image"):
        assert ignored_files([folder], SourceOptions(modality=modality)) == expected


def test_encode_refuses_a_mixed_folder_and_keeps_the_index(cli, minilm_path, tmp_path):
    """Exit 3 even with --on-error skip (it is no bad row), the index untouched."""
    folder, out = tmp_path / "docs", tmp_path / "index"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha")
    (folder / "b.txt").write_text("beta")
    assert cli("encode", folder, "--model", minilm_path, "-o", out, "--quiet").exit_code == 0
    before = (out / "manifest.json").read_bytes()
    write_jsonl(folder / "export.jsonl", [{"id": "x", "text": "someone dropped an export here"}])
    result = cli("encode", folder, "--model", minilm_path, "-o", out, "--on-error", "skip", "--quiet")
    assert result.exit_code == 3, result.output
    assert f"{folder}: the folder holds both data files (export.jsonl) and documents (a.txt, b.txt)" in result.output
    assert (out / "manifest.json").read_bytes() == before


def test_a_run_walks_each_input_folder_once(cli, minilm_path, tmp_path, monkeypatch):
    """The input checks, the readers, the ignored-files list, the journal's signature and the id check each walked
    the folder again (eight walks a run: 9 of 10 s of a run over a folder of 30,000 files); one walk serves them
    all, leaving out the index inside it, and the next run walks afresh (it sees the file added since)."""
    import json

    import tokembed.sources.files as files

    walked = []
    walk_paths = files.walk_paths
    monkeypatch.setattr(files, "walk_paths", lambda folder, skip=None: walked.append(folder) or walk_paths(folder, skip))
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.md").write_text("beta")
    (folder / "notes.docx").write_bytes(b"no reader takes it")
    (folder / "again.txt").symlink_to(folder / "a.txt")
    out = folder / "index"  # inside the input folder
    result = cli("encode", folder, "--model", minilm_path, "-o", out, "--log-format", "json", "--quiet")
    assert result.exit_code == 0, result.output
    assert walked == [folder]
    (folder / "c.txt").write_text("gamma")
    result = cli("encode", folder, "--model", minilm_path, "-o", out, "--log-format", "json", "--quiet")
    assert result.exit_code == 0, result.output
    assert walked == [folder, folder]
    summary = json.loads(result.stdout)
    assert (summary["added"], summary["unchanged"]) == (1, 2)
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["ignored"]) == [f"{folder / 'again.txt'} (the same file as {folder / 'a.txt'}, read once)",
                                           str(folder / "notes.docx")]
