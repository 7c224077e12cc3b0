"""CPU-specific settings of the native libraries, applied when ``tokembed`` is imported (before numpy loads
OpenBLAS), each only where measured to help and only if the user has not set it."""

from __future__ import annotations

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
