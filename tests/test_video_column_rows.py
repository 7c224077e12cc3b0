"""The ``--video-column`` follows the image column's rules for a record or row without a video.

A JSONL record lacking the video field is a bad row under ``--on-error``, as one lacking the image field is; a file
where no record has it is exit 3 (a renamed field). It used to be exit 3 at the first such record even with
``--on-error skip``: nothing indexed, the good videos beside it lost. In Parquet a null video cell is a bad row and
a file without the column is exit 3, as for the image column.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import qwen_checkpoints
from helpers import manifest, read_index, write_jsonl, write_parquet
from test_video_refused import write_video
from tokembed.errors import BadInputError
from tokembed.sources import SourceOptions, open_sources

VIDEO_RUN = SourceOptions(modality="image", video_column_given=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return qwen_checkpoints.build_colqwen3_5(tmp_path_factory.mktemp("colqwen3_5") / "ckpt")


def read_items(path: Path) -> dict:
    return {item.id: item for chunk in open_sources([path], VIDEO_RUN) for item in chunk}


def test_a_jsonl_record_without_the_video_field_is_a_skipped_bad_row(cli, checkpoint, tmp_path):
    write_video(tmp_path / "clip.mp4")
    records = write_jsonl(tmp_path / "vid.jsonl", [
        {"id": "v1", "video": "clip.mp4"}, {"id": "v2", "video": "clip.mp4"},
        {"id": "x", "text": "a record without a video"}, {"id": "v3", "video": "clip.mp4"},
    ])
    out = tmp_path / "index"
    result = cli("encode", records, "--video-column", "video", "--model", checkpoint, "-o", out, "--on-error", "skip",
                 "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(read_index(out)) == ["v1", "v2", "v3"]
    (skipped,) = manifest(out)["skipped"]
    assert (skipped["id"], skipped["row"]) == ("x", 2)
    assert skipped["reason"] == "line 3: no video field 'video' (fields: id, text)"


def test_a_jsonl_file_where_no_record_has_the_video_field_is_refused(tmp_path):
    write_video(tmp_path / "clip.mp4")
    some = write_jsonl(tmp_path / "some.jsonl", [{"id": "x", "text": "no video"}, {"id": "v", "video": "clip.mp4"},
                                                 {"id": "n", "video": None}])
    items = read_items(some)
    assert items["x"].error == "line 1: no video field 'video' (fields: id, text)"
    assert items["v"].error is None and items["n"].error == "line 3: null video"
    none = write_jsonl(tmp_path / "none.jsonl", [{"id": "a", "clip": "clip.mp4"}, {"id": "b", "clip": "clip.mp4"}])
    with pytest.raises(BadInputError, match=r"none\.jsonl: no record has what this run reads: no video field 'video' "
                                            r"\(fields: id, clip\) \(a renamed field\? name it with --video-column\)"):
        read_items(none)


def test_a_parquet_null_video_is_a_bad_row_and_a_file_without_the_column_is_refused(tmp_path):
    clip = write_video(tmp_path / "clip.mp4").read_bytes()
    items = read_items(write_parquet(tmp_path / "v.parquet", [{"id": "v", "video": clip}, {"id": "n", "video": None}]))
    assert items["v"].error is None and items["n"].error == "null video"
    with pytest.raises(BadInputError, match=r"no video column 'video' \(columns: id, text\)"):
        read_items(write_parquet(tmp_path / "t.parquet", [{"id": "t", "text": "no video"}]))
