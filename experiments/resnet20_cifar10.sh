#!/usr/bin/env bash
# The real-data result: one conditional search on ResNet-20 / CIFAR-10, then the policy against
# uniform, global ranking and AMC (one search per target, same episode count) under the same
# fine-tune budget. Both steps resume where they stopped when run again.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${CKPT:-checkpoints/resnet20-cifar10.pt}
DATA=${DATA:-../shared/data/cifar10}
EPISODES=${EPISODES:-400}
POLICY=${POLICY:-policies/resnet20-cifar10}
REPORT=${REPORT:-docs/results/resnet20-cifar10}
AP=${AP:-.venv/bin/autoprune}

search=($AP search --checkpoint "$CKPT" --data-dir "$DATA" --targets 0.2:0.9 --episodes "$EPISODES"
        --proxy-images 1000 --seed 0 --out "$POLICY" --no-progress)
if [ -f "$POLICY/resume/state.json" ]; then
    "${search[@]}" --resume          # continue an interrupted search
elif [ ! -f "$POLICY/policy.json" ]; then
    "${search[@]}"                   # a committed, finished policy is used as it is
fi

resume=()
[ -f "$REPORT/results.json" ] && resume=(--resume)
$AP evaluate --policy "$POLICY" --checkpoint "$CKPT" --data-dir "$DATA" \
    --targets 0.3,0.42,0.5,0.63,0.7 --baselines uniform,global,amc --baseline-episodes "$EPISODES" \
    --policy-best-of 8 --finetune-epochs 1 --seed 0 --out "$REPORT" "${resume[@]}"
