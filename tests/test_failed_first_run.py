"""A first ``encode`` that fails before committing leaves no half-made index folder (``.lock``, an empty
``data/``) that ``info`` then calls "no manifest.json"; a folder that was there before, or holds a resumable run,
stays. A missing input is said before the model loads, as a missing file."""

from __future__ import annotations

import threading

from helpers import write_parquet

BAD_INPUT = 3


def test_a_missing_input_is_named_as_missing_and_creates_no_folder(cli, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr("tokembed.embedder.Embedder.load", no_model)
    out = tmp_path / "index"
    result = cli("encode", tmp_path / "nofile.parquet", "-o", out)
    assert result.exit_code == BAD_INPUT, result.output
    assert "nofile.parquet: no such file or folder" in result.stderr and "cannot list" not in result.stderr
    (tmp_path / "notes.csv").write_text("id,text\n")
    unsupported = cli("encode", tmp_path / "notes.csv", "-o", out)
    assert unsupported.exit_code == BAD_INPUT and "notes.csv: unsupported input" in unsupported.stderr
    assert not out.exists()


def test_a_first_run_that_fails_on_a_bad_row_removes_the_folders_it_created(cli, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "x"}, {"id": "b", "text": None}])
    out = tmp_path / "new" / "deeper" / "index"
    result = cli("encode", corpus, "-o", out)
    assert result.exit_code == BAD_INPUT and "(id 'b'): null text" in result.stderr
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    result = cli("encode", tmp_path / "empty", "-o", tmp_path / "index")
    assert result.exit_code == BAD_INPUT and not (tmp_path / "index").exists()


def test_a_folder_that_was_there_before_the_run_stays(cli, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "b", "text": None}])
    out = tmp_path / "index"
    out.mkdir()
    assert cli("encode", corpus, "-o", out).exit_code == BAD_INPUT
    assert out.is_dir()  # the user's folder: only the run's own files may go
    assert cli("encode", write_parquet(tmp_path / "ok.parquet", [{"id": "a", "text": "x"}]), "-o", out).exit_code == 0
    assert cli("encode", corpus, "-o", out).exit_code == BAD_INPUT
    assert (out / "manifest.json").is_file()


def test_a_run_waiting_on_the_lock_of_a_folder_its_holder_removed_takes_it_anew(tmp_path):
    from tokembed.index.lock import IndexLock

    folder = tmp_path / "index"
    first = IndexLock(folder).__enter__()
    assert first.created == folder
    taken = threading.Event()

    def wait_for_it() -> None:
        with IndexLock(folder, wait_seconds=30):
            if (folder / ".lock").is_file():  # the lock file it holds is one on disk, in a folder that is there
                (folder / "written").write_text("x")
                taken.set()

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    threading.Event().wait(0.5)  # the waiter has opened the lock file and polls it
    first.remove_if_unused()
    first.__exit__(None, None, None)
    waiter.join(30)
    assert taken.is_set() and (folder / "written").is_file()
    again = IndexLock(folder).__enter__()
    assert again.created is None  # the folder exists now: this run created nothing, so removes nothing
    again.remove_if_unused()
    again.__exit__(None, None, None)
    assert (folder / "written").is_file()
