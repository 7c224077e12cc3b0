"""MappedPages: dropping the pages of a read-only file mapping (Linux), never touching other memory."""

from __future__ import annotations

import os
import sys

import numpy as np
import pyarrow as pa
import pytest

from tokembed.index.pages import MappedPages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps are Linux's")


def mapped_rss(path) -> int:
    """Resident bytes of this process's mappings of ``path``."""
    target, total, inside = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as handle:
        for line in handle:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
                inside = len(fields) > 5 and fields[5] == target
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


def test_release_ranges_drops_pages_clipped_to_the_file_mapping(tmp_path):
    path = tmp_path / "data.bin"
    data = os.urandom(4 << 20)
    path.write_bytes(data)
    buffer = pa.memory_map(str(path)).read_buffer()  # zero-copy: a read-only mapping of the file
    view = np.frombuffer(buffer, np.uint8)
    assert int(view.sum()) == sum(data)  # every page touched
    pages = MappedPages(buffer.address, buffer.size)
    before = mapped_rss(path)
    pages.release_ranges([buffer.address - (1 << 20)], [buffer.address + buffer.size + (1 << 20)])  # past both ends
    after = mapped_rss(path)
    assert before >= 3 << 20 and after <= before // 4
    assert view[: 1 << 16].tobytes() == data[: 1 << 16]  # the pages fault back from the file


def test_memory_outside_the_file_mapping_is_never_released(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * (1 << 16))
    buffer = pa.memory_map(str(path)).read_buffer()
    pages = MappedPages(buffer.address, buffer.size)
    anonymous = np.ones(1 << 20, np.uint8)
    in_memory = pa.record_batch({"x": pa.array(np.ones(1 << 20, np.uint8))})  # a batch not read from the file
    start = anonymous.__array_interface__["data"][0]
    pages.release_ranges([start], [start + anonymous.nbytes])
    pages.release(in_memory)
    assert int(anonymous.sum()) == anonymous.nbytes  # madvise(DONTNEED) would have zeroed them
    assert in_memory.column(0).to_numpy().sum() == 1 << 20
    MappedPages(0, 0).release_all()  # an empty file has no mapping: nothing to drop
