"""The run journal is appended, one sealed and chained line per finished shard (``tokembed/index/journal_lines.py``).

It was serialised, sealed and rewritten whole (the inputs' names, sizes and mtimes, every shard entry, every chunk
digest) for each finished shard: O(shards²) bytes and CPU in a run (a folder of 1000 one-row files: 4.2 s in
``Journal.record``). A line damaged, lost, repeated or moved breaks the journal (not resumed); a last line a killed
run left without its newline is a shard not recorded. The previous releases' journal (one document) reads as before.
"""

from __future__ import annotations

import hashlib
import json

import pytest

import tokembed.index.journal as journal_module
from tokembed.index.journal import JOURNAL, Journal, journaled_shards
from tokembed.index.sealed import SEAL, sealed_bytes

SHARDS = 300


def _signature(files: int = 3000) -> dict:
    return {"inputs": [[f"/corpus/docs/doc{i:06d}.txt", 12, 1_700_000_000_000_000_000 + i] for i in range(files)]}


def _shard(number: int) -> dict:
    return {"file": f"data/part-{number:06d}.arrow", "rows": 1, "tokens": 5, "bytes": 900,
            "sha256": hashlib.sha256(str(number).encode()).hexdigest()}


def _record(journal: Journal, shards: int, start: int = 0) -> None:
    """``shards`` finished shards of one chunk each, a bad row every 7th and an empty page every 5th."""
    skipped = list(journal.skipped)
    empty = list(journal.counts.get("empty_pages", []))
    for number in range(start, start + shards):
        journal.chunk_digests.append(hashlib.sha256(b"chunk %d" % number).hexdigest())
        if number % 7 == 0:
            skipped.append({"id": f"bad{number}", "reason": "not UTF-8"})
        if number % 5 == 0:
            empty.append({"id": f"p{number}", "source_file": "a.pdf", "page": number})
        counts = {"added": number + 1, "updated": 0, "unchanged": 0, "empty_pages": list(empty), "tokens_in": 5 * number}
        journal.record(_shard(number), number + 1, list(skipped), counts)


def read_journal(raw: bytes):
    from tokembed.index.journal_lines import read_journal  # not at the top: without it the O(N) test fails on its own

    return read_journal(raw)


def _document(journal: Journal) -> dict:
    return {"signature": journal.signature, "shards": journal.shards, "chunks_done": journal.chunks_done,
            "skipped": journal.skipped, "counts": journal.counts, "chunk_digests": journal.chunk_digests}


@pytest.fixture
def recorded(tmp_path):
    journal = Journal(tmp_path, _signature(40))
    _record(journal, 6)
    return journal


def test_recording_n_shards_serialises_and_writes_o_n_bytes(tmp_path, monkeypatch):
    """300 shards of a 3000-file corpus: each record serialised the whole journal (~73 MB in all) and replaced the
    file (300 atomic writes); now the journal is written whole once and each shard adds its own line."""
    serialised, whole_writes = [0], []
    real_dumps, real_write = json.dumps, journal_module.atomic_write_bytes

    def dumps(*args, **kwargs):
        text = real_dumps(*args, **kwargs)
        serialised[0] += len(text)
        return text

    monkeypatch.setattr(json, "dumps", dumps)
    monkeypatch.setattr(journal_module, "atomic_write_bytes", lambda path, data: (whole_writes.append(len(data)), real_write(path, data)))
    journal = Journal(tmp_path, _signature())
    _record(journal, SHARDS)
    size = (tmp_path / JOURNAL).stat().st_size
    header = len(sealed_bytes({"signature": journal.signature}))
    assert len(whole_writes) == 1
    assert size < header + SHARDS * 1000  # the header, and one line of under 1 KB per shard
    assert serialised[0] < 3 * size
    monkeypatch.undo()
    assert read_journal((tmp_path / JOURNAL).read_bytes()) == (_document(journal), True)


def test_the_journal_reads_back_as_recorded_and_its_first_shard_writes_it_whole(recorded, tmp_path):
    raw = (tmp_path / JOURNAL).read_bytes()
    assert raw.count(b"\n") == 6 and raw.endswith(b"\n")
    assert read_journal(raw) == (_document(recorded), True)
    resumed = Journal(tmp_path, recorded.signature, list(recorded.shards), recorded.chunks_done, list(recorded.skipped),
                      dict(recorded.counts), list(recorded.chunk_digests))
    _record(resumed, 3, start=6)  # a resumed run writes the journal whole at its first shard, then appends
    raw = (tmp_path / JOURNAL).read_bytes()
    assert raw.count(b"\n") == 3
    assert read_journal(raw) == (_document(resumed), True) and len(resumed.shards) == 9


def _lines(path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _write_lines(path, lines) -> None:
    path.write_bytes(b"".join(lines))


def _resealed_line(line: bytes, edit) -> bytes:
    document = json.loads(line)
    edit(document)
    return sealed_bytes(document)


LINE_DAMAGES = {
    "a line lost": lambda lines: lines[:2] + lines[3:],
    "a line repeated": lambda lines: lines[:3] + lines[2:],
    "the last line repeated": lambda lines: lines + lines[-1:],
    "two lines swapped": lambda lines: lines[:2] + [lines[3], lines[2]] + lines[4:],
    "one bit of a line": lambda lines: lines[:2] + [lines[2].replace(b'"rows": 1', b'"rows": 3', 1)] + lines[3:],
    "one bit of the header": lambda lines: [lines[0].replace(b"doc000007", b"doc000008")] + lines[1:],
    "a line resealed with other rows": lambda lines: lines[:2] + [_resealed_line(lines[2], lambda d: d["shard"].update(rows=3))] + lines[3:],
    "a line resealed after its chain": lambda lines: lines[:2] + [_resealed_line(lines[2], lambda d: d.update(previous="0" * 64))] + lines[3:],
    "a line of another key": lambda lines: lines[:2] + [_resealed_line(lines[2], lambda d: d.update(extra=1))] + lines[3:],
    "a torn line then a whole one": lambda lines: lines[:2] + [lines[2][:40] + b"\n"] + lines[3:],
    "no header": lambda lines: lines[1:],
}


@pytest.mark.parametrize("damage", sorted(LINE_DAMAGES))
def test_a_damaged_lost_repeated_or_moved_line_breaks_the_journal(recorded, tmp_path, damage):
    path = tmp_path / JOURNAL
    _write_lines(path, LINE_DAMAGES[damage](_lines(path)))
    document, intact = read_journal(path.read_bytes())
    assert not intact
    assert journaled_shards(tmp_path) <= {f"part-{number:06d}.arrow" for number in range(6)}


@pytest.mark.parametrize("cut", [1, 30, -1], ids=["first byte", "half", "all but the newline"])
def test_a_last_line_a_killed_run_was_appending_is_a_shard_not_recorded(recorded, tmp_path, cut):
    path = tmp_path / JOURNAL
    lines = _lines(path)
    _write_lines(path, lines[:-1] + [lines[-1][:cut]])
    document, intact = read_journal(path.read_bytes())
    assert intact and document["shards"] == recorded.shards[:5] and document["chunks_done"] == 5
    assert len(document["chunk_digests"]) == 5 and document["counts"]["added"] == 5
    assert journaled_shards(tmp_path) == {f"part-{number:06d}.arrow" for number in range(5)}


def test_a_failed_append_makes_the_next_record_write_the_journal_whole(recorded, tmp_path, monkeypatch):
    from tokembed.errors import IndexWriteError

    path = tmp_path / JOURNAL

    def full_disk(target, line):
        with open(target, "ab") as handle:
            handle.write(line[:25])  # part of the line written, then the disk is full
        raise IndexWriteError(f"{target}: cannot write (No space left on device)")

    monkeypatch.setattr(journal_module, "append_line", full_disk)
    with pytest.raises(IndexWriteError):
        _record(recorded, 1, start=6)
    monkeypatch.undo()
    _record(recorded, 1, start=7)
    assert read_journal(path.read_bytes()) == (_document(recorded), True) and len(recorded.shards) == 8


def test_the_previous_releases_journal_reads_as_before(recorded, tmp_path):
    """One sealed document (and, before the seal, an unsealed one): read as it is, intact only with its seal."""
    path = tmp_path / JOURNAL
    path.write_bytes(sealed_bytes(_document(recorded)))
    document, intact = read_journal(path.read_bytes())
    assert intact and {key: value for key, value in document.items() if key != SEAL} == _document(recorded)
    assert journaled_shards(tmp_path) == {f"part-{number:06d}.arrow" for number in range(6)}
    path.write_text(json.dumps({**_document(recorded), "chunks_done": 5, SEAL: "0" * 64}))
    assert read_journal(path.read_bytes())[1] is False
    path.write_text(json.dumps(_document(recorded)))
    assert read_journal(path.read_bytes()) == (_document(recorded), False)
    for raw in (b"", b"[1, 2]\n", b"{not json\n"):
        assert read_journal(raw) == (None, False)
