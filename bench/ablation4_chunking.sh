#!/usr/bin/env bash
# Ablation 4 (issue 13, docs/EVALUATION.md): dynamic against fixed chunking, trained and tested
# alike. Two models are trained by `vxl train` from the same fresh toy model (seed 0) on the same
# data, step budget and ratio set ({2, 4, 8, 12, 16}, a new ratio per window for `fixed`, a target
# ratio per sample for `dynamic`), then each is tested with both chunkings at an average ratio of 8
# on the held-out set of bench/ablations.py (a 2x2 table: the diagonal is "trained and tested alike").
#
#   bash bench/ablation4_chunking.sh [RUNS_DIR] [STEPS]      # about 30 min + 15 min on 2 cores
#
# OMP_NUM_THREADS=1: see bench/ablation2_curriculum.sh (two runs side by side on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/ablation4}
steps=${2:-1000}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
common=(--data toy:800 --steps "$steps" --batch-size 4 --lr 1e-3 --warmup-steps 80 --curriculum "0:2,4,8,12,16"
        --questions-per-sample 8 --checkpoint-every 250 --keep-checkpoints 4 --seed 0 --local --no-flow)
mkdir -p "$runs"
.venv/bin/vxl train --out "$runs/dynamic" --planner dynamic "${common[@]}" > "$runs/dynamic.log" 2>&1 &
.venv/bin/vxl train --out "$runs/fixed" --planner fixed "${common[@]}" > "$runs/fixed.log" 2>&1 &
wait
.venv/bin/python bench/ablations.py trained-chunking --models dynamic="$runs/dynamic/final" \
    fixed="$runs/fixed/final" --videos 24 --out "$runs/eval"
