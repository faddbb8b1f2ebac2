#!/usr/bin/env bash
# Paper table (b): PEFT methods x tasks.
#
#   bash sweeps/peft_minilm_cpu.sh                                  # MiniLM on CPU (2 shared cores: about an hour)
#   MODEL=glm4_9b TRAINER=gpu bash sweeps/peft_minilm_cpu.sh        # the same table for GLM-4-9B on one GPU
#
# For every (task, PEFT method): a grid learning-rate sweep through our Optuna Hydra sweeper (objective: the
# dev accuracy; dev = rows drawn from the train split, autoglm_bench/data/splits.py), then 3 seeds (seed=0,1,2, a
# plain Hydra multirun) of the lr with the best dev accuracy, then one table of the test accuracy (the task's
# validation split) with autoglm_bench.report, and a provenance header in <RESULTS>.md.
#
# Environment (all optional; see sweeps/README.md):
#   AUTOGLM_DATA_DIR  data folder (default ../shared/data)
#   MODEL, TRAINER    conf/model and conf/trainer options (default minilm, cpu)
#   TASKS             default "sst2 rte cb"
#   PEFTS             default "full lora prompt_tuning" for an encoder (PEFT has no prefix tuning for
#                     encoders), "full lora prefix prompt_tuning" for a causal LM
#   GRID_<peft>       comma-separated learning rates of that method's sweep (defaults below, per model kind)
#   TASK_ARGS_<task>  the task's Hydra overrides (sizes; defaults below)
#   EXTRA             more Hydra overrides for every job, e.g. "method.batch_size=4 model.path=/models/glm"
#   SEEDS             default 0,1,2
#   LANES             cells run at once (default 2 on trainer=cpu: one thread each; 1 otherwise)
#   OUT               run folder (default multirun/peft_<model>_<trainer>_<commit>); RESULTS: table prefix
#                     (default results/peft_<model>_<trainer>)
#   QUICK=1           the whole path in a minute or two: the synthetic toy_sentiment task (no data needed),
#                     full and LoRA, a 2-point and a 1-point grid, seeds 0,1, a few dozen rows; into multirun/quick/
#   ALLOW_DIRTY=1     run in a working tree with uncommitted changes (refused otherwise: a table comes from a
#                     clean commit) and tell the report to accept it; the header names the dirty commit
#
# Resumable: sweep and seed folders are named by a hash of their settings under a run folder named by the
# commit, so the same command again at the same commit reuses finished trials (the sweeper resumes its
# optuna.db) and skips seeds whose results.json is complete.
# Internal: `bash sweeps/peft_minilm_cpu.sh cell TASK PEFT` runs one cell (the lanes call it).
set -euo pipefail

SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
cd "$(dirname "$SCRIPT")/.."
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export AUTOGLM_DATA_DIR="${AUTOGLM_DATA_DIR:-../shared/data}"
# shellcheck source=sweeps/common.sh
. sweeps/common.sh
if [[ "${1:-}" != cell ]]; then  # the top-level invocation: a table comes from a clean commit
    COMMIT="$(git_state)"
    require_clean "$COMMIT"
    export COMMIT
fi
COMMIT="${COMMIT:-unknown}"
COMMIT_TAG="$(commit_tag "$COMMIT")"
if [[ "${QUICK:-0}" == 1 ]]; then  # the whole path, tiny: one synthetic task, 2 methods, 3 trials, 2 seeds
    : "${TASKS:=toy_sentiment}" "${PEFTS:=full lora}" "${GRID_full:=1e-4,3e-4}" "${GRID_lora:=3e-3}" "${SEEDS:=0,1}"
    : "${TASK_ARGS_toy_sentiment:=task=toy_sentiment dev_size=16 limit=24 method.train_size=24 method.batch_size=8 trainer.max_epochs=1}"
    : "${OUT:=multirun/quick/peft_${MODEL:-minilm}_${TRAINER:-cpu}_${COMMIT_TAG}}"
    : "${RESULTS:=multirun/quick/peft_${MODEL:-minilm}_${TRAINER:-cpu}}"
    export TASK_ARGS_toy_sentiment
fi
MODEL="${MODEL:-minilm}"
TRAINER="${TRAINER:-cpu}"
TASKS="${TASKS:-sst2 rte cb}"
SEEDS="${SEEDS:-0,1,2}"
OUT="${OUT:-multirun/peft_${MODEL}_${TRAINER}_${COMMIT_TAG}}"
RESULTS="${RESULTS:-results/peft_${MODEL}_${TRAINER}}"
EXTRA="${EXTRA:-}"
if [[ "$TRAINER" == cpu ]]; then LANES="${LANES:-2}"; else LANES="${LANES:-1}"; fi
export MODEL TRAINER TASKS SEEDS OUT RESULTS EXTRA LANES

[[ -f "conf/model/$MODEL.yaml" ]] || { echo "error: no conf/model/$MODEL.yaml" >&2; exit 2; }
[[ -f "conf/trainer/$TRAINER.yaml" ]] || { echo "error: no conf/trainer/$TRAINER.yaml" >&2; exit 2; }
KIND="$(sed -n 's/^kind:[[:space:]]*\([a-z_]*\).*/\1/p' "conf/model/$MODEL.yaml")"

# Learning-rate grids. Encoder (MiniLM + a freshly initialised classification head, a few dozen optimiser
# steps): full 3e-5..3e-4, LoRA higher (few trainable weights, short runs), soft prompts 3e-2..3e-1.
# Causal LM (GLM-4, loss on the verbaliser tokens): the usual LLM ranges.
if [[ "$KIND" == encoder ]]; then
    PEFTS="${PEFTS:-full lora prompt_tuning}"
    GRID_full="${GRID_full:-3e-5,1e-4,3e-4}"
    GRID_lora="${GRID_lora:-1e-3,3e-3,1e-2}"
    GRID_prefix="${GRID_prefix:-1e-2,3e-2,1e-1}"
    GRID_prompt_tuning="${GRID_prompt_tuning:-3e-2,1e-1,3e-1}"
else
    PEFTS="${PEFTS:-full lora prefix prompt_tuning}"
    GRID_full="${GRID_full:-1e-5,3e-5,1e-4}"
    GRID_lora="${GRID_lora:-1e-4,3e-4,1e-3}"
    GRID_prefix="${GRID_prefix:-3e-3,1e-2,3e-2}"
    GRID_prompt_tuning="${GRID_prompt_tuning:-3e-2,1e-1,3e-1}"
fi
export PEFTS GRID_full GRID_lora GRID_prefix GRID_prompt_tuning KIND

# Per-task rows and epochs. dev_size: rows of the train split held out for the lr choice (the split
# protocol's default 200; CB's train split has only 250 rows, so 50). method.train_size caps the training
# rows so that the whole table fits in about an hour on 2 shared CPU cores. Test rows: the whole
# validation split (SST-2 872, RTE 277, CB 56); no limit=.
TASK_ARGS_sst2="${TASK_ARGS_sst2:-task=sst2 prompt.template=review dev_size=200 method.train_size=800 method.batch_size=16 trainer.max_epochs=1}"
TASK_ARGS_rte="${TASK_ARGS_rte:-task=rte dev_size=200 method.train_size=300 method.batch_size=16 trainer.max_epochs=1}"
TASK_ARGS_cb="${TASK_ARGS_cb:-task=cb dev_size=50 method.batch_size=8 trainer.max_epochs=1}"
export TASK_ARGS_sst2 TASK_ARGS_rte TASK_ARGS_cb

# Every job: fine-tune, 6% warmup then linear decay, no saved weights (the table needs only results.json).
COMMON="model=$MODEL trainer=$TRAINER method=finetune optim=adamw optim.warmup_ratio=0.06 optim.weight_decay=0.01"
COMMON+=" method.save_model=false trainer.checkpoint=false logger=csv"
if [[ "$TRAINER" == cpu ]]; then
    COMMON+=" threads=1 method.eval_batch_size=4"  # one thread per lane; small eval batches pad less
fi
export COMMON

log() { echo "[$(date +%H:%M:%S)] $*"; }

# The overrides of one cell (task, peft), one per line, and the hash that names its folders.
cell_args() {
    local task="$1" peft="$2" var="TASK_ARGS_$1"
    [[ -n "${!var:-}" ]] || { echo "error: no TASK_ARGS_$task (tasks with defaults: sst2 rte cb)" >&2; return 2; }
    # shellcheck disable=SC2086
    printf '%s\n' $COMMON ${!var} "peft=$peft" $EXTRA
}

run_cell() {
    local task="$1" peft="$2" grid_var="GRID_$2"
    local grid="${!grid_var:-}"
    [[ -n "$grid" ]] || { echo "error: no learning-rate grid GRID_$peft" >&2; return 2; }
    local -a args
    mapfile -t args < <(cell_args "$task" "$peft")
    local hash
    hash="$(printf '%s\n' "${args[@]}" "grid=$grid" | sha1sum | cut -c1-8)"
    local cell="${task}_${peft}" sweep="$OUT/sweeps/${task}_${peft}_${hash}"
    local n_trials
    n_trials="$(tr ',' '\n' <<<"$grid" | grep -c .)"
    local start=$SECONDS reused=no
    mkdir -p "$OUT/logs"
    [[ ! -f "$sweep/optuna.db" ]] || reused=yes

    log "$cell: lr sweep {$grid} -> $sweep"
    python -m autoglm_bench -m hydra/sweeper=optuna "${args[@]}" "optim.lr=choice($grid)" \
        hydra.sweeper.sampler=grid "hydra.sweeper.n_trials=$n_trials" hydra.sweeper.pruner=none \
        "hydra.sweep.dir=$sweep" >>"$OUT/logs/$cell.log" 2>&1 \
        || { echo "error: sweep of $cell failed; see $OUT/logs/$cell.log" >&2; return 1; }
    find "$sweep" -name '*.ckpt' -delete  # Lightning's default checkpoint (see sweeps/README.md)

    # The best dev accuracy of the sweep's study (ties: the smaller learning rate), and every trial's.
    local best lr
    best="$(python - "$sweep" <<'EOF'
import sys, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
storage = f"sqlite:///{sys.argv[1]}/optuna.db"
names = optuna.get_all_study_names(storage)
if len(names) != 1:
    sys.exit(f"error: expected one study in {storage}, found {names}")
study = optuna.load_study(study_name=names[0], storage=storage)
done = [t for t in study.trials if t.state.name == "COMPLETE"]
if not done:
    sys.exit(f"error: no trial of {names[0]} in {storage} completed")
best = max(done, key=lambda t: (t.value, -t.params["optim.lr"]))  # maximize; ties: the smaller lr
trials = ";".join(f"{t.params['optim.lr']:g}={t.value:.4f}" for t in sorted(done, key=lambda t: t.params["optim.lr"]))
print(f"{best.params['optim.lr']!r}\t{best.value:.4f}\t{trials}\t{len(study.trials) - len(done)}")
EOF
)" || { echo "error: could not read the best lr of $cell from $sweep/optuna.db" >&2; return 1; }
    lr="$(cut -f1 <<<"$best")"
    [[ "$(cut -f4 <<<"$best")" == 0 ]] || log "$cell: warning: $(cut -f4 <<<"$best") sweep trials did not complete"
    log "$cell: best dev acc $(cut -f2 <<<"$best") at lr=$lr (all: $(cut -f3 <<<"$best"))"

    local seeds_dir="$OUT/seeds/${task}_${peft}_${hash}_lr${lr}" missing=()
    local s
    for s in ${SEEDS//,/ }; do
        python - "$seeds_dir/seed$s/results.json" <<'EOF' || missing+=("$s")
import json, sys
try:
    sys.exit(0 if json.load(open(sys.argv[1]))["status"] == "completed" else 1)
except (OSError, ValueError, KeyError):
    sys.exit(1)
EOF
    done
    [[ "${#missing[@]}" == "$(tr ',' '\n' <<<"$SEEDS" | grep -c .)" ]] || reused=yes
    if ((${#missing[@]})); then
        local seedlist
        seedlist="$(IFS=,; echo "${missing[*]}")"
        log "$cell: seeds $seedlist at lr=$lr -> $seeds_dir"
        python -m autoglm_bench -m "${args[@]}" "optim.lr=$lr" "seed=$seedlist" \
            "hydra.sweep.dir=$seeds_dir" 'hydra.sweep.subdir=seed${seed}' >>"$OUT/logs/$cell.log" 2>&1 \
            || { echo "error: seed runs of $cell failed; see $OUT/logs/$cell.log" >&2; return 1; }
        find "$seeds_dir" -name '*.ckpt' -delete
    else
        log "$cell: seeds $SEEDS already complete in $seeds_dir"
    fi
    # task, peft, lr, best dev acc, all trials, trials not complete, seeds folder, seconds, reused earlier runs
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$task" "$peft" "$best" "$seeds_dir" "$((SECONDS - start))" "$reused" \
        >"$OUT/cells/$cell.tsv"
    log "$cell: done in $((SECONDS - start)) s"
}

if [[ "${1:-}" == cell ]]; then
    run_cell "$2" "$3"
    exit
fi

# ---------------------------------------------------------------- the whole table
START=$SECONDS
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
mkdir -p "$OUT/cells" "$OUT/logs" "$(dirname "$RESULTS")"
rm -f "$OUT"/cells/*.tsv
log "table (b): model=$MODEL trainer=$TRAINER tasks={$TASKS} peft={$PEFTS} lanes=$LANES data=$AUTOGLM_DATA_DIR"
if [[ "$KIND" == encoder ]]; then
    log "peft=prefix is not run: PEFT's prefix tuning needs past_key_values, which encoders do not take"
fi
for task in $TASKS; do
    var="TASK_ARGS_$task"
    [[ -n "${!var:-}" ]] || { echo "error: task $task has no TASK_ARGS_$task (defaults exist for sst2 rte cb)" >&2; exit 2; }
done
for peft in $PEFTS; do
    var="GRID_$peft"
    [[ -n "${!var:-}" ]] || { echo "error: peft $peft has no learning-rate grid GRID_$peft" >&2; exit 2; }
done
# Cells in a queue, $LANES at a time, the most expensive first (RTE: the longest inputs, then SST-2).
cells=()
for task in $TASKS; do for peft in $PEFTS; do cells+=("$task $peft"); done; done
printf '%s\n' "${cells[@]}" | awk '{o = ($1 == "rte") ? 0 : ($1 == "sst2") ? 1 : 2; print o, $0}' | sort -s -n -k1,1 \
    | cut -d' ' -f2- | xargs -P "$LANES" -L 1 bash "$SCRIPT" cell \
    || { echo "error: some cells failed; see $OUT/logs/" >&2; exit 1; }

seed_dirs=()
for task in $TASKS; do for peft in $PEFTS; do
    seed_dirs+=("$(cut -f7 "$OUT/cells/${task}_${peft}.tsv")")
done; done
BASELINE="${BASELINE:-$(grep -qw full <<<"$PEFTS" && echo full || echo "${PEFTS%% *}")}"
n_seeds="$(tr ',' '\n' <<<"$SEEDS" | grep -c .)"
TITLE="${TITLE:-PEFT methods x tasks: $MODEL, $TRAINER, test acc}"
REPORT_FLAGS=()
if [[ "${ALLOW_DIRTY:-0}" == 1 ]]; then REPORT_FLAGS+=(--allow-dirty); fi
python -m autoglm_bench.report "${seed_dirs[@]}" --rows task.name --cols peft.method --baseline "$BASELINE" \
    --metric acc --out "$RESULTS" --title "$TITLE" ${REPORT_FLAGS[@]+"${REPORT_FLAGS[@]}"}
WALL=$((SECONDS - START))
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
# The majority-class rate of each task's test rows (from the targets in one seed run per task).
majority="$(python - "${seed_dirs[@]}" <<'EOF'
import collections, glob, json, sys
seen = {}
for folder in sys.argv[1:]:
    for path in sorted(glob.glob(f"{folder}/*/results.json"))[:1]:
        r = json.load(open(path))
        if r["task"] not in seen:
            c = collections.Counter(p["target"] for p in r["predictions"])
            seen[r["task"]] = f"{r['task']} {max(c.values()) / sum(c.values()):.4f} ({max(c.values())}/{sum(c.values())})"
print(", ".join(seen.values()))
EOF
)"

# ---------------------------------------------------------------- provenance header
commit="$(git_state)"
[[ "$commit" == "$COMMIT" ]] || commit="$COMMIT at the start, $commit when this file was written"
table="$(cat "$RESULTS.md")"
{
    echo "# Table (b): PEFT methods x tasks ($MODEL, trainer=$TRAINER)"
    echo
    if [[ "${QUICK:-0}" == 1 ]]; then
        echo "**QUICK=1**: a smoke run of the whole path (sweeps, seeds, report) on tiny settings; its numbers mean nothing."
        echo
    fi
    settings=""
    [[ "$MODEL" == minilm && "$TRAINER" == cpu ]] || settings="MODEL=$MODEL TRAINER=$TRAINER"
    command_block peft_minilm_cpu.sh "$settings"
    echo "- git commit: \`$commit\` (every run records it in results.json \`env.git_commit\`, and the report refuses mixed or dirty commits)"
    echo "- packages: $(packages_line)"
    echo "- machine: $(machine_line); OMP_NUM_THREADS=$OMP_NUM_THREADS, $LANES cells at a time; load average (1/5/15 min) $LOAD_START at the start, $LOAD_END at the end (other users' jobs share the cores)"
    if cut -f9 "$OUT"/cells/*.tsv | grep -q yes; then
        echo "- wall time: $((WALL / 60)) min $((WALL % 60)) s for this invocation, which reused sweep trials or seed runs of an earlier one (resumed; not the cost of the whole table)"
    else
        echo "- wall time: $((WALL / 60)) min $((WALL % 60)) s for the whole table, from scratch (all sweeps, seed runs and the report)"
    fi
    if grep -q 'limit=' <<<"$EXTRA $(for t in $TASKS; do v="TASK_ARGS_$t"; echo "${!v}"; done)"; then
        echo "- data: \`$AUTOGLM_DATA_DIR\`; test rows: each task's validation split, capped by the \`limit=\` in the overrides below"
    else
        echo "- data: \`$AUTOGLM_DATA_DIR\`; test rows: each task's whole validation split (SST-2 872, RTE 277, CB 56), no \`limit=\`"
    fi
    echo
    echo "Settings of every job: \`$COMMON${EXTRA:+ $EXTRA}\`"
    echo
    echo "| task | task overrides |"
    echo "|---|---|"
    for task in $TASKS; do var="TASK_ARGS_$task"; echo "| $task | \`${!var}\` |"; done
    echo
    echo "Learning rate chosen per (task, method): the grid sweep's best dev accuracy (the dev rows come from the"
    echo "train split; ties go to the smaller learning rate). The test rows were never used to choose anything."
    echo
    echo "| task | method | grid | chosen lr | dev acc at chosen lr | dev acc per lr | cell time (s) |"
    echo "|---|---|---|---:|---:|---|---:|"
    for task in $TASKS; do for peft in $PEFTS; do
        IFS=$'\t' read -r t p lr dev all _incomplete _dir secs _reused <"$OUT/cells/${task}_${peft}.tsv"
        grid_var="GRID_$peft"
        echo "| $t | $p | ${!grid_var} | $lr | $dev | ${all//;/, } | $secs |"
    done; done
    echo
    if [[ "$KIND" == encoder ]]; then
        echo "What these numbers are: $MODEL (the pretrained all-MiniLM-L6-v2, a 22M-parameter BERT-style encoder) with a"
        echo "new sequence-classification head, fine-tuned on CPU with capped training rows (see the task overrides),"
        echo "one epoch, learning rates chosen on small dev sets (200 rows; 50 for CB), $n_seeds seeds each."
        echo "What they are NOT: GLM-4 results, or what these PEFT methods reach with full training sets and longer"
        echo "training. Majority-class rate of the test rows: $majority. Seed-to-seed spread and the small"
        echo "test sets (RTE 277 rows, CB 56) make most differences between methods insignificant."
        echo "Prefix tuning (\`peft=prefix\`) is not in the table: PEFT's prefix tuning feeds past_key_values, which"
        echo "BERT-style encoders do not take, and the harness refuses it on an encoder with a one-line error. It runs"
        echo "for causal LMs (the GLM-4 variant: \`MODEL=glm4_9b TRAINER=gpu bash sweeps/peft_minilm_cpu.sh\`)."
    else
        echo "What these numbers are: $MODEL fine-tuned with trainer=$TRAINER (loss on the verbalised answer) with the"
        echo "row caps above, learning rates chosen on the dev rows, $n_seeds seeds each; compare with the MiniLM CPU table"
        echo "only as a different model at the same row budget."
    fi
    echo
    echo "Reading the table: rows are tasks, columns PEFT methods; bold marks the best method of each row (and any"
    echo "within one standard error of it); † marks a cell that differs from \`$BASELINE\` in the same row at p < 0.05"
    echo "after Holm's correction over all the table's tests. Each cell is the mean over its seeds ± their standard"
    echo "deviation, with the example-level standard error; the test is the seed-and-example t-test (the notes under"
    echo "the table say how), and the CSV has every cell's raw and adjusted p."
    echo
    echo "$table"
} >"$RESULTS.md.tmp"
mv "$RESULTS.md.tmp" "$RESULTS.md"
log "wrote $RESULTS.md (+ .tex .csv _cost.png); wall time $((WALL / 60)) min $((WALL % 60)) s"
