"""A flipped bit in a shard's Arrow metadata (its first record batch's header, its footer), through every reader.

Each reader either says the shard is damaged (exit 6, ``IndexCorruptError`` naming it) or reads what the undamaged
shard held. Before, ~2% of such flips ended info, ``info --verify``, ``score --exact`` and ``encode`` in a traceback
(OSError "Invalid flatbuffers message", ArrowInvalid, UnicodeDecodeError, AttributeError on a column whose type
the footer no longer gave as a list), ``--verify`` never reached the sha256, and ``export`` called it a write error
(exit 8, "cannot write part-000000.parquet"). Readers that do not hash the shard (a full rebuild's look at the index
it replaces, the structure's search) may read altered ids, but never fail otherwise.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq

from helpers import manifest, write_jsonl
from plaid_support import corpus_rows


def metadata_positions(data: bytes) -> list[int]:
    """Byte positions of the first record batch's header (after the schema message at 8) and of the footer."""
    header = 16 + int.from_bytes(data[12:16], "little")
    body = header + 8 + int.from_bytes(data[header + 4 : header + 8], "little")
    footer = len(data) - 10 - int.from_bytes(data[-10:-6], "little")
    return [*range(header, body), *range(footer, len(data))]


def damage(shard, data: bytes, position: int) -> None:
    """The shard with one bit of ``position`` flipped, as a new file (a mapping of the last one stays as it was)."""
    flipped = bytearray(data)
    flipped[position] ^= 1 << (position % 8)
    spare = shard.with_suffix(".damaged")
    spare.write_bytes(flipped)
    os.replace(spare, shard)


def command(cli, shard, *args):
    """exit 6 naming ``shard``, or the command's exit code and output; any exception escapes with its traceback."""
    result = cli(*args)
    if result.exit_code == 6 and str(shard) in result.stderr:
        return "damaged"
    return result.exit_code, result.stdout


def library(shard, read, *args):
    """``IndexCorruptError`` naming ``shard``, or what ``read`` returns; any other exception escapes."""
    from tokembed.errors import IndexCorruptError

    try:
        return read(*args)
    except IndexCorruptError as exc:
        assert str(shard) in str(exc), exc
        return "damaged"


def checked(index_path, checksums: bool):
    """What ``info`` (``--verify``: ``checksums``) reads of the shards; the rest of its facts is the manifest's."""
    from tokembed.index import open_index

    open_index(index_path).verify(checksums=checksums)
    return "read"


def exported(index_path, to):
    """What ``export --format parquet`` writes (a write error escapes: the shard is damaged, not the output)."""
    from tokembed.index.export import export_index

    export_index(index_path, to)
    return pq.read_table(to).to_pylist()


def exact_scan(index_path, query):
    """What ``score --exact`` does once the query is encoded."""
    from tokembed.index import open_index
    from tokembed.search.api import search_vectors

    index = open_index(index_path)
    index.verify(checksums=False)
    return [(hit.id, hit.score) for hit in search_vectors(index, [query], exact=True)[0]]


def carried_ids(index_path):
    """What an incremental ``encode`` reads of the index it carries rows from."""
    from tokembed.index import open_index
    from tokembed.search.plaid.coded import previous_index

    previous = previous_index(open_index(index_path), None, False)
    rows = np.arange(len(previous))
    return previous.ids_at(rows), previous.content_hashes(rows).tolist()


def replaced_ids(index_path):
    """What ``encode --full`` reads of the index it replaces: its ids, not hashed first."""
    from tokembed.index import open_index
    from tokembed.index.previous import PreviousIndex

    replaced = PreviousIndex(open_index(index_path))
    return replaced.ids_at(np.arange(len(replaced)))


def test_a_flipped_bit_in_a_shards_arrow_metadata_is_a_damaged_shard_or_reads_as_before(tmp_path, cli, colbert_ckpt):
    from tokembed.index import open_index

    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(30))
    index = tmp_path / "index"
    assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--quiet").exit_code == 0
    shard = index / manifest(index)["shards"][0]["file"]
    undamaged = shard.read_bytes()
    query = np.random.default_rng(0).standard_normal((4, open_index(index).dim)).astype(np.float32)

    def readings(number):
        return {
            "info": library(shard, checked, index, False),
            "info --verify": library(shard, checked, index, True),
            "export": library(shard, exported, index, tmp_path / f"export-{number}"),
            "score --exact": library(shard, exact_scan, index, query),
            "encode": library(shard, carried_ids, index),
        }

    def commands(number):
        return {
            "info": command(cli, shard, "info", index),
            "info --verify": command(cli, shard, "info", index, "--verify"),
            "export": command(cli, shard, "export", index, "--to", tmp_path / f"cli-export-{number}", "--format", "parquet",
                              "--quiet"),
        }

    before, printed = readings("undamaged"), commands("undamaged")
    assert "damaged" not in before.values() and all(code == 0 for code, _ in printed.values())
    positions = metadata_positions(undamaged)[::3]  # every bit of a byte in turn (the bit is the position % 8)
    assert len(positions) > 300
    for number, position in enumerate(positions):
        damage(shard, undamaged, position)
        after = readings(number)
        assert after["info --verify"] == after["export"] == after["encode"] == "damaged", (position, after)
        for reader, outcome in after.items():
            assert outcome in ("damaged", before[reader]), (position, reader, outcome)
        library(shard, replaced_ids, index)  # may read altered ids (not hashed), but fails only as a damaged shard
        if number % 8 == 0:  # through the CLI too: exit 6 naming the shard, or the same output; never exit 1 or 8
            for name, outcome in commands(number).items():
                assert outcome in ("damaged", printed[name] if name == "info" else None), (position, name, outcome)


def test_a_damaged_batch_header_is_exit_6_naming_the_shard_for_every_command(tmp_path, cli, colbert_ckpt):
    """The sweep's repro: the first record batch's header altered. ``--verify``, ``export`` and ``encode`` say the
    sha256 does not match (the hash is checked before the batches are read)."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(30))
    index = tmp_path / "index"
    assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--quiet").exit_code == 0
    shard = index / manifest(index)["shards"][0]["file"]
    undamaged = shard.read_bytes()
    damage(shard, undamaged, metadata_positions(undamaged)[8])  # the batch header's flatbuffer: "Invalid flatbuffers"

    for args, says in [
        (("info", index), "not a readable Arrow file"),
        (("info", index, "--verify"), "sha256 does not match the manifest"),
        (("score", "--query", "alpha", index), "not a readable Arrow file"),
        (("score", "--exact", "--query", "alpha", index), "not a readable Arrow file"),
        (("export", index, "--to", tmp_path / "out", "--format", "parquet"), "sha256 does not match the manifest"),
        (("encode", corpus, "--model", colbert_ckpt, "-o", index, "--quiet"), "sha256 does not match the manifest"),
    ]:
        result = cli(*args)
        assert result.exit_code == 6, (args, result.output)
        assert f"index corrupt: {shard}: {says}" in result.stderr, (args, result.stderr)
    assert not (tmp_path / "out").exists()
    assert cli("encode", corpus, "--model", colbert_ckpt, "-o", index, "--quiet", "--full").exit_code == 0
