"""A skipped row with no usable id (a null, NaN, boolean, object or list id, a JSONL line that is not JSON, a record
without the id field its file uses) is recorded with a null id: it was recorded and named under its row number
counted across the inputs, which another row's real, indexed id may be (b.parquet's null id after 1, 2, 3, 4 was
"skipped ... (id '4')" beside the indexed '4')."""

from __future__ import annotations

import json
import signal

import pyarrow as pa
import pyarrow.parquet as pq

from helpers import manifest, read_index, write_jsonl, write_manifest
from test_cron import encode, tokembed

BAD_INPUT = 3


def write_b_parquet(folder, ids):
    pq.write_table(pa.table({"id": pa.array(ids), "text": ["delta", "epsilon", "zeta", "eta"]}), folder / "b.parquet")


def parquet_corpus(folder):
    """b.parquet's null id is at row 4 of the inputs (id '4' its fake), c.parquet's infinite one at row 7."""
    folder.mkdir()
    pq.write_table(pa.table({"id": pa.array([1, 2, 3]), "text": ["alpha", "beta", "gamma"]}), folder / "a.parquet")
    write_b_parquet(folder, [4, None, 5, 6])
    pq.write_table(pa.table({"id": pa.array([float("inf"), 7.5]), "text": ["theta", "iota"]}), folder / "c.parquet")
    return folder, [("b.parquet", 1, "null id"), ("c.parquet", 0, "id is inf, not a finite number")]


def jsonl_corpus(folder):
    """Each bad line's row number across the inputs (4 to 9) is a real id of a later line."""
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"id": n, "text": f"row {n}"} for n in (1, 2, 3)])
    bad = ['{"id": null, "text": "x"}', '{"id": NaN, "text": "x"}', '{"id": true, "text": "x"}', "not json",
           '{"text": "no id"}', '{"id": [5], "text": "x"}']
    good = [json.dumps({"id": n, "text": f"row {n}"}) for n in range(4, 11)]
    (folder / "b.jsonl").write_text("\n".join([good[0], *bad, *good[1:]]) + "\n")
    reasons = ["line 2: null id", "line 3: id is nan, not a finite number",
               "line 4: id is a boolean, not a string or a number",
               "line 5: not valid JSON (Expecting value, column 1)",
               "line 6: no id field 'id' (the file's first record has one)",
               "line 7: id is a list, not a string or a number"]
    return folder, [("b.jsonl", row, reason) for row, reason in enumerate(reasons, start=1)]


def test_a_row_without_a_usable_id_is_recorded_with_a_null_id_not_its_row_number(cli, tmp_path):
    for make in (parquet_corpus, jsonl_corpus):
        folder, expected = make(tmp_path / make.__name__)
        out = tmp_path / f"index-{make.__name__}"
        result = cli("encode", folder, "-o", out, "--on-error", "skip", "--log-format", "json")
        assert result.exit_code == 0, result.output
        assert {"4", "5", "6"} <= set(read_index(out))
        skipped = manifest(out)["skipped"]
        assert [(entry["source"], entry["row"], entry["reason"]) for entry in skipped] == [
            (str(folder / name), row, reason) for name, row, reason in expected]
        assert [entry["id"] for entry in skipped] == [None] * len(expected)  # not '4', '5', ...: indexed ids
        assert json.loads(result.stdout)["skipped_rows"] == skipped
        warnings = [line for line in result.stderr.splitlines() if "warning: skipped" in line]
        assert warnings == [f"tokembed: warning: skipped {folder / name} row {row} (no usable id): {reason}"
                            for name, row, reason in expected]
        failed = cli("encode", folder, "-o", tmp_path / f"strict-{make.__name__}")
        name, row, reason = expected[0]
        assert failed.exit_code == BAD_INPUT and f"{name} row {row} (no usable id): {reason}" in failed.stderr


def test_a_cron_rerun_keeps_null_ids_and_indexes_the_row_once_its_id_is_fixed(cli, tmp_path):
    """The next night, unchanged: the same skipped list (nothing encoded); a bad row fixed: indexed under its id. An
    index of an earlier release, whose manifest recorded the made-up id, is read and replaced as any other."""
    folder, _ = parquet_corpus(tmp_path / "corpus")
    out = tmp_path / "index"
    assert cli("encode", folder, "-o", out, "--on-error", "skip").exit_code == 0
    first = manifest(out)["skipped"]
    assert [entry["id"] for entry in first] == [None, None]
    earlier = {**manifest(out), "skipped": [{**entry, "id": str(4 + n)} for n, entry in enumerate(first)]}
    write_manifest(out, earlier)  # as the previous release wrote it: ids '4' and '5', both real ones
    info = cli("info", out, "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["skipped"] == 2
    again = cli("encode", folder, "-o", out, "--on-error", "skip", "--log-format", "json")
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["unchanged"] == 7 and summary["encoded_tokens"] == 0
    assert manifest(out)["skipped"] == summary["skipped_rows"] == first
    write_b_parquet(folder, [4, 8, 5, 6])
    fixed = cli("encode", folder, "-o", out, "--on-error", "skip", "--log-format", "json")
    assert fixed.exit_code == 0, fixed.output
    assert json.loads(fixed.stdout)["added"] == 1 and "8" in read_index(out)
    assert manifest(out)["skipped"] == first[1:]  # c.parquet's infinite id, still null


def test_a_resumed_run_records_the_killed_runs_null_ids_as_they_were(tmp_path):
    """The journal carries the skipped rows of the shards a killed run finished; null ids come back null."""
    rows = [{"id": f"doc{n}" if n % 7 else None, "text": f"row {n}"} for n in range(40)]
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    reference, out = tmp_path / "reference", tmp_path / "index"
    assert encode(corpus, reference, "--on-error", "skip").returncode == 0
    killed = encode(corpus, out, "--on-error", "skip", env={"TOKEMBED_TEST_KILL_AT": "shard:2"})
    assert killed.returncode == -signal.SIGKILL
    rerun = encode(corpus, out, "--on-error", "skip")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["resumed_shards"] == 2
    skipped = manifest(out)["skipped"]
    assert skipped == manifest(reference)["skipped"] and [entry["id"] for entry in skipped] == [None] * 6
    assert tokembed("info", out, "--json").returncode == 0
