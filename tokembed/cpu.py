"""CPU-specific settings of the native libraries, applied when ``tokembed`` is imported (before numpy loads
OpenBLAS), each only where measured to help and only if the user has not set it."""

from __future__ import annotations

import functools
import os

ZEN4_FAMILY = "25"  # AMD family 19h: Zen 3 and Zen 4; only Zen 4 has AVX512


def prefer_avx2_openblas_kernels(cpuinfo: str | None = None) -> bool:
    """On AMD Zen 4, have OpenBLAS use its AVX2 (Haswell) kernels instead of the AVX512 (SkylakeX) ones it
    picks there; returns whether it set ``OPENBLAS_CORETYPE``.

    Zen 4 executes AVX512 as two 256-bit halves, and OpenBLAS's SkylakeX sgemm is slow for the skinny products
    search runs: a query's 14 tokens against 65,536 centroids took 9.3 ms with it and 5.2 ms with the Haswell
    kernels (1.7x); the other shapes search and the exhaustive scan use were as fast or faster (1.0-1.2x).
    Zen 5 (family 26, full-width AVX512) and Intel keep OpenBLAS's own choice. OpenBLAS reads the variable when
    it loads, so this has no effect in a process that imported numpy before tokembed."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return False
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as handle:
                cpuinfo = handle.read(16384)
        except OSError:  # not Linux
            return False
    fields = {}
    for line in cpuinfo.split("\n\n", 1)[0].splitlines():  # the first processor's block
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags", "").split()
    if fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == ZEN4_FAMILY and "avx512f" in flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"
        return True
    return False


_M_ARENA_MAX = -8  # glibc's mallopt parameter


def user_set_malloc(variable: str) -> bool:
    """Whether the user set glibc's malloc through ``variable`` or its tunables: tokembed then leaves it alone."""
    return variable in os.environ or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")


@functools.cache
def glibc():
    """The C library when it is glibc (whose malloc the settings here and in ``engine.device`` are for), else
    None (loaded once)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def one_malloc_arena() -> bool:
    """One glibc malloc arena for the whole process (``MALLOC_ARENA_MAX=1``); returns whether it set it.

    glibc gives each thread that allocates while others hold the main arena an arena of its own, made of heaps
    of at most 64 MiB: there a block larger than that is mapped afresh on every allocation and unmapped on
    ``free`` whatever the mmap threshold says (``engine.device.keep_freed_blocks``), and each arena keeps its
    own freed blocks. A CPU forward in a second thread (the second lane of ``encode``, ``serve``'s batcher)
    faulted in its activations page by page. Measured on a 2-core AVX512 Xeon (MALLOC_ARENA_MAX=1 against
    none, alternating): a 16k-token MiniLM forward in a second thread 1.73 -> 1.51 s (217k page faults -> 0; the
    main thread's 1.44-1.50 s); ``serve`` with 64 concurrent 256-token documents 26.7 -> 28.5 documents/s;
    ``tokembed encode`` of 1,200 docstrings peak RSS 852-903 -> 728-764 MB and as fast; ``compress``, search on
    query threads and ``bench/serve.py``'s short sentences as fast within the box's noise. Set on import,
    before torch starts its thread pool: an arena made before the setting is reused afterwards. Left alone
    where the user set ``MALLOC_ARENA_MAX`` or glibc's malloc tunables, and off glibc."""
    if user_set_malloc("MALLOC_ARENA_MAX"):
        return False
    libc = glibc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, 1))
