#!/usr/bin/env bash
# Ablation 2 (issue 13, docs/EVALUATION.md): curriculum over compression ratios against direct 16x
# training, both trained by `vxl train` from the same fresh toy model (seed 0) on the same data and
# step budget, then tested at ratio 16 on the held-out set of bench/ablations.py.
#
#   bash bench/ablation2_curriculum.sh [RUNS_DIR] [STEPS]      # about 30 min + 8 min on 2 cores
#
# The two trainings run side by side, one core each. OMP_NUM_THREADS=1 matters: with torch's default
# (one thread per core) each run starts a second busy thread and the two runs ran at 0.15 instead of
# 3.1 samples/s each on the 2-core VM (measured 2026-12-06).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/ablation2}
steps=${2:-1000}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
common=(--data toy:800 --steps "$steps" --batch-size 4 --lr 1e-3 --warmup-steps 80 --planner fixed
        --questions-per-sample 8 --checkpoint-every 250 --keep-checkpoints 4 --seed 0 --local --no-flow)
mkdir -p "$runs"
.venv/bin/vxl train --out "$runs/curriculum" --curriculum "0:2,4;330:2,4,8,12,16" "${common[@]}" \
    > "$runs/curriculum.log" 2>&1 &
.venv/bin/vxl train --out "$runs/direct16" --curriculum "0:16" "${common[@]}" > "$runs/direct16.log" 2>&1 &
wait
.venv/bin/python bench/ablations.py models --models curriculum="$runs/curriculum/final" \
    direct16="$runs/direct16/final" --ratio 16 --videos 24 --out "$runs/eval"
