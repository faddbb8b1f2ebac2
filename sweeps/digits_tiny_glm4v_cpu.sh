#!/usr/bin/env bash
# Table: zero-shot vs prompt search vs peft=projector vs LoRA vs full fine-tuning on `digits` (scikit-learn's
# handwritten digits as images) with tiny_glm4v, 3 seeds each, on CPU (2 shared cores: about 10 minutes).
#
#   bash sweeps/digits_tiny_glm4v_cpu.sh        # -> results/digits_tiny_glm4v_cpu.{md,csv}
#
# Each column is one Hydra multirun over seed=0,1,2 with a `tag=` naming the column, then one table of the
# test accuracy with autoglm_bench.report and a provenance header. Prompt search selects on the dev rows
# (drawn from the train split); fine-tuning trains on train rows that are neither dev nor test rows.
#
# Environment (all optional):
#   LIMIT, DEV_SIZE, TRAIN_SIZE, EPOCHS, N_TRIALS   test rows (150), dev rows (100), training rows (300),
#                     epochs (2), prompt-search trials (6)
#   SEEDS             default 0,1,2
#   OUT, RESULTS      run folder (default multirun/digits_tiny_glm4v_cpu_<commit>), table prefix
#                     (default results/digits_tiny_glm4v_cpu)
#   QUICK=1           the whole path in about two minutes: 24 test rows, 2 seeds, 2 trials, 48 training rows,
#                     into multirun/quick/ (tests/test_sweeps.py)
#   ALLOW_DIRTY=1     run in a working tree with uncommitted changes (refused otherwise: a table comes from a
#                     clean commit) and tell the report to accept it; the header names the dirty commit
#
# Resumable: the run folder is named by the commit, and a column whose seeds all have a completed
# results.json is not run again.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# shellcheck source=sweeps/common.sh
. sweeps/common.sh
COMMIT="$(git_state)"
require_clean "$COMMIT"
COMMIT_TAG="$(commit_tag "$COMMIT")"
if [[ "${QUICK:-0}" == 1 ]]; then
    : "${LIMIT:=24}" "${DEV_SIZE:=16}" "${TRAIN_SIZE:=48}" "${EPOCHS:=1}" "${N_TRIALS:=2}" "${SEEDS:=0,1}"
    : "${OUT:=multirun/quick/digits_tiny_glm4v_cpu_${COMMIT_TAG}}" "${RESULTS:=multirun/quick/digits_tiny_glm4v_cpu}"
fi
LIMIT="${LIMIT:-150}"
DEV_SIZE="${DEV_SIZE:-100}"
TRAIN_SIZE="${TRAIN_SIZE:-300}"
EPOCHS="${EPOCHS:-2}"
N_TRIALS="${N_TRIALS:-6}"
SEEDS="${SEEDS:-0,1,2}"
OUT="${OUT:-multirun/digits_tiny_glm4v_cpu_${COMMIT_TAG}}"
RESULTS="${RESULTS:-results/digits_tiny_glm4v_cpu}"
COMMON="task=digits model=tiny_glm4v threads=1 limit=$LIMIT dev_size=$DEV_SIZE"
TRAIN="method=finetune method.train_size=$TRAIN_SIZE trainer.max_epochs=$EPOCHS method.batch_size=16 trainer.checkpoint=false"
declare -A COLUMN=(
    [zero-shot]="method=evaluate"
    [prompt-search]="method=prompt_search search=tpe search.n_trials=$N_TRIALS search.pruner=none 'search.space.k_shot=[0,1,2]'"
    [projector]="$TRAIN peft=projector optim.lr=5e-3 optim.weight_decay=0"
    [lora]="$TRAIN peft=lora optim.lr=3e-3"
    [full]="$TRAIN peft=full optim.lr=1e-3"
)
ORDER=(zero-shot prompt-search projector lora full)

log() { echo "[$(date +%H:%M:%S)] $*"; }
complete() {  # every seed of a column has a completed results.json
    python - "$1" "$SEEDS" <<'EOF'
import json, sys
for s in sys.argv[2].split(","):
    try:
        assert json.load(open(f"{sys.argv[1]}/seed{s}/results.json"))["status"] == "completed"
    except (OSError, ValueError, KeyError, AssertionError):
        sys.exit(1)
EOF
}

START=$SECONDS
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
mkdir -p "$OUT/logs" "$(dirname "$RESULTS")"
reused=no
for tag in "${ORDER[@]}"; do
    if complete "$OUT/$tag"; then
        log "$tag: seeds $SEEDS already complete in $OUT/$tag"
        reused=yes
        continue
    fi
    log "$tag: ${COLUMN[$tag]} seed=$SEEDS -> $OUT/$tag"
    s=$SECONDS
    # shellcheck disable=SC2086
    eval python -m autoglm_bench -m $COMMON ${COLUMN[$tag]} "tag=$tag" "seed=$SEEDS" "hydra.sweep.dir=$OUT/$tag" \
        "'hydra.sweep.subdir=seed\${seed}'" >"$OUT/logs/$tag.log" 2>&1 \
        || { echo "error: $tag failed; see $OUT/logs/$tag.log" >&2; exit 1; }
    find "$OUT/$tag" -name '*.ckpt' -delete
    log "$tag: done in $((SECONDS - s)) s"
done

REPORT_FLAGS=()
if [[ "${ALLOW_DIRTY:-0}" == 1 ]]; then REPORT_FLAGS+=(--allow-dirty); fi
runs=()
for tag in "${ORDER[@]}"; do runs+=("$OUT/$tag"); done
python -m autoglm_bench.report "${runs[@]}" --rows task.name --cols tag --metric acc --baseline zero-shot \
    --out "$RESULTS" --title "digits: tiny_glm4v on CPU, test acc" ${REPORT_FLAGS[@]+"${REPORT_FLAGS[@]}"}
WALL=$((SECONDS - START))
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"

table="$(cat "$RESULTS.md")"
{
    echo "# digits: zero-shot vs prompt search vs projector vs LoRA vs full (tiny_glm4v, CPU)"
    echo
    if [[ "${QUICK:-0}" == 1 ]]; then
        echo "**QUICK=1**: a smoke run of the whole path on tiny settings; its numbers mean nothing."
        echo
    fi
    command_block digits_tiny_glm4v_cpu.sh
    echo "- git commit: \`$COMMIT\` (every run records it in results.json \`env.git_commit\`; the report refuses mixed or dirty commits)"
    echo "- packages: $(packages_line)"
    echo "- machine: $(machine_line); OMP_NUM_THREADS=$OMP_NUM_THREADS, one run at a time; load average (1/5/15 min) $LOAD_START at the start, $LOAD_END at the end (other users' jobs share the cores)"
    if [[ "$reused" == yes ]]; then
        echo "- wall time: $((WALL / 60)) min $((WALL % 60)) s for this invocation, which reused runs of an earlier one"
    else
        echo "- wall time: $((WALL / 60)) min $((WALL % 60)) s for the whole table, from scratch"
    fi
    echo "- rows: the first $LIMIT of the 500 test rows; $DEV_SIZE dev rows drawn from the 1,297 train rows; fine-tuning trains on $TRAIN_SIZE of the remaining train rows for $EPOCHS epoch(s); seeds $SEEDS"
    echo
    echo "Settings of every run: \`$COMMON\`. Columns:"
    echo
    echo "| column | overrides |"
    echo "|---|---|"
    for tag in "${ORDER[@]}"; do echo "| $tag | \`${COLUMN[$tag]}\` |"; done
    echo
    echo "What these numbers are: tiny_glm4v, a real \`Glm4vForConditionalGeneration\` with a one-block vision tower"
    echo "and a 2-layer language model, both randomly initialised from \`model.seed\` (0), scoring the ten digit"
    echo "names by log-likelihood (chance: 0.1). They show that every method runs end to end on an image task"
    echo "through the same harness, with the same splits and report, and how the methods behave relative to each"
    echo "other at this tiny scale and row budget (fine-tuning sees ${TRAIN_SIZE} rows for $EPOCHS epoch(s); a prompt"
    echo "cannot teach a random model to read digits; the projector alone feeds a random language model)."
    echo "What they are NOT: GLM-4V's accuracy on digits, or what these methods reach with a pretrained model,"
    echo "all 1,297 training rows or tuned learning rates (each method has one fixed learning rate here)."
    echo "Prompt search selects on the dev rows only; its cell is the test accuracy of the prompt it picked."
    echo
    echo "Reading the table: bold marks the best column (and any within one standard error of it); † marks a"
    echo "column that differs from \`zero-shot\` at p < 0.05 after Holm's correction. Each cell is the mean over"
    echo "its seeds ± their standard deviation, with the example-level standard error; seeds with identical"
    echo "predictions (zero-shot is deterministic) count as one run."
    echo
    echo "$table"
} >"$RESULTS.md.tmp"
mv "$RESULTS.md.tmp" "$RESULTS.md"
log "wrote $RESULTS.md (+ .csv); wall time $((WALL / 60)) min $((WALL % 60)) s"
