#!/usr/bin/env bash
# Policies on architectures they never saw (issue #15), once experiments/cross_arch.sh has built the
# bases, policies and reports of resnet56, vgg16_bn and mobilenetv2:
#   experiments/transfer.sh
# 1. ResNet-20's policy with the transferable observation (policies/resnet20-cifar10-transferable; the
#    committed policies/resnet20-cifar10 uses the per-layer observation, whose inputs depend on size);
# 2. zero-shot: that policy on ResNet-56 (`evaluate --transfer`, the targets, fine-tune and seeds of
#    cross_arch.sh) -> docs/results/transfer/resnet20-to-resnet56/;
# 3. one policy searched on {ResNet-20, VGG-16-BN} (policies/resnet20+vgg16_bn-cifar10), zero-shot on
#    MobileNetV2 and ResNet-56 -> docs/results/transfer/multi-to-<arch>/;
# 4. ADAPT (50) episodes from ResNet-20's policy on ResNet-56 (`search --init-policy`), evaluated the same
#    way -> docs/results/transfer/resnet56-adapted/;
# 5. one table per held-out architecture against its own policy, global ranking and uniform
#    (experiments.transfer_report) -> docs/results/transfer_<arch>.md.
# Every step resumes where it stopped when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/cifar10_settings.sh
MULTI_EPISODES=${MULTI_EPISODES:-800}
ADAPT=${ADAPT:-50}
OUT=${OUT:-docs/results/transfer}
ckpt() { echo "checkpoints/$1-cifar10.pt"; }
for arch in resnet20 resnet56 vgg16_bn mobilenetv2; do
    [ -f "$(ckpt $arch)" ] || { echo "transfer.sh: $(ckpt $arch) is missing: run experiments/cross_arch.sh $arch first" >&2; exit 2; }
done

# evaluate POLICY ARCH OUT [flags...]: the policy on ARCH's base, as cross_arch.sh evaluates ARCH's own policy
evaluate() {
    local policy=$1 arch=$2 out=$3; shift 3
    ap evaluate --policy "$policy" --checkpoint "$(ckpt "$arch")" --data-dir "$DATA" --targets "$TARGETS" --baselines "" \
        --policy-best-of 8 "${FT[@]}" --out "$out" "$@" $(resumable "$out")
}

conditional_search policies/resnet20-cifar10-transferable --checkpoint "$(ckpt resnet20)" --episodes "$EPISODES"
evaluate policies/resnet20-cifar10-transferable resnet56 "$OUT/resnet20-to-resnet56" --transfer

conditional_search policies/resnet20+vgg16_bn-cifar10 --checkpoint "$(ckpt resnet20)" --checkpoint "$(ckpt vgg16_bn)" \
    --episodes "$MULTI_EPISODES"
for arch in mobilenetv2 resnet56; do
    evaluate policies/resnet20+vgg16_bn-cifar10 "$arch" "$OUT/multi-to-$arch" --transfer
done

conditional_search policies/resnet56-cifar10-adapted --checkpoint "$(ckpt resnet56)" --init-policy policies/resnet20-cifar10-transferable \
    --episodes "$ADAPT"
evaluate policies/resnet56-cifar10-adapted resnet56 "$OUT/resnet56-adapted"

$PY -m experiments.transfer_report --own docs/results/resnet56-cifar10/runs/policy \
    --other zero-shot-resnet20="$OUT/resnet20-to-resnet56" --other zero-shot-multi="$OUT/multi-to-resnet56" \
    --other "adapted-$ADAPT"="$OUT/resnet56-adapted" --name transfer_resnet56
$PY -m experiments.transfer_report --own docs/results/mobilenetv2-cifar10/runs/policy \
    --other zero-shot-multi="$OUT/multi-to-mobilenetv2" --name transfer_mobilenetv2
