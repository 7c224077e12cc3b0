#!/usr/bin/env bash
# Batched queries/s of the search structure at 1M documents on a lent CUDA machine, as one script:
#
#     python bench/gpu_assets.py --search-seed WORK    # here: WORK from bench/search.py --docs 1000000 --pool-codes
#     bench/gpu_search.sh OUT_DIR                      # there, with .gpu-search carried
#
# Builds the same 1M-document index and structure as the CPU run (the pool and queries indexes and the codec
# travel in .gpu-search; the documents are the same seeded spans of the pool), then runs bench/search.py's search
# phase with the candidate stages on the GPU (plaid/on_device.py) and the exact re-rank on the host. No exhaustive
# scan (--no-exact): latency and queries/s only; recall is the CPU run's (the same candidates up to float ties).
# Needs neither faiss, the demo model nor a network. Writes ~16 GB under $WORK (default /tmp/tokembed-gpu-search).
set -uo pipefail  # the log's tee must not hide search.py's exit status
out=${1:?usage: bench/gpu_search.sh OUT_DIR}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
seed=.gpu-search
[ -f "$seed/codec.safetensors" ] || { echo "no $seed: run 'python bench/gpu_assets.py --search-seed WORK' and carry it"; exit 2; }
nvidia-smi -L
device=${DEVICE:-cuda}
if [[ $device == cuda* ]] && ! ${PYTHON:-python3} -c "import torch; assert torch.cuda.is_available()"; then
    echo "torch sees no CUDA device: not building the ~16 GB index"; exit 3
fi
${PYTHON:-python3} bench/search.py --work "${WORK:-/tmp/tokembed-gpu-search}" --docs "${DOCS:-1000000}" --pool-codes \
    --centroids "$(cat "$seed/centroids")" --codec "$seed/codec.safetensors" --seed "$seed" \
    --phases search --no-exact --device "$device" 2>&1 | tee "$out/gpu_search.log"
