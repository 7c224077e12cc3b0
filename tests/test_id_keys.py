"""Id lookups kept as 64-bit hashes (duplicate check, previous index): exact even when hashes collide."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import write_parquet
from tokembed.errors import BadInputError
from tokembed.index.keys import KeyIndex, id_keys
from tokembed.sources import SourceOptions, open_sources
from tokembed.sources.duplicates import SeenIds


def test_key_index_finds_what_a_dict_finds():
    rng = np.random.default_rng(0)
    index, reference = KeyIndex(), {}
    for start in range(0, 5000, 37):  # many small adds: several merges of runs
        keys = rng.integers(0, 3000, size=37).astype(np.uint64)
        index.add(keys, np.arange(start, start + 37))
        for key, value in zip(keys.tolist(), range(start, start + 37)):
            reference.setdefault(key, []).append(value)
    probe = np.arange(0, 3500, dtype=np.uint64)
    found = index.find(probe)
    for key, value in zip(probe.tolist(), found.tolist()):
        assert (value == -1) if key not in reference else (value in reference[key])
    assert len(index) == sum(len(v) for v in reference.values())
    assert len(index._runs) <= 13  # geometric run sizes: about log2 of the adds


def test_id_keys_are_stable_and_distinct():
    keys = id_keys(["a", "b", "a", "é", "\udcff"])
    assert keys.dtype == np.uint64 and keys[0] == keys[2] and len(set(keys.tolist())) == 4
    assert np.array_equal(id_keys(["a", "b"]), keys[:2])


def chunks(tmp_path, ids: list[str]):
    path = write_parquet(tmp_path / "c.parquet", [{"id": i, "text": "t"} for i in ids])
    options = SourceOptions(chunk_rows=2)
    return [path], options, list(open_sources([path], options))


def found_duplicates(tmp_path, monkeypatch, ids, collide):
    inputs, options, parts = chunks(tmp_path, ids)
    seen = SeenIds(inputs, options)
    found = {}
    if collide:  # every id gets the same hash, and only the re-read of the inputs can tell them apart
        monkeypatch.setattr("tokembed.sources.duplicates.id_keys", lambda ids: np.zeros(len(list(ids)), np.uint64))
    for chunk in parts:
        keys = np.zeros(len(chunk), np.uint64) if collide else id_keys(item.id for item in chunk)
        for position, earlier in seen.record(chunk, keys).items():
            found[chunk[position].location.split("/")[-1]] = earlier.split("/")[-1]
    return found


@pytest.mark.parametrize("collide", [False, True], ids=["real-hashes", "every-hash-equal"])
def test_seen_ids_name_the_earlier_row_and_nothing_else(tmp_path, monkeypatch, collide):
    assert found_duplicates(tmp_path, monkeypatch, ["a", "b", "c", "d", "e"], collide) == {}
    found = found_duplicates(tmp_path, monkeypatch, ["a", "b", "c", "a", "e", "c", "c"], collide)
    assert found == {"c.parquet row 3": "c.parquet row 0", "c.parquet row 5": "c.parquet row 2",
                     "c.parquet row 6": "c.parquet row 2"}


def test_seen_ids_refuse_an_id_whose_first_row_changed_during_the_run(tmp_path):
    """The file is rewritten between chunks so that the first "p" now reads "P": the re-read no longer finds
    the earlier "p", and the second "p" must not be taken as new (it would be in the index twice)."""
    path = tmp_path / "a.jsonl"
    lines = ['{"id": "%s", "text": "t"}' % item_id for item_id in ["p", "q", "r", "s", "p"]]
    path.write_text("\n".join(lines) + "\n")
    options = SourceOptions(chunk_rows=2)
    parts = list(open_sources([path], options))
    seen = SeenIds([path], options)
    seen.record(parts[0], id_keys(item.id for item in parts[0]))
    path.write_text("\n".join([lines[0].replace('"p"', '"P"')] + lines[1:]) + "\n")
    seen.record(parts[1], id_keys(item.id for item in parts[1]))
    with pytest.raises(BadInputError, match=r"input changed during the run: .*a.jsonl row 0 .*id 'p'"):
        seen.record(parts[2], id_keys(item.id for item in parts[2]))


@pytest.mark.parametrize("collide", [False, True], ids=["real-hashes", "every-hash-equal"])
def test_previous_index_finds_rows_exactly(tmp_path, monkeypatch, collide):
    from tokembed.index.format import FORMAT, FORMAT_VERSION
    from tokembed.index.previous import PreviousIndex
    from tokembed.index.reader import open_index
    from tokembed.index.writer import IndexWriter

    rng = np.random.default_rng(1)
    writer = IndexWriter(tmp_path / "index", 4, "float32", shard_rows=3)
    ids = [f"doc{i}" for i in range(8)]
    vectors = [rng.standard_normal((i + 1, 4)).astype(np.float32) for i in range(8)]
    hashes = [bytes([i]) * 32 for i in range(8)]
    for start in range(0, 8, 2):
        part = slice(start, start + 2)
        writer.write(ids[part], vectors[part], [np.arange(len(v), dtype=np.int32) for v in vectors[part]], hashes[part])
    writer.close_shard()
    shards = [s.to_json() for s in writer.shards]
    writer.commit({"format": FORMAT, "format_version": FORMAT_VERSION, "dim": 4, "embedding_dtype": "float32",
                   "shards": shards, "totals": {"rows": 8, "tokens": 36, "bytes": 0}})
    if collide:
        monkeypatch.setattr("tokembed.index.previous.id_keys", lambda ids: np.zeros(len(list(ids)), np.uint64))
    previous = PreviousIndex(open_index(tmp_path / "index"))
    assert len(previous) == 8
    asked = ["doc5", "nope", "doc0", "doc7"]
    rows = previous.find(asked, np.zeros(4, np.uint64) if collide else id_keys(asked))
    assert rows[1] is None
    for item_id, row in zip(asked, rows):
        if row is not None:
            number = int(item_id.removeprefix("doc"))
            assert previous.id_at(row) == item_id and previous.content_hash(row) == hashes[number]
            stored, token_ids = previous.vectors(row)
            assert np.array_equal(stored, vectors[number]) and len(token_ids) == number + 1
            previous.release_pages()  # dropped pages fault back in from the file: the same rows again
            assert np.array_equal(stored, vectors[number]) and np.array_equal(previous.vectors(row)[0], vectors[number])
