#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script (a lent GPU machine's time is short): run from the repo root,
#
#     bench/gpu_checks.sh OUT_DIR
#
# 1. the tests marked ``gpu`` (every model family on the GPU vs float32 on the CPU, `--devices cuda`
#    against the CPU, out-of-memory splitting, `score --devices cuda`, the search structure's candidate stages on the GPU);
# 2. bench/devices.py: tokens/s per GPU, useful-token fraction, the forward's share of busy time;
# 3. bench/score.py --device cuda: the exhaustive scan on the GPU against PyLate-style padded MaxSim there;
# 4. bench/pdf.py: PDF render pages/s with 1-8 --pdf-workers on the GPU box's cores, and whole runs on the GPU.
#
# Needs tokembed's runtime dependencies, pytest, pypdfium2 (tokembed[pdf]) and the demo model. For a machine without network,
# `python bench/gpu_assets.py` here writes an importable float16 copy of the demo model package to .gpu/site
# (ignored by git; carry it): this script puts it on PYTHONPATH.
# Logs go to OUT_DIR. Each step has its own time limit; a failing step does not stop the next, but the script
# exits 1 at the end, naming the steps that failed.
set -u
out=${1:?usage: bench/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu/site ] && export PYTHONPATH="$PWD/.gpu/site:$PYTHONPATH"
python=${PYTHON:-python3}
failed=""

step() {  # step NAME SECONDS COMMAND...: run, log to OUT_DIR/NAME.log, print its tail
    local name=$1 limit=$2 status
    shift 2
    echo "== $name ($(date +%T))"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    status=$?
    echo "== $name: exit $status ($(date +%T))"
    [ "$status" -eq 0 ] || failed="$failed $name"
    tail -n "${TAIL:-25}" "$out/$name.log"
}

nvidia-smi -L
$python -c "import torch, transformers, pyarrow; print('torch', torch.__version__, 'transformers', transformers.__version__,
'pyarrow', pyarrow.__version__, torch.cuda.get_device_name(0))"
step gpu_tests 200 $python -m pytest -q -s -m gpu -p no:cacheprovider tests/test_gpu_families.py tests/test_devices.py tests/test_lanes.py tests/test_score.py tests/test_plaid_on_device.py
step devices 150 $python bench/devices.py
step score 120 $python bench/score.py --device cuda --tokens "${SCORE_TOKENS:-8000000}" --runs 3
step pdf 100 $python bench/pdf.py --pages 200 --repeats 1 --workers 1 2 4 8
if [ -n "$failed" ]; then
    echo "failed steps:$failed"
    exit 1
fi
