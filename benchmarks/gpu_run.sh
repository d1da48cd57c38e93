#!/usr/bin/env bash
# The GPU checks of issue 14, as one prepared script for a lent H100/H200 box (torch and transformers
# there; snakemake and what it needs come as wheels in .whl/, see README "Performance").
#
#   bash benchmarks/gpu_run.sh bench   # bench_patch.py at the gemma-3-27b shape: fast vs naive vs FLOP limit, TFLOP/s,
#                                      # share of a matmul peak measured in the run, bf16 fidelity; then a span-16 row
#   bash benchmarks/gpu_run.sh e2e     # e2e_gpu.py: the production run end to end (27B shape, 1000 sites), then a 2nd route
#                                      # that adopts the kept server (model_server: {keep_s: 300}); the server works ahead
#   bash benchmarks/gpu_run.sh e2e-ab  # the same without work ahead (--no-work-ahead), then with it, one model written
#
# Everything it prints also lands in $OUT (or /tmp/gpu_out) as logs and JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_out}"
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 2; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L 2>&1 | tee "$OUT/device.txt"
python3 -c "import torch, transformers, snakemake; print('torch', torch.__version__, 'transformers', transformers.__version__, 'snakemake', snakemake.__version__)" 2>&1 | tee -a "$OUT/device.txt"
case "${1:-bench}" in
  bench)
    python3 benchmarks/bench_patch.py --shape 27b --device cuda --dtype bfloat16 --fidelity --naive-sites 12 \
        --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
    ;;
  span)
    python3 benchmarks/bench_patch.py --shape 27b --device cuda --dtype bfloat16 --span 16 --naive-sites 6 \
        --json "$OUT/bench_span16.json" 2>&1 | tee "$OUT/bench_span16.log"
    ;;
  e2e)
    python3 benchmarks/e2e_gpu.py --shape 27b --device cuda --dtype bfloat16 --workdir /dev/shm/ckl-e2e --keep-s 300 \
        --json "$OUT/e2e.json" 2>&1 | tee "$OUT/e2e.log"
    cp /dev/shm/ckl-e2e/logs/e2e/model_server.log "$OUT/" 2>/dev/null || true
    ;;
  e2e-ab)
    for arm in off on; do
        rm -rf /dev/shm/ckl-e2e/results /dev/shm/ckl-e2e/logs /dev/shm/ckl-e2e/.snakemake  # the model and corpus stay
        python3 benchmarks/e2e_gpu.py --shape 27b --device cuda --dtype bfloat16 --workdir /dev/shm/ckl-e2e --keep-s 300 \
            $([ "$arm" = off ] && echo --no-work-ahead) --json "$OUT/e2e_$arm.json" 2>&1 | tee "$OUT/e2e_$arm.log"
    done
    ;;
  *) echo "usage: $0 bench|span|e2e|e2e-ab"; exit 2 ;;
esac
