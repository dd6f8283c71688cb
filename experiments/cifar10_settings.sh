# The settings the cross-architecture scripts share (sourced by cross_arch.sh and transfer.sh), so that
# every policy, baseline and transferred policy on an architecture is searched and evaluated alike.
# Each can be overridden from the environment.
DATA=${DATA:-../shared/data/cifar10}
DEVICE=${DEVICE:-cpu}        # cuda: train and fine-tune on a GPU
THREADS=${THREADS:-2}        # torch threads
WORKERS=${WORKERS:-1}        # N Ray workers of one thread each run a search's episodes and evaluate's fine-tunes
EPISODES=${EPISODES:-400}    # a search's episodes (and AMC's per target)
PROXY=${PROXY:-}             # validation images of the accuracy proxy; empty: the library's default (2,000)
SEEDS=${SEEDS:-2}            # paired fine-tune seeds per row
TARGETS=${TARGETS:-0.3,0.42,0.5,0.63,0.7}
RANGE=${RANGE:-0.25:0.75}    # a search's target range
AP=${AP:-.venv/bin/autoprune}
PY=${PY:-.venv/bin/python}
# every evaluation's fine-tune: the default recipe, FT_EPOCHS epochs, SEEDS paired seeds from 0
FT=(--finetune-epochs "${FT_EPOCHS:-1}" --finetune-seeds "$SEEDS" --seed 0 --workers "$WORKERS")

ap() { $AP --threads "$THREADS" --device "$DEVICE" "$@"; }
# resume a report, or an AMC search cut off before its first row was saved (--out/searches)
resumable() { { [ -f "$1/results.json" ] || [ -d "$1/searches" ]; } && echo --resume || true; }
# conditional_search OUT [flags...]: one conditional search over RANGE with the transferable observation;
# resumes an interrupted one, skips a finished one
conditional_search() {
    local out=$1; shift
    local cmd=(ap search "$@" --data-dir "$DATA" --targets "$RANGE" ${PROXY:+--proxy-images "$PROXY"} --observation transferable
               --workers "$WORKERS" --seed 0 --out "$out" --no-progress)
    if [ -f "$out/resume/state.json" ]; then "${cmd[@]}" --resume; elif [ ! -f "$out/policy.json" ]; then "${cmd[@]}"; fi
}
