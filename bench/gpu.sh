#!/usr/bin/env bash
# GPU training throughput: GPT-2 124M, bf16, torch.compile; tokens/s, MFU, peak memory,
# with each distributed strategy at world size 1 (the wrapper's own overhead) -- see
# bench/gpu_train.py for what one row measures.
#
#     bash bench/gpu.sh                          # none, ddp, fsdp; ~5 minutes on one H200
#     STRATEGIES=none BATCH=32 bash bench/gpu.sh
#     HF=1 bash bench/gpu.sh                     # also transformers' GPT2LMHeadModel
#
# Needs only torch (+ safetensors, numpy, pyyaml, tqdm, regex: imported by lmforge) --
# not the package installed: it runs from the repo root with PYTHONPATH set.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export BATCH=${BATCH:-16} STEPS=${STEPS:-30} WARMUP=${WARMUP:-10} COMPILE=${COMPILE:-1}
export CHUNK=${CHUNK:-512} HF=${HF:-0}
echo "| run | batch | tokens/s (median) | MFU | peak memory |"
echo "|---|---|---:|---:|---:|"
for s in ${STRATEGIES:-none ddp fsdp}; do
  if [ "$s" = none ]; then
    STRATEGY=none "$PYTHON" bench/gpu_train.py || echo "| $s | failed (exit $?) | | | |"
  else
    STRATEGY=$s "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 1 \
      bench/gpu_train.py || echo "| $s | failed (exit $?) | | | |"
  fi
done
