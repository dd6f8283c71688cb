#!/usr/bin/env bash
# One architecture of the cross-architecture comparison, end to end:
#   experiments/cross_arch.sh resnet56|vgg16_bn|mobilenetv2
# 1. the base model: `autoprune train` into runs/ (resumes from its .partial), then into checkpoints/
#    (stored with float16 weights when the float32 file is over 10 MB: `autoprune convert --half`
#    prints the test accuracy with both);
# 2. one conditional search over targets 0.25:0.75 (resumes), policies/<arch>-cifar10/;
# 3. the policy against uniform, global ranking and Torch-Pruning's own global pruning at five targets,
#    and AMC (one search of the same episode count) at 0.5, every method with the same fine-tune and
#    paired seeds; the two reports merged into docs/results/<arch>-cifar10/, and the policy set against
#    each baseline target by target (paired differences, verdicts) in its policy_vs_baselines.md;
# 4. the longer fine-tune check: policy, global ranking and uniform at 0.5 with LONG_EPOCHS (10) epochs
#    of the default recipe (one-cycle, distillation), one seed, in docs/results/<arch>-cifar10/long/ --
#    do the ranks of the one-epoch comparison hold when users fine-tune properly?
# Every step resumes where it stopped when the script is run again. DEVICE=cuda trains and fine-tunes
# on a GPU; WORKERS=N runs the search's episodes and the fine-tunes of each evaluated target in N Ray
# workers of one thread each. The settings shared with transfer.sh are in experiments/cifar10_settings.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:?usage: experiments/cross_arch.sh ARCH (resnet56, vgg16_bn or mobilenetv2)}
source experiments/cifar10_settings.sh
EPOCHS=${EPOCHS:-50}
AMC_TARGETS=${AMC_TARGETS:-0.5}
RUN=${RUN:-runs/$ARCH-cifar10.pt}
CKPT=${CKPT:-checkpoints/$ARCH-cifar10.pt}
POLICY=${POLICY:-policies/$ARCH-cifar10}
REPORT=${REPORT:-docs/results/$ARCH-cifar10}

mkdir -p "$(dirname "$RUN")" "$(dirname "$CKPT")"
if [ ! -f "$CKPT" ]; then
    [ -f "$RUN" ] || ap train --arch "$ARCH" --data cifar10 --data-dir "$DATA" --epochs "$EPOCHS" --no-progress --out "$RUN"
    if [ "$(stat -c %s "$RUN")" -gt 10000000 ]; then
        ap convert "$RUN" --half --data-dir "$DATA" --out "$CKPT"
    else
        cp "$RUN" "$CKPT"
    fi
fi

conditional_search "$POLICY" --checkpoint "$CKPT" --episodes "$EPISODES"

ap evaluate --policy "$POLICY" --checkpoint "$CKPT" --data-dir "$DATA" --targets "$TARGETS" \
    --baselines uniform,global,tp-global --policy-best-of 8 "${FT[@]}" --out "$REPORT/runs/policy" \
    $(resumable "$REPORT/runs/policy")
ap evaluate --checkpoint "$CKPT" --data-dir "$DATA" ${PROXY:+--proxy-images "$PROXY"} \
    --targets "$AMC_TARGETS" --baselines amc --baseline-episodes "$EPISODES" "${FT[@]}" --out "$REPORT/runs/amc" \
    $(resumable "$REPORT/runs/amc")
$PY -m experiments.merge_reports "$REPORT/runs/policy" "$REPORT/runs/amc" --out "$REPORT"
$PY -m experiments.policy_vs_baselines --reports "$REPORT/runs/policy" "$REPORT/runs/amc" \
    --out-dir "$REPORT" --name policy_vs_baselines

ap evaluate --policy "$POLICY" --checkpoint "$CKPT" --data-dir "$DATA" --targets "${LONG_TARGETS:-0.5}" \
    --baselines uniform,global --policy-best-of 8 --finetune-epochs "${LONG_EPOCHS:-10}" --finetune-seeds 1 --seed 0 --workers "$WORKERS" \
    --out "$REPORT/long" $(resumable "$REPORT/long")
