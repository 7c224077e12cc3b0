"""Indexes across releases: what a later release recorded is refused rather than dropped, and what a killed run
left behind is removed by the next one."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import manifest, write_manifest, write_parquet


def _index(cli, checkpoint, tmp_path):
    corpus = write_parquet(tmp_path / "docs.parquet", [{"id": f"d{i}", "text": f"document number {i}"} for i in range(4)])
    folder = tmp_path / "index"
    assert cli("encode", corpus, "-o", folder, "--model", checkpoint("pylate_bert"), "-q").exit_code == 0
    return corpus, folder


def _edit_manifest(folder, section: str, key: str, value) -> None:
    data = manifest(folder)
    data[section][key] = value
    write_manifest(folder, data)  # sealed, as the later release wrote it


def test_a_flag_or_colbert_setting_a_later_release_recorded_is_refused_naming_it(cli, checkpoint, tmp_path):
    _corpus, folder = _index(cli, checkpoint, tmp_path)
    for section in ("flags", "colbert"):
        _edit_manifest(folder, section, "some_future_setting", 1)
        refused = cli("score", folder, "--query", "number one")
        assert refused.exit_code == 6, refused.output
        assert f"{section} 'some_future_setting'" in refused.stderr and "Traceback" not in refused.output
        data = manifest(folder)
        del data[section]["some_future_setting"]
        write_manifest(folder, data)
    assert cli("score", folder, "--query", "number one").exit_code == 0


def test_a_whole_float_pool_factor_an_earlier_library_call_wrote_is_read(cli, checkpoint, tmp_path):
    """EncodeFlags(pool_factor=2.0) through the library wrote "pool_factor": 2.0, which releases read; the shape
    table's integer check made every reader refuse that healthy index (exit 6). A fraction is still refused."""
    corpus = write_parquet(tmp_path / "docs.parquet", [{"id": f"d{i}", "text": f"document number {i} of four"} for i in range(4)])
    folder = tmp_path / "index"
    assert cli("encode", corpus, "-o", folder, "--model", checkpoint("pylate_bert"), "--pool-factor", 2, "-q").exit_code == 0
    _edit_manifest(folder, "settings", "pool_factor", 2.0)
    assert cli("score", folder, "--query", "number one").exit_code == 0
    assert cli("info", folder, "--verify").exit_code == 0
    _edit_manifest(folder, "settings", "pool_factor", 2.5)
    refused = cli("info", folder)
    assert refused.exit_code == 6 and "settings.pool_factor is 2.5" in refused.stderr, refused.output


def test_temp_files_of_a_killed_process_are_removed_by_the_next_run(cli, checkpoint, tmp_path):
    corpus, folder = _index(cli, checkpoint, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = [folder / f".run-journal.json.tmp-{dead.pid}", folder / f".manifest.json.tmp-{dead.pid}-{dead.pid}"]
    live = folder / f".hashes.json.tmp-{os.getpid()}-7"  # a live process's write in progress (a thread of it)
    for path in (*left, live):
        path.write_text("{}")
    assert cli("encode", corpus, "-o", folder, "--model", checkpoint("pylate_bert"), "-q").exit_code == 0
    assert not any(path.exists() for path in left) and live.exists()


def test_threads_replacing_one_file_each_write_their_own_temp_file(tmp_path):
    """Two threads of one library caller writing one file (the record of hashed files) shared ``.NAME.tmp-PID``:
    one's rename took the other's temp file away (FileNotFoundError, a false "cannot record" warning)."""
    import threading

    from tokembed.index.atomic import atomic_write_bytes

    final, errors, start = tmp_path / "record.json", [], threading.Barrier(8)

    def write(number: int) -> None:
        start.wait()
        try:
            for _ in range(40):
                atomic_write_bytes(final, str(number).encode() * 50_000)
        except Exception as exc:  # noqa: BLE001 - any failure is the finding
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(final.read_bytes())) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["record.json"]
