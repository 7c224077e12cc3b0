"""The JSON files tokembed trusts later carry a digest of their own content (``tokembed/index/sealed.py``): a run
journal damaged since it was written is not resumed (the run encodes its shards again and commits what an
uninterrupted run does, not a manifest every reader refuses or one short of rows); a manifest whose query settings
were changed is refused (exit 6), not scored otherwise than its documents; a damaged record of hashed files is
ignored, not a permanent "weights changed". A manifest of a release before the seal is read as before."""

from __future__ import annotations

import json
import signal

import pytest

from helpers import manifest, write_manifest
from test_resume_inputs import ROWS, encode_text, killed_text_run, same_index, shard_files_listed_only, text_rows, write_jsonl
from tokembed.index.journal import journaled_shards
from tokembed.index.journal_lines import read_journal
from tokembed.index.sealed import SEAL, sealed_bytes, unseal


def _flip_first_rows(path) -> None:
    """One bit of the first journaled shard's row count: 2 -> 3, the seal left as it was."""
    raw = path.read_text()
    assert raw.count('"rows": 2,') == 3
    path.write_text(raw.replace('"rows": 2,', '"rows": 3,', 1))


def _previous_release(edit, seal):
    """The journal as the previous release wrote it (one sealed document), edited, then sealed again or not."""
    def damage(path) -> None:
        journal, intact = read_journal(path.read_bytes())
        assert intact
        journal = json.loads(sealed_bytes(journal))
        edit(journal)
        path.write_bytes(sealed_bytes(journal) if seal else json.dumps(journal).encode())
    return damage


def _resealed(edit):
    return _previous_release(edit, seal=True)


def _unsealed(edit):
    return _previous_release(edit, seal=False)


def _lines(edit):
    """The journal's lines (the header, with the first shard, and one line per later shard), edited."""
    def damage(path) -> None:
        lines = path.read_bytes().splitlines(keepends=True)
        assert len(lines) == 3
        path.write_bytes(b"".join(edit(lines)))
    return damage


def _last_resealed(edit):
    """The last line edited (given the line before it) and sealed again, its chain kept."""
    def resealed(lines):
        last = json.loads(lines[-1])
        edit(last, json.loads(lines[-2]))
        return [*lines[:-1], sealed_bytes(last)]
    return resealed


def _both(first, then):
    def damage(path) -> None:
        first(path)
        then(path)
    return damage


JOURNAL_DAMAGES = {
    "undamaged": None,
    "rows of a shard, one bit": _flip_first_rows,
    # the previous release's journal: one sealed document
    "previous release, undamaged": _resealed(lambda journal: None),
    "previous release, rows of a shard, one bit": _both(_resealed(lambda journal: None), _flip_first_rows),
    "an entry lost": _unsealed(lambda journal: journal["shards"].pop()),
    "no seal": _unsealed(lambda journal: journal.pop(SEAL)),
    # sealed as written, but not what the shards hold: no tokembed writes these, the resume checks them all the same
    "rows of a shard, resealed": _resealed(lambda journal: journal["shards"][0].update(rows=3)),
    "an entry listed twice, resealed": _resealed(lambda journal: journal["shards"].__setitem__(2, journal["shards"][1])),
    "entries out of order, resealed": _resealed(lambda journal: journal["shards"].reverse()),
    "rows as a string, resealed": _resealed(lambda journal: journal["shards"][0].update(rows="2")),
    # this release's journal: a sealed line per shard, each chained to the one before
    "a line lost": _lines(lambda lines: [lines[0], lines[2]]),
    "a line repeated": _lines(lambda lines: [*lines[:2], lines[1], lines[2]]),
    "lines swapped": _lines(lambda lines: [lines[0], lines[2], lines[1]]),
    "the last line's rows, resealed": _lines(_last_resealed(lambda last, before: last["shard"].update(rows=3))),
    "the last line's shard, the one before's, resealed": _lines(
        _last_resealed(lambda last, before: last.update(shard=before["shard"]))),
    "the last line torn": _lines(lambda lines: [*lines[:2], lines[2][:-20]]),
}
RESUMED = {"undamaged": 3, "previous release, undamaged": 3, "the last line torn": 2}
# one of each kind in the default run (real CLI runs, ~5 s each); tests/test_journal_lines.py checks every damage
# of the line format without a model, and `-m slow` runs them all end to end here
EVERY_RUN = {"undamaged", "rows of a shard, one bit", "previous release, undamaged", "a line lost", "the last line torn"}


@pytest.mark.parametrize("damage", [damage if damage in EVERY_RUN else pytest.param(damage, marks=pytest.mark.slow)
                                    for damage in sorted(JOURNAL_DAMAGES)])
def test_a_damaged_journal_is_not_resumed_and_the_run_commits_what_an_uninterrupted_one_does(checkpoint, tmp_path, damage):
    """Row count 2 -> 3 in the journal: the resume exited 0 and committed a manifest every reader refused (exit 6);
    an entry lost: 2 rows of 12 dropped, exit 0. A last line a SIGKILL cut short: that shard is encoded again."""
    model = checkpoint("stanford")
    data = write_jsonl(tmp_path / "data.jsonl", text_rows())
    out, uninterrupted = tmp_path / "index", tmp_path / "uninterrupted"
    killed_text_run(model, data, out)
    if JOURNAL_DAMAGES[damage]:
        JOURNAL_DAMAGES[damage](out / "run-journal.json")
    rerun = encode_text(model, data, out)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["resumed_shards"] == RESUMED.get(damage, 0) and summary["rows"] == ROWS
    assert encode_text(model, data, uninterrupted).returncode == 0
    assert same_index(out, uninterrupted) and shard_files_listed_only(out)
    assert manifest(out)["totals"] == manifest(uninterrupted)["totals"]


def test_a_run_killed_twice_resumes_each_time_and_commits_what_an_uninterrupted_one_does(checkpoint, tmp_path):
    """The resumed run writes the journal whole at its first shard (the resumed ones in its header), then appends."""
    model = checkpoint("stanford")
    data = write_jsonl(tmp_path / "data.jsonl", text_rows())
    out, uninterrupted = tmp_path / "index", tmp_path / "uninterrupted"
    killed_text_run(model, data, out)
    again = encode_text(model, data, out, env={"TOKEMBED_TEST_KILL_AT": "shard:5"})
    assert again.returncode == -signal.SIGKILL, again.stderr
    assert len(journaled_shards(out)) == 5 and (out / "run-journal.json").read_bytes().count(b"\n") == 2
    rerun = encode_text(model, data, out)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["resumed_shards"] == 5
    assert encode_text(model, data, uninterrupted).returncode == 0
    assert same_index(out, uninterrupted) and shard_files_listed_only(out)
    assert manifest(out)["totals"] == manifest(uninterrupted)["totals"]


def _scores(cli, index) -> str:
    result = cli("score", index, "--exact", "--query", "alpha gamma", "-f", "tsv", "-k", 5)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_manifest_whose_query_prefix_was_changed_is_refused_naming_it(checkpoint, tmp_path, cli):
    """One bit of colbert.query_prefix ("[Q] " -> "[P] ") changed every score, exit 0, and info --verify said the
    index was sound."""
    index = tmp_path / "index"
    assert cli("encode", write_jsonl(tmp_path / "d.jsonl", text_rows()), "--model", checkpoint("pylate_bert"), "-o", index,
               "-q").exit_code == 0
    path = index / "manifest.json"
    data = json.loads(path.read_text())
    prefix = data["colbert"]["query_prefix"]
    data["colbert"]["query_prefix"] = prefix[0] + chr(ord(prefix[1]) ^ 1) + prefix[2:]
    path.write_text(json.dumps(data, indent=2))  # the seal as it was
    for command in (("score", index, "--query", "alpha"), ("info", index, "--verify")):
        result = cli(*command)
        assert result.exit_code == 6, result.output
        assert f"{path}: its content does not match its {SEAL}" in result.stderr


def test_a_manifest_written_before_the_seal_is_read_as_before(checkpoint, tmp_path, cli):
    index = tmp_path / "index"
    assert cli("encode", write_jsonl(tmp_path / "d.jsonl", text_rows()), "--model", checkpoint("stanford"), "-o", index,
               "-q").exit_code == 0
    before = _scores(cli, index)
    write_manifest(index, manifest(index), sealed=False)
    assert SEAL not in json.loads((index / "manifest.json").read_text())
    assert _scores(cli, index) == before
    assert cli("info", index, "--verify").exit_code == 0


def test_every_manifest_writer_seals_it(checkpoint, tmp_path, cli):
    index = tmp_path / "index"
    assert cli("encode", write_jsonl(tmp_path / "d.jsonl", text_rows()), "--model", checkpoint("stanford"), "-o", index,
               "-q").exit_code == 0
    unseal(json.loads((index / "manifest.json").read_text()))
    assert cli("compress", index, "--centroids", 4, "--quiet").exit_code == 0
    assert "search" in unseal(json.loads((index / "manifest.json").read_text()))


def test_a_damaged_record_of_hashed_weights_is_ignored_not_a_weights_change(checkpoint, tmp_path, cli):
    """One hex digit of the record's digest of model.safetensors: score refused the index (exit 5) ever after."""
    from tokembed.index.atomic import sha256_file
    from tokembed.index.verified import VerifiedFiles

    model, index = checkpoint("stanford"), tmp_path / "index"
    assert cli("encode", write_jsonl(tmp_path / "d.jsonl", text_rows()), "--model", model, "-o", index, "-q").exit_code == 0
    before = _scores(cli, index)
    record = VerifiedFiles(model).path
    entries = json.loads(record.read_text())
    names = [name for name in entries if name != SEAL]
    assert names
    for name in names:
        digest = entries[name][-1]
        entries[name][-1] = ("0" if digest[0] != "0" else "1") + digest[1:]
    record.write_text(json.dumps(entries))  # the seal as it was
    assert _scores(cli, index) == before
    rewritten = VerifiedFiles(model).entries
    assert all(rewritten[name][-1] == sha256_file(model / name) for name in names)


@pytest.mark.parametrize("drop", [False, True], ids=["vectors kept", "compressed-only"])
def test_full_rebuilds_a_compressed_index_whose_manifest_fails_its_seal(checkpoint, tmp_path, cli, drop):
    """--full is how a damaged index is rebuilt: over a compressed index whose manifest failed its seal it encoded
    the whole corpus, then exited 6 reading that manifest again for the structure's settings (the index stuck)."""
    index, data = tmp_path / "index", write_jsonl(tmp_path / "d.jsonl", text_rows())
    model = checkpoint("stanford")
    assert cli("encode", data, "--model", model, "-o", index, "-q").exit_code == 0
    flags = ("--centroids", 4, "--quiet") + (("--drop-vectors",) if drop else ())
    assert cli("compress", index, *flags).exit_code == 0
    path = index / "manifest.json"
    damaged = json.loads(path.read_text())
    damaged["colbert"]["query_prefix"] += " "
    path.write_text(json.dumps(damaged))  # the seal as it was
    assert cli("info", index).exit_code == 6
    rebuilt = cli("encode", data, "--model", model, "-o", index, "--full")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "its search structure is not rebuilt" in rebuilt.stderr
    fresh = manifest(index)
    assert "search" not in fresh and fresh["totals"]["rows"] == len(text_rows())
    assert not [file for file in (index / "plaid").rglob("*") if file.is_file()]  # the old structure's files removed
    assert cli("info", index, "--verify").exit_code == 0
    assert cli("compress", index, *flags).exit_code == 0 and cli("score", index, "--query", "alpha").exit_code == 0
