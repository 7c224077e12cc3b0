"""CPU-specific native-library settings (``tokembed.cpu``): applied only where they were measured to help."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tokembed.cpu import one_malloc_arena, prefer_avx2_openblas_kernels


def cpuinfo(vendor: str, family: int, flags: str) -> str:
    block = f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 17\nflags\t\t: {flags}\n"
    other = block.replace("processor\t: 0", "processor\t: 1").replace(vendor, "Other")
    return block + "\n" + other  # only the first processor's block counts


@pytest.mark.parametrize("vendor, family, flags, expected", [
    ("AuthenticAMD", 25, "fpu sse2 avx2 fma avx512f avx512bw avx512_bf16", "Haswell"),  # Zen 4
    ("AuthenticAMD", 25, "fpu sse2 avx2 fma", None),  # Zen 3: OpenBLAS already picks AVX2 kernels
    ("AuthenticAMD", 26, "fpu avx2 avx512f avx512_vp2intersect", None),  # Zen 5: full-width AVX512
    ("GenuineIntel", 6, "fpu avx2 avx512f avx512bw", None),
])
def test_openblas_core_type_is_set_on_zen4_only(monkeypatch, vendor, family, flags, expected):
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    assert prefer_avx2_openblas_kernels(cpuinfo(vendor, family, flags)) == (expected is not None)
    assert os.environ.get("OPENBLAS_CORETYPE") == expected


def test_a_core_type_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "SkylakeX")
    assert not prefer_avx2_openblas_kernels(cpuinfo("AuthenticAMD", 25, "avx2 avx512f"))
    assert os.environ["OPENBLAS_CORETYPE"] == "SkylakeX"


def test_the_cli_imports_tokembed_before_numpy():
    """The setting works only if it is made before numpy loads OpenBLAS."""
    code = "import cli.main; import numpy"
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_CORETYPE"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env,
                          check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    order = [line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    assert "tokembed.cpu" in order and order.index("tokembed.cpu") < order.index("numpy")


# A 64 MiB tensor allocated and freed fourteen times: the page faults of the last six. (The first reuses can
# miss: a small block allocated meanwhile may keep the freed one from merging back, and torch's 64-byte aligned
# request is then a little too large for it; the heap then grows and holds room for it from then on. How often
# it misses first depends on the import's own small allocations: up to three times in one checkout, seen as a
# flaky failure when only rounds 3-8 were counted.)
REFAULTS = """
import resource, sys, torch
from tokembed.engine.runner import BatchExecutor
if sys.argv[1] == "executor":
    BatchExecutor(encoder=None, device="cpu")
for round in range(14):
    if round == 8:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(1 << 24).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults_printed(script: str, argument: str, **env: str) -> int:
    """Run ``script`` in a fresh interpreter without the user's malloc settings (plus ``env``): the number it prints."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    done = subprocess.run([sys.executable, "-c", script, argument], capture_output=True, text=True, check=True,
                          env={**environment, **env})
    return int(done.stdout.split()[-1])


def refaults(mode: str, **env: str) -> int:
    return faults_printed(REFAULTS, mode, **env)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_a_cpu_executor_has_freed_activations_reused_not_faulted_in_again():
    pages = (1 << 26) // 4096  # of one block
    assert refaults("plain") > 5 * pages  # glibc maps a 64 MiB block afresh each time: 6 x 16,384 faults
    assert refaults("executor") < 2 * pages  # a CPU BatchExecutor: the freed block is reused (one miss at most)
    # the user's own glibc malloc settings are left alone
    assert refaults("executor", GLIBC_TUNABLES="glibc.malloc.perturb=0") > 5 * pages


# A real forward in a second thread (a lane, ``serve``'s batcher): MiniLM on 48 x 256 tokens, whose [12288, 1536]
# activations (75 MB) are larger than a thread arena's 64 MiB heaps; the fewest page faults of forwards 3 to 5 (as
# above, a reuse can miss once while the heap grows: measured 0 in most runs, 13,824 in one of six).
THREAD_FORWARD = """
import resource, sys, threading
from pathlib import Path
import tokembed
import torch
from tokembed.engine.runner import BatchExecutor
from tokembed.models.base import LoadOptions
from tokembed.models.registry import load_model
BatchExecutor(encoder=None, device="cpu")
model = load_model(Path(sys.argv[1]), LoadOptions())
ids = torch.randint(1000, 20000, (48, 256))
def forwards():
    counts = []
    for round in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model.embed(ids, torch.ones_like(ids))
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(min(counts[2:]))
helper = threading.Thread(target=forwards)
helper.start()
helper.join()
"""


@pytest.mark.slow  # two 16k-token MiniLM forwards in subprocesses, counting page faults (~30-60 s on 2 cores)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_a_forward_in_a_second_thread_reuses_freed_activations_too(minilm_path):
    """``import tokembed`` gives the process one malloc arena; a thread's own arena maps every block larger than
    its 64 MiB heaps afresh (measured: ~217k page faults a 16k-token forward)."""
    activation_pages = 12288 * 1536 * 4 // 4096
    assert faults_printed(THREAD_FORWARD, str(minilm_path)) < activation_pages  # one arena: the blocks are reused
    # the user's own setting kept: faulted in afresh
    assert faults_printed(THREAD_FORWARD, str(minilm_path), MALLOC_ARENA_MAX="2") > 4 * activation_pages


def test_one_arena_is_left_to_the_users_own_malloc_settings(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert one_malloc_arena() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
    assert one_malloc_arena() is False
