#!/usr/bin/env bash
# The real-data result: one conditional search on ResNet-20 / CIFAR-10, then the policy against
# uniform and global ranking at six targets (0.25, 0.3, 0.42, 0.5, 0.63, 0.7), and AMC (one search per
# target, the same episode count) at 0.3 / 0.5 / 0.7, all under the same fine-tune (the default recipe,
# one epoch, repeated with three paired seeds; PRECISION=bf16 where the CPU has bf16 units). The same
# search with a second seed, evaluated the same way, shows how much one search's result depends on its
# seed; experiments.policy_vs_baselines sets both search seeds against every baseline, target by target,
# with paired seeds. Every step resumes where it stopped when the script is run again; a run under other
# settings (targets, recipe, proxy) starts afresh: remove POLICY, POLICY_SEED1 and REPORT first, or point
# them elsewhere.
#
# Five steps, each one process of one thread (STEPS picks; run two at a time on two cores): `policy`
# (search seed 0 and its evaluation), `seed1` (search seed 1 and its evaluation) and `amc-0.3`,
# `amc-0.5`, `amc-0.7` (AMC's search and fine-tunes at one target, about an hour each: a step that
# fits between interruptions). The reports are merged once all five are done.
#
# This is the third run (v3): the proxy chosen by the fidelity benchmark of issue #13 (the best-ranking one
# within 3x the cost of the first runs' episode): least-squares reconstruction on 256 training images,
# scored with the kl measure on 2,000 validation images (PROXY_ARGS).
# Uniform and global ranking do not use the proxy, so their rows are the second run's (BASELINES_FROM:
# the same base model, targets, recipe and seeds make them the same fine-tunes); BASELINES_FROM= (empty)
# evaluates them again. Earlier runs write beside this one: v1 `git checkout 23676e0`, v2 (adaptive BN on
# all validation images) `git checkout a28c31c`, each then `bash experiments/resnet20_cifar10.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${CKPT:-checkpoints/resnet20-cifar10.pt}
DATA=${DATA:-../shared/data/cifar10}
EPISODES=${EPISODES:-400}
PROXY_ARGS=(${PROXY_ARGS:---proxy recon --proxy-measure kl --proxy-images 2000})  # the proxy of the searches and AMC
RANGE=${RANGE:-0.2:0.75}  # the search's target range: covers every evaluated target with a margin
POLICY=${POLICY:-policies/resnet20-cifar10-v3}
POLICY_SEED1=${POLICY_SEED1:-policies/resnet20-cifar10-v3-seed1}
REPORT=${REPORT:-docs/results/resnet20-cifar10-v3}
BASELINES_FROM=${BASELINES_FROM-docs/results/resnet20-cifar10-v2/runs/policy}
AP=${AP:-.venv/bin/autoprune}
PY=${PY:-.venv/bin/python}
TARGETS=${TARGETS:-0.25,0.3,0.42,0.5,0.63,0.7}
AMC_TARGETS=(0.3 0.5 0.7)
STEPS=${STEPS:-policy seed1 ${AMC_TARGETS[*]/#/amc-}}  # which processes to run; the reports are merged once all are done
SEEDS=${SEEDS:-3}  # every fine-tune is repeated with this many seeds: mean ± std per row
FT=(--finetune-epochs 1 --finetune-seeds "$SEEDS" ${PRECISION:+--precision "$PRECISION"} --seed 0)

# resume a report, or an AMC search cut off before its first row was saved (--out/searches)
resumable() { { [ -f "$1/results.json" ] || [ -d "$1/searches" ]; } && echo --resume || true; }

search() {  # search SEED OUT
    local cmd=($AP --threads 1 search --checkpoint "$CKPT" --data-dir "$DATA" --targets "$RANGE" --episodes "$EPISODES"
               "${PROXY_ARGS[@]}" --seed "$1" --out "$2" --no-progress)
    if [ -f "$2/resume/state.json" ]; then
        "${cmd[@]}" --resume          # continue an interrupted search
    elif [ ! -f "$2/policy.json" ]; then
        "${cmd[@]}"                   # a committed, finished policy is used as it is
    fi
}

evaluate_policy() {  # evaluate_policy POLICY_DIR BASELINES REPORT_DIR
    $AP --threads 1 evaluate --policy "$1" --checkpoint "$CKPT" --data-dir "$DATA" \
        --targets "$TARGETS" --baselines "$2" --policy-best-of 8 "${FT[@]}" \
        --out "$3" $(resumable "$3")
}

policy_run() {
    search 0 "$POLICY"
    evaluate_policy "$POLICY" "$([ -n "$BASELINES_FROM" ] || echo uniform,global)" "$REPORT/runs/policy"
}

seed1_run() {
    search 1 "$POLICY_SEED1"
    evaluate_policy "$POLICY_SEED1" "" "$REPORT/search-seed1"
}

amc_run() {  # amc_run TARGET
    $AP --threads 1 evaluate --checkpoint "$CKPT" --data-dir "$DATA" "${PROXY_ARGS[@]}" \
        --targets "$1" --baselines amc --baseline-episodes "$EPISODES" "${FT[@]}" \
        --out "$REPORT/runs/amc-$1" $(resumable "$REPORT/runs/amc-$1")
}

mkdir -p logs
pids=()
for step in $STEPS; do
    case $step in
        policy|seed1) "${step}_run" > "logs/resnet20-v3-$step.log" 2>&1 & pids+=("$step:$!") ;;
        amc-0.3|amc-0.5|amc-0.7) amc_run "${step#amc-}" > "logs/resnet20-v3-$step.log" 2>&1 & pids+=("$step:$!") ;;
        *) echo "unknown step '$step' in STEPS: use policy, seed1, amc-0.3, amc-0.5 and/or amc-0.7" >&2; exit 2 ;;
    esac
done
for entry in "${pids[@]}"; do
    wait "${entry#*:}" || { echo "${entry%%:*} run failed: see logs/resnet20-v3-${entry%%:*}.log" >&2; exit 1; }
done
[ "${#pids[@]}" -eq 5 ] || {  # a finished step returns at once when run again, so all five steps merge
    echo "not merged: run the script with all five steps (the default STEPS) to finish" >&2; exit 0; }
baselines=(${BASELINES_FROM:+--baselines-from "$BASELINES_FROM"})
amc=("${AMC_TARGETS[@]/#/$REPORT/runs/amc-}")
$PY -m experiments.merge_reports "$REPORT/runs/policy" "${amc[@]}" "${baselines[@]}" --out "$REPORT"
$PY -m experiments.policy_vs_baselines --reports "$REPORT/runs/policy" "${amc[@]}" "${baselines[@]}" \
    --policy "search seed 1=$REPORT/search-seed1" --out-dir "$REPORT" --name policy_vs_baselines
