"""Parquet id columns of temporal and Arrow extension types: an id's text never depends on whether pandas is
installed, and an extension type is judged by what its cells hold (bool8's are booleans: refused as bool is)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import read_index, write_parquet
from tokembed.errors import BadInputError
from tokembed.sources import SourceOptions, open_sources

BAD_INPUT = 3
REPO = Path(__file__).resolve().parents[1]
canonical_extensions = pytest.mark.skipif(not hasattr(pa, "bool8"), reason="pyarrow < 18 has no bool8 or uuid type")

# (ids, their texts): an earlier release's text where it was the same with pandas and without
TEMPORAL_IDS = [
    (pa.array([1_700_000_000_123_456], pa.timestamp("us")), "2023-11-14 22:13:20.123456"),
    (pa.array([1_700_000_000], pa.timestamp("s", tz="UTC")), "2023-11-14 22:13:20+00:00"),
    (pa.array([19000], pa.date32()), "2022-01-08"),
    (pa.array([3_600_123], pa.time32("ms")), "01:00:00.123000"),
    (pa.array([3_600_123_456], pa.time64("us")), "01:00:00.123456"),
    (pa.array([-3600], pa.duration("s")), "-1 day, 23:00:00"),
    (pa.array([1_700_000_000_000_001_000], pa.timestamp("ns")), "2023-11-14 22:13:20.000001"),
    # a part under a microsecond: pandas' Timestamp text, and exit 1 without pandas
    (pa.array([1_700_000_000_000_000_001], pa.timestamp("ns")), "2023-11-14 22:13:20.000000001"),
    (pa.array([-1], pa.timestamp("ns", tz="America/New_York")), "1969-12-31 18:59:59.999999999-05:00"),
    (pa.array([1_700_000_000_000_000_001], pa.timestamp("ns")).dictionary_encode(), "2023-11-14 22:13:20.000000001"),
    # pandas gave '0 days 01:00:00' and '01:00:00.123456' (its nanoseconds lost): timedelta's and time's text now
    (pa.array([3_600_000_000_000], pa.duration("ns")), "1:00:00"),
    (pa.array([-1], pa.duration("ns")), "-1 day, 23:59:59.999999999"),
    (pa.array([3_600_123_456_789], pa.time64("ns")), "01:00:00.123456789"),
]

READ_IDS = """
import json, sys
from pathlib import Path
from tokembed.sources import SourceOptions, open_sources
items = [item for chunk in open_sources([Path(sys.argv[1])], SourceOptions()) for item in chunk]
print(json.dumps([item.id for item in items]), "pandas" in sys.modules)
"""


def read_all(paths, **options):
    return [item for chunk in open_sources([Path(p) for p in paths], SourceOptions(**options)) for item in chunk]


def temporal_files(folder: Path) -> Path:
    """A folder of one file for each of ``TEMPORAL_IDS``, in their order."""
    folder.mkdir()
    for n, (ids, _) in enumerate(TEMPORAL_IDS):
        pq.write_table(pa.table({"id": ids, "text": ["x"]}), folder / f"{n:02d}.parquet")
    return folder


def ids_without_pandas(folder: Path, tmp_path: Path) -> list[str]:
    """The ids as a run reads them where pandas is not installed (it is no tokembed dependency)."""
    hidden = tmp_path / "no_pandas" / "pandas"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("No module named pandas")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(hidden.parent)]), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", READ_IDS, str(folder)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    ids, pandas = done.stdout.rsplit(" ", 1)
    assert pandas.strip() == "False"
    return json.loads(ids)


def test_a_temporal_id_is_the_same_text_with_pandas_and_without(tmp_path):
    """With pandas a duration[ns] id was '0 days 01:00:00' (without, '1:00:00'), and without it a timestamp[ns] id with
    nanoseconds stopped encode with exit 1: installing or removing pandas renamed every id of the index."""
    folder = temporal_files(tmp_path / "data")
    expected = [text for _, text in TEMPORAL_IDS]
    assert [item.id for item in read_all([folder])] == expected
    assert ids_without_pandas(folder, tmp_path) == expected


def test_a_temporal_id_python_cannot_hold_is_a_bad_row(tmp_path):
    """A year past 9999 raised OverflowError for the whole batch: exit 1."""
    pq.write_table(pa.table({"id": pa.array([2**60, 5], pa.timestamp("ms")), "text": ["x", "y"]}), tmp_path / "c.parquet")
    items = read_all([tmp_path / "c.parquet"])
    assert [item.id for item in items] == [None, "1970-01-01 00:00:00.005000"]
    assert items[0].error.startswith("id is a timestamp[ms] value Python cannot hold") and items[1].error is None


@canonical_extensions
def test_a_bool8_id_column_is_refused_even_when_skipping(cli, tmp_path):
    """Arrow's boolean extension type passed the check a bool column fails: every row was a bad row, and with
    --on-error skip the run deleted every row of the index (exit 0)."""
    path = write_parquet(tmp_path / "c.parquet", [{"id": "a", "text": "x y"}, {"id": "b", "text": "z"}])
    out = tmp_path / "index"
    assert cli("encode", path, "-o", out).exit_code == 0
    ids = pa.ExtensionArray.from_storage(pa.bool8(), pa.array([1, 0], pa.int8()))
    pq.write_table(pa.table({"id": ids, "text": ["x y", "z"]}), path)
    result = cli("encode", path, "-o", out, "--on-error", "skip")
    assert result.exit_code == BAD_INPUT, result.output
    assert "c.parquet: id column 'id' is of type extension<arrow.bool8>, not a string or a number" in result.stderr
    assert sorted(read_index(out)) == ["a", "b"]


@canonical_extensions
@pytest.mark.parametrize("ids", [
    pa.ExtensionArray.from_storage(pa.opaque(pa.binary(), "geometry", "postgis"), pa.array([b"a"])),
    pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.int32(), [2]), pa.array([[1, 2]], pa.list_(pa.int32(), 2))),
], ids=["opaque-binary", "tensor"])
def test_extension_id_columns_no_row_fits_are_refused(tmp_path, ids):
    """An extension type is judged by its storage: bytes and lists made every row a bad row (--on-error skip
    deleted every row of the index)."""
    pq.write_table(pa.table({"id": ids, "text": ["x"]}), tmp_path / "c.parquet")
    with pytest.raises(BadInputError, match=r"c\.parquet: id column 'id' is of type .*every row would be a bad row"):
        read_all([tmp_path / "c.parquet"])


@canonical_extensions
def test_uuid_and_json_extension_columns_are_read(tmp_path):
    """A uuid id keeps its UUID text; a json column (string storage) is an id or a text."""
    uuids = pa.array([uuid.UUID(int=1), uuid.UUID(int=2)], pa.uuid())
    pq.write_table(pa.table({"id": uuids, "text": pa.array(['{"a": 1}', '"b"'], pa.json_())}), tmp_path / "c.parquet")
    items = read_all([tmp_path / "c.parquet"])
    assert [(item.id, item.text, item.error) for item in items] == [
        ("00000000-0000-0000-0000-000000000001", '{"a": 1}', None), ("00000000-0000-0000-0000-000000000002", '"b"', None)]
    pq.write_table(pa.table({"id": pa.array(["7"], pa.json_()), "text": ["x"]}), tmp_path / "c.parquet")
    assert [(item.id, item.error) for item in read_all([tmp_path / "c.parquet"])] == [("7", None)]
    pq.write_table(pa.table({"id": ["a"], "text": uuids[:1]}), tmp_path / "c.parquet")
    with pytest.raises(BadInputError, match=r"text column 'text' is of type extension<arrow.uuid>, not a string"):
        read_all([tmp_path / "c.parquet"])


@canonical_extensions
@pytest.mark.parametrize("storage", [pa.float32(), pa.float16()])
def test_a_float32_id_of_an_extension_type_is_the_shortest_text_of_its_own_precision(tmp_path, storage):
    """The narrowing looked at the column's own type: opaque<float32> ids were '0.10000000149011612', a plain float32
    column's '0.1'. A dictionary of float32 is narrowed too (a Parquet file reads it back as plain float32)."""
    from tokembed.sources.parquet import _id_cells

    values = pa.array([0.1, 0.2, None], storage)
    ids = pa.ExtensionArray.from_storage(pa.opaque(storage, "score", "vendor"), values)
    pq.write_table(pa.table({"id": ids, "text": ["x", "y", "z"]}), tmp_path / "c.parquet")
    assert [item.id for item in read_all([tmp_path / "c.parquet"])][:2] == ["0.1", "0.2"]
    batch = pa.record_batch({"id": values.dictionary_encode()})
    assert _id_cells(batch, "id") == [0.1, 0.2, None]
