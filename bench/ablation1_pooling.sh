#!/usr/bin/env bash
# Ablation 1 (issue 13, docs/EVALUATION.md): in-LLM compression (VSTs) against pooling at 16x.
# Models trained by `vxl train` from fresh toy models (seed 0) on the same data and step budget,
# all directly at ratio 16, in two pairs:
#   vst, pool               fresh toy models (random vision tower, as the other ablations)
#   vst+tower, pool+tower   the same, on a vision tower pretrained for 1,800 steps with
#                           `--objective frames` (`--init-vision`): the toy tower starts random, and
#                           only a trained tower puts the object's colour and shape into its tokens
# `pool` is the pooling baseline (`toy-init:compressor=pool`): each window's visual tokens
# average-pooled 16x before the LLM, all kept, so both memories hold the same number of tokens.
# All four are tested at 16x on the held-out set of bench/ablations.py (one table). The question
# types separate detail (object_color, object_shape: a shape of at most 3% of the frame) from the
# frame as a whole (bg_start, bg_end: the background colour).
#
#   bash bench/ablation1_pooling.sh [RUNS_DIR] [STEPS]   # about 7 + 2 x 30 + 10 min on 2 cores
#
# A model whose RUNS_DIR/NAME/final exists is not trained again (`vst` is the `direct16` run of
# bench/ablation2_curriculum.sh: same command). OMP_NUM_THREADS=1: see bench/ablation2_curriculum.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/ablation1}
steps=${2:-1000}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$runs"
cache=(--cache-dir "$runs/cache")  # the 800 videos' frames, decoded once for all five runs
[ -d "$runs/tower/final" ] || .venv/bin/vxl train --out "$runs/tower" --model toy-init --objective frames \
    --data toy:800 --steps 1800 --batch-size 4 --lr 2e-3 --warmup-steps 20 --checkpoint-every 600 --seed 0 \
    --local --no-flow "${cache[@]}" > "$runs/tower.log" 2>&1
common=(--data toy:800 --steps "$steps" --batch-size 4 --lr 1e-3 --warmup-steps 80 --planner fixed --curriculum "0:16"
        --questions-per-sample 8 --checkpoint-every 250 --keep-checkpoints 4 --seed 0 --local --no-flow "${cache[@]}")
pool=(--model toy-init:compressor=pool)
tower=(--init-vision "$runs/tower/final")
train() {  # NAME ARGS...: train RUNS_DIR/NAME unless its final model exists
    local name=$1; shift
    [ -d "$runs/$name/final" ] || .venv/bin/vxl train --out "$runs/$name" "$@" "${common[@]}" > "$runs/$name.log" 2>&1
}
train vst & train pool "${pool[@]}" & wait
train vst+tower "${tower[@]}" & train pool+tower "${pool[@]}" "${tower[@]}" & wait
.venv/bin/python bench/ablations.py models --models vst="$runs/vst/final" pool="$runs/pool/final" \
    vst+tower="$runs/vst+tower/final" pool+tower="$runs/pool+tower/final" --ratio 16 --videos 24 --out "$runs/eval"
