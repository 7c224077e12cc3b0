"""The run journal's file (``journal.Journal``): sealed JSON lines, one appended per finished shard.

Rewriting the whole journal (the inputs' names, sizes and mtimes, every shard entry, every chunk digest) for each
finished shard made a run of N shards write and fsync O(N²) bytes. Now the first line, the header, is written whole
(atomically) at a run's first finished shard: the signature and all the journal holds then (the shards of the run
it resumes, and that first shard). Each later shard appends one line and fsyncs it before the next shard starts:
its manifest entry, the chunks done, the digests of the chunks it adds, the bad rows and the entries of the counts'
lists met since the line before, the counts' other values, and ``previous``, the sha256 of the line before.

Every line is sealed (``index.sealed``) and chained by ``previous``: a line damaged, lost, repeated or moved breaks
the journal. A last line without its newline is the one a killed run was appending: its shard was not recorded.
A file whose first line is not a header is the previous releases' journal, one JSON document of the header's keys.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tokembed.index.atomic import write_error
from tokembed.index.sealed import SealError, sealed_bytes, unseal

HEADER = "journal"  # the header's key for the format: the previous releases' journal has none
LINES = 2  # its value: the previous releases' journal was the first form
PREVIOUS = "previous"
_ENTRY = {"shard", "chunks_done", "chunk_digests", "skipped", "counts", PREVIOUS}


def header_bytes(document: dict) -> bytes:
    """The header line of a journal holding ``document`` (signature, shards, chunks_done, skipped, counts,
    chunk_digests)."""
    return sealed_bytes({HEADER: LINES, **document})


def entry_bytes(entry: dict, previous: str) -> bytes:
    """The line recording one more shard (``entry``: the keys of ``_ENTRY`` but ``previous``) after the line whose
    ``line_digest`` is ``previous``."""
    return sealed_bytes({**entry, PREVIOUS: previous})


def line_digest(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def append_line(path: Path, line: bytes) -> None:
    """Append ``line`` to the journal at ``path``, durably when this returns (the shard it records is not encoded
    again). A full disk is ``IndexWriteError`` (exit 8)."""
    try:
        with open(path, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise write_error(path, exc) from exc


def read_journal(raw: bytes) -> tuple[dict | None, bool]:
    """The journal in ``raw`` as one document (the header's keys, its lines' shards added) and whether every line
    of it is as written: its seal, and each line chained to the one before; (None, False) where ``raw`` is no
    journal (not JSON, or not an object). A journal of the previous releases is the document it holds."""
    lines = _complete_lines(raw)
    if lines is None:
        try:
            document = json.loads(raw)
        except ValueError:
            return None, False
        return (document, _sealed(document)) if isinstance(document, dict) else (None, False)
    try:
        document = _without_format(unseal(json.loads(lines[0])))
    except ValueError:
        return {}, False
    previous = line_digest(lines[0])
    for line in lines[1:]:
        try:
            entry = unseal(json.loads(line))
        except ValueError:
            return document, False
        if entry.get(PREVIOUS) != previous or not _added(document, entry):
            return document, False
        previous = line_digest(line)
    return document, True


def listed_shards(raw: bytes) -> list:
    """Every shard entry the journal in ``raw`` lists, damaged lines or not (what a discarded journal's shards are);
    none where it is no journal."""
    lines = _complete_lines(raw)
    if lines is None:
        try:
            shards = json.loads(raw).get("shards", [])
        except (ValueError, AttributeError):  # not JSON, or not an object
            return []
        return shards if isinstance(shards, list) else []
    documents = [_parsed(line) for line in lines]
    shards = documents[0].get("shards", [])
    appended = [document["shard"] for document in documents[1:] if "shard" in document]
    return [*(shards if isinstance(shards, list) else []), *appended]


def _complete_lines(raw: bytes) -> list[bytes] | None:
    """The journal's lines but a last one without its newline; None where the first is not a header."""
    lines = raw.split(b"\n")[:-1]  # after the last newline: nothing, or the line a killed run was appending
    return lines if lines and _parsed(lines[0]).get(HEADER) == LINES else None


def _parsed(line: bytes) -> dict:
    try:
        document = json.loads(line)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _without_format(header: dict) -> dict:
    return {key: value for key, value in header.items() if key != HEADER}


def _added(document: dict, entry: dict) -> bool:
    """``entry``'s shard, chunks, bad rows and counts added to ``document`` (in place: a long journal is read in
    O(its size)); False, ``document`` unchanged, where the entry does not have the shape ``Journal`` writes or does
    not follow the document."""
    digests, skipped, counts = entry.get("chunk_digests"), entry.get("skipped"), entry.get("counts")
    shards, done_digests, done_skipped = (document.get(key) for key in ("shards", "chunk_digests", "skipped"))
    lists = (shards, done_digests, done_skipped, digests, skipped)
    if entry.keys() != _ENTRY or not all(isinstance(value, list) for value in lists):
        return False
    done, before = entry["chunks_done"], document.get("chunks_done")
    if not (isinstance(done, int) and isinstance(before, int) and done == before + len(digests)):
        return False
    if not _counts_follow(document.get("counts"), counts):
        return False
    shards.append(entry["shard"])
    done_digests.extend(digests)
    done_skipped.extend(skipped)
    for key, value in counts.items():
        if isinstance(value, list):
            document["counts"][key].extend(value)
        else:
            document["counts"][key] = value
    document["chunks_done"] = done
    return True


def _counts_follow(counts, added) -> bool:
    """A line's counts (values, and the entries its lists add) follow ``counts``: the same keys, of the same kinds."""
    if not (isinstance(counts, dict) and isinstance(added, dict) and counts.keys() == added.keys()):
        return False
    return all(isinstance(added[key], list) == isinstance(counts[key], list) for key in counts)


def counts_added(recorded: dict, counts: dict) -> dict | None:
    """What a line records of ``counts`` after ``recorded``'s: the values, and of a list the entries after the
    recorded ones; None where ``counts`` does not extend ``recorded`` (the journal is then written whole)."""
    if counts.keys() != recorded.keys():
        return None
    added = {}
    for key, value in counts.items():
        before = recorded[key]
        if isinstance(value, list) != isinstance(before, list):
            return None
        if isinstance(value, list) and len(value) < len(before):
            return None
        added[key] = value[len(before):] if isinstance(value, list) else value
    return added


def _sealed(document: dict) -> bool:
    """The journal is as its run wrote it (``index.sealed``): a damaged one, or one without a seal, is not resumed."""
    try:
        unseal(document)
    except SealError:
        return False
    return True
