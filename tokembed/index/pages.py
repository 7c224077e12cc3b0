"""Dropping memory-mapped shard pages a reader is done with, so resident memory stays one record batch.

Scans and incremental runs read shards through their memory maps; touched pages would otherwise stay
in the process's resident set until the index is closed (the whole index, on a full pass).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys


class MappedPages:
    """Drops the pages of record batches that lie in a reader's read-only mapping of a whole file (Linux).

    ``madvise(MADV_DONTNEED)`` on such a mapping only unmaps pages; the next access faults them back
    from the page cache. It would zero anonymous memory, so it is used only inside ``[base, base + size)``,
    the span pyarrow mapped the file to (``Index.shard_pages``: the file the reader holds open, whatever
    now has its name); nothing outside it is touched.
    """

    def __init__(self, base: int, size: int) -> None:
        self.span = (base, base + size) if size > 0 and sys.platform.startswith("linux") else None
        self.released_to = base

    def release(self, batch) -> None:
        """Drop the batch's pages, from the 64 KB block where the last released batch ended: reading a batch's
        header (between the two) faults in that whole block (the kernel's fault-around), the previous batch's
        tail among it, and a scan in file order would otherwise keep those pages of every batch."""
        buffers = [b for column in batch.columns for b in column.buffers() if b is not None and b.size]
        if not buffers or not self.span:
            return
        low, high = min(b.address for b in buffers), max(b.address + b.size for b in buffers)
        if self.span[0] <= low and high <= self.span[1]:
            start = min(low, self.released_to)
            self.release_ranges([start - start % FAULT_AROUND], [high])
            self.released_to = max(self.released_to, high)

    def release_all(self) -> None:
        if self.span:
            self.release_ranges([self.span[0]], [self.span[1]])

    def release_ranges(self, lows, highs) -> None:
        """Drop the pages of each address range [low, high), clipped to the file's mapping."""
        if not self.span:
            return
        madvise = _libc().madvise
        for low, high in zip(lows, highs):
            start, end = max(int(low), self.span[0]), min(int(high), self.span[1])
            start -= start % mmap.PAGESIZE
            if start < end:
                madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED)


MADV_DONTNEED = 4  # Linux
FAULT_AROUND = 64 * 1024  # Linux's default fault_around_bytes: pages a read fault maps around its page


@functools.cache
def _libc():
    return ctypes.CDLL(None, use_errno=True)
