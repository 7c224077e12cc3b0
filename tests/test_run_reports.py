"""What a run tells about itself: each row ``--on-error skip`` skipped named on stderr and in the JSON summary
(capped), and the demo model named in the JSON summary."""

from __future__ import annotations

import json

from helpers import manifest, write_parquet

SKIPS_TOLD = 20


def corpus_with_bad_rows(path, bad: int):
    rows = [{"id": "good", "text": "fine"}] + [{"id": f"bad{n}", "text": None} for n in range(bad)]
    return write_parquet(path, rows)


def test_each_skipped_row_is_a_warning_line_naming_its_row_id_and_reason(cli, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "hello"}, {"id": "b", "text": None}])
    result = cli("encode", corpus, "-o", tmp_path / "index", "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert "tokembed: warning: skipped c.parquet row 1 (id 'b'): null text" in result.stderr.replace(str(tmp_path) + "/", "")
    quiet = cli("encode", corpus, "-o", tmp_path / "quiet", "--on-error", "skip", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""  # a cron run that skips stays silent; the manifest has it


def test_many_skipped_rows_name_the_first_twenty_then_count_the_rest(cli, tmp_path):
    corpus = corpus_with_bad_rows(tmp_path / "c.parquet", SKIPS_TOLD + 5)
    result = cli("encode", corpus, "-o", tmp_path / "index", "--on-error", "skip")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(lines) == SKIPS_TOLD + 1
    assert "(id 'bad0'): null text" in lines[0] and "(id 'bad19'): null text" in lines[SKIPS_TOLD - 1]
    assert lines[-1] == "tokembed: warning: ... and 5 more skipped row(s) (see manifest.json skipped)"
    assert len(manifest(tmp_path / "index")["skipped"]) == SKIPS_TOLD + 5


def test_the_json_summary_lists_the_skipped_rows(cli, tmp_path):
    corpus = corpus_with_bad_rows(tmp_path / "c.parquet", SKIPS_TOLD + 2)
    result = cli("encode", corpus, "-o", tmp_path / "index", "--on-error", "skip", "--log-format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["skipped"] == SKIPS_TOLD + 2 and len(summary["skipped_rows"]) == SKIPS_TOLD
    assert summary["skipped_rows"][0] == {"id": "bad0", "source": str(corpus), "row": 1, "reason": "null text"}
    assert summary["skipped_rows"] == manifest(tmp_path / "index")["skipped"][:SKIPS_TOLD]


def test_the_json_summary_says_when_the_demo_model_was_used(cli, minilm_path, tmp_path):
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "hello"}])
    demo = cli("encode", corpus, "-o", tmp_path / "demo", "--log-format", "json")
    assert demo.exit_code == 0, demo.output
    assert json.loads(demo.stdout)["demo_model"] is True
    chosen = cli("encode", corpus, "-o", tmp_path / "chosen", "--model", minilm_path, "--log-format", "json")
    assert chosen.exit_code == 0, chosen.output
    assert json.loads(chosen.stdout)["demo_model"] is False
    text = cli("encode", corpus, "-o", tmp_path / "text")
    assert "using the demo model" in text.stderr


def test_json_mode_keeps_the_warnings_on_stderr(cli, tmp_path):
    """--log-format json dropped every warning line as --quiet does, though stdout alone carries the JSON: a
    skipped row is a warning line on stderr (no progress, no text summary), and stdout is one JSON document."""
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "hello"}, {"id": "b", "text": None}])
    result = cli("encode", corpus, "-o", tmp_path / "index", "--on-error", "skip", "--log-format", "json")
    assert result.exit_code == 0, result.output
    assert "tokembed: warning: skipped c.parquet row 1 (id 'b'): null text" in result.stderr.replace(str(tmp_path) + "/", "")
    assert json.loads(result.stdout)["skipped"] == 1
    assert not any(line.startswith(("tokembed: progress:", "tokembed: 1 rows")) for line in result.stderr.splitlines())
    quiet = cli("encode", corpus, "-o", tmp_path / "quiet", "--on-error", "skip", "--log-format", "json", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == ""  # only --quiet silences them
    assert json.loads(quiet.stdout)["skipped"] == 1


def test_json_mode_keeps_the_library_warnings_on_stderr(cli, tmp_path):
    """The library's logged warnings (a folder left alone among the index's files) likewise."""
    corpus = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "hello"}])
    index = tmp_path / "index"
    assert cli("encode", corpus, "-o", index, "--quiet").exit_code == 0
    (index / "data" / "part-000099.arrow").mkdir()  # named like a shard, but a folder
    write_parquet(corpus, [{"id": "a", "text": "hello again"}])
    result = cli("encode", corpus, "-o", index, "--log-format", "json")
    assert result.exit_code == 0, result.output
    assert "part-000099.arrow: a folder among tokembed's own files; left alone" in result.stderr
    assert json.loads(result.stdout)["updated"] == 1
    write_parquet(corpus, [{"id": "a", "text": "hello once more"}])
    quiet = cli("encode", corpus, "-o", index, "--log-format", "json", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "" and json.loads(quiet.stdout)["updated"] == 1
