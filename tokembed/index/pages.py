"""Dropping memory-mapped shard pages a reader is done with, so resident memory stays one record batch.

Scans and incremental runs read shards through their memory maps; touched pages would otherwise stay
in the process's resident set until the index is closed (the whole index, on a full pass).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import sys


class MappedPages:
    """Drops the pages of record batches that lie in a read-only file mapping of ``path`` (Linux).

    ``madvise(MADV_DONTNEED)`` on such a mapping only unmaps pages; the next access faults them back
    from the page cache. It would zero anonymous memory, so it is used only after ``/proc/self/maps``
    shows that the batch lies inside a read-only mapping of this very file; otherwise nothing happens.
    """

    def __init__(self, path) -> None:
        self.path = os.path.realpath(path)
        self.span: tuple[int, int] | None = None
        self.checked = not sys.platform.startswith("linux")

    def release(self, batch) -> None:
        buffers = [b for column in batch.columns for b in column.buffers() if b is not None and b.size]
        if not buffers:
            return
        low, high = min(b.address for b in buffers), max(b.address + b.size for b in buffers)
        if self.locate(low) and self.span[0] <= low and high <= self.span[1]:
            self.release_ranges([low], [high])

    def locate(self, address: int) -> bool:
        """Find the file's mapping from an address that lies in it (once); whether there is one."""
        if not self.checked:
            self.span, self.checked = _file_mapping(address, self.path), True
        return self.span is not None

    def release_ranges(self, lows, highs) -> None:
        """Drop the pages of each address range [low, high), clipped to the mapping ``locate`` found (none
        found: nothing is done)."""
        if not self.span:
            return
        madvise = _libc().madvise
        for low, high in zip(lows, highs):
            start, end = max(int(low), self.span[0]), min(int(high), self.span[1])
            start -= start % mmap.PAGESIZE
            if start < end:
                madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)


MADV_DONTNEED = 4  # Linux


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _file_mapping(address: int, path: str) -> tuple[int, int] | None:
    """(start, end) of the read-only mapping of ``path`` that holds ``address``, if that is what holds it."""
    try:
        with open("/proc/self/maps") as handle:
            for line in handle:
                fields = line.split(maxsplit=5)
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if low <= address < high:
                    name = fields[5].strip().removesuffix(" (deleted)") if len(fields) > 5 else ""
                    return (low, high) if name == path and "w" not in fields[1] else None
    except OSError:
        return None
    return None
