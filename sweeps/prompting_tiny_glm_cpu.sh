#!/usr/bin/env bash
# Paper table (a): prompting methods x tasks. Rows: SST-2, RTE, CB, BoolQ; columns: zero-shot
# (method=evaluate), few-shot k=4 (class-balanced demos) and Optuna prompt search (TPE + Wilcoxon pruning,
# selecting on dev rows only, its best prompt scored on the test rows); each cell over 3 seeds.
#
#   bash sweeps/prompting_tiny_glm_cpu.sh                # CPU: first trains a 1.5M-parameter GLM-4-architecture model
#   MODEL=glm4_9b bash sweeps/prompting_tiny_glm_cpu.sh  # GPU: THUDM/glm-4-9b-hf, no training step
#
# Settings (environment): AUTOGLM_DATA_DIR (default ../shared/data), MODEL (tiny_glm_cpu | any conf/model
# option), SEEDS (0,1,2), LIMIT (test rows per task: the first N; default null = all), DEV_SIZE (100),
# N_TRIALS (30), STEPS (training steps of the CPU model, 500), TASK_WEIGHTS (its batches per task, 4,1,1),
# TASK_GLM_ARGS (more task-glm flags, e.g. "--hidden-size 64"), THREADS (torch threads per run, 1), OUT
# (results/prompting_<model>), TASKS ("sst2 rte cb boolq"), TRAIN_TASKS (sst2,rte,cb), RUNS (multirun/prompting).
# Runs go to stable folders under $RUNS named by the settings and the commit (gitignored); a rerun at the same
# commit skips completed runs and resumes unfinished prompt-search studies. See sweeps/README.md.
#
# A table comes from a clean commit: the script refuses a working tree with uncommitted changes (ALLOW_DIRTY=1
# makes a scratch table whose header says so). QUICK=1 runs the whole path in a minute or two: the synthetic
# toy_sentiment task (no data needed), 2 seeds, a few rows and steps, 2 search trials, into multirun/quick/.
set -euo pipefail
cd "$(dirname "$0")/.."

start_s=$(date +%s)
trained=0   # 1 when this invocation trained the model
launched=0  # runs this invocation launched
# shellcheck source=sweeps/common.sh
. sweeps/common.sh
start_commit=$(git_state)
require_clean "$start_commit"
REPORT_FLAGS=()
if [[ "${ALLOW_DIRTY:-0}" == 1 ]]; then REPORT_FLAGS+=(--allow-dirty); fi
if [[ "${QUICK:-0}" == 1 ]]; then  # the whole path, tiny: one synthetic task, 2 seeds, a few rows, steps, trials
  : "${TASKS:=toy_sentiment}" "${TRAIN_TASKS:=toy_sentiment}" "${TASK_WEIGHTS:=1}" "${SEEDS:=0,1}" "${LIMIT:=24}"
  : "${DEV_SIZE:=16}" "${N_TRIALS:=2}" "${STEPS:=4}" "${TASK_GLM_ARGS:=--batch-size 4 --max-tokens 128}"
  : "${RUNS:=multirun/quick/prompting}" "${OUT:=multirun/quick/prompting_tiny_glm_cpu}"
fi
DATA_DIR=${AUTOGLM_DATA_DIR:-../shared/data}
MODEL=${MODEL:-tiny_glm_cpu}
SEEDS=${SEEDS:-0,1,2}
LIMIT=${LIMIT:-null}
DEV_SIZE=${DEV_SIZE:-100}
SPLIT_SEED=0
N_TRIALS=${N_TRIALS:-30}
STEPS=${STEPS:-500}
TASK_WEIGHTS=${TASK_WEIGHTS:-4,1,1}  # SST-2 batches 4x as often as RTE's or CB's
THREADS=${THREADS:-1}
K_SHOT=4
RUNS=${RUNS:-multirun/prompting}
TRAIN_TASKS=${TRAIN_TASKS:-sst2,rte,cb}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$THREADS}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
read -r -a TASKS <<< "${TASKS:-sst2 rte cb boolq}"

# ---------------------------------------------------------------- the model
if [[ "$MODEL" == tiny_glm_cpu ]]; then
  echo "== training (or loading the cached) task GLM: $STEPS steps on the train parts of $TRAIN_TASKS"
  MODEL_PATH=$("$PYTHON" -m autoglm_bench.bench task-glm --tasks "$TRAIN_TASKS" --data-dir "$DATA_DIR" \
    --steps "$STEPS" --task-weights "$TASK_WEIGHTS" --split-seed "$SPLIT_SEED" --dev-size "$DEV_SIZE" \
    --threads "$THREADS" ${TASK_GLM_ARGS:-})
  MODEL_PATH=$(printf '%s\n' "$MODEL_PATH" | tail -n 1)
  if [[ $(stat -c %Y "$MODEL_PATH/model.safetensors") -ge $start_s ]]; then trained=1; fi
  MODEL_ARGS=(model=hf "model.path=$MODEL_PATH")
  MODEL_TAG="tiny_glm_$(basename "$MODEL_PATH")"
  OUT=${OUT:-results/prompting_tiny_glm_cpu}
else
  MODEL_PATH=""
  MODEL_ARGS=("model=$MODEL")
  MODEL_TAG="$MODEL"
  OUT=${OUT:-results/prompting_$MODEL}
fi
run_tag=$(commit_tag "$start_commit")
ROOT="$RUNS/${MODEL_TAG}_limit${LIMIT}_dev${DEV_SIZE}_split${SPLIT_SEED}_${run_tag}"
echo "== model: ${MODEL_ARGS[*]}; runs under $ROOT"

COMMON=(data_dir="$DATA_DIR" split_seed="$SPLIT_SEED" dev_size="$DEV_SIZE" limit="$LIMIT" threads="$THREADS"
        "${MODEL_ARGS[@]}")

# The prompt-search space per task: instructions (none or the task's), all of the task's templates, the
# task's own label words plus one alternative set, k in {0,1,2,4}, random or balanced demos in either order.
# BoolQ has no train split here, so no demos: its search is over instructions and label words at k=0.
space_for() {
  local s=("search.space.instructions=[none,task]" "search.space.templates=null")
  case "$1" in
    sst2) s+=("+search.space.verbalizers.task=[negative,positive]" "+search.space.verbalizers.bad_good=[bad,good]") ;;
    rte) s+=("+search.space.verbalizers.task=[True,False]" "+search.space.verbalizers.yes_no=[yes,no]") ;;
    cb) s+=("+search.space.verbalizers.task=[True,False,Neither]"
            "+search.space.verbalizers.yes_no_maybe=[yes,no,maybe]") ;;
    boolq) s+=("+search.space.verbalizers.task=[no,yes]" "+search.space.verbalizers.false_true=[False,True]") ;;
    toy_sentiment) s+=("+search.space.verbalizers.task=[negative,positive]"
                       "+search.space.verbalizers.bad_good=[bad,good]") ;;
  esac
  if [[ "$1" == boolq ]]; then
    s+=("search.space.k_shot=[0]" "search.space.demo_selection=[random]" "search.space.demo_order=[selected]")
  else
    s+=("search.space.k_shot=[0,1,2,4]" "search.space.demo_selection=[random,balanced]"
        "search.space.demo_order=[selected,reversed]")
  fi
  printf '%s\n' "${s[@]}"
}

# Seeds of SEEDS without a completed results.json in <dir>/seed<N>, comma-separated (a rerun resumes).
missing_seeds() {
  local dir=$1 out=() s
  IFS=, read -r -a all <<< "$SEEDS"
  for s in "${all[@]}"; do
    grep -qs '"status": "completed"' "$dir/seed$s/results.json" || out+=("$s")
  done
  (IFS=,; echo "${out[*]}")
}

# One cell: task, column tag, then its overrides; a Hydra multirun over the missing seeds.
cell() {
  local task=$1 tag=$2; shift 2
  local dir="$ROOT/$task/$tag" seeds
  seeds=$(missing_seeds "$dir")
  if [[ -z "$seeds" ]]; then echo "== $task / $tag: all seeds done"; return; fi
  echo "== $task / $tag: seeds $seeds"
  launched=$((launched + $(tr ',' '\n' <<< "$seeds" | wc -l)))
  "$PYTHON" -m autoglm_bench -m "task=$task" "tag=$tag" "seed=$seeds" "${COMMON[@]}" "$@" \
    "hydra.sweep.dir=$dir" 'hydra.sweep.subdir=seed${seed}'
}

for task in "${TASKS[@]}"; do
  cell "$task" 0-shot method=evaluate prompt=zero_shot
  if [[ "$task" != boolq ]]; then  # no train split, so no demos: shown as n/a
    cell "$task" 4-shot method=evaluate prompt=few_shot "prompt.k_shot=$K_SHOT" prompt.demo_selection=balanced
  fi
  mapfile -t space < <(space_for "$task")
  cell "$task" prompt-search method=prompt_search search=tpe "search.n_trials=$N_TRIALS" "${space[@]}"
done

# ---------------------------------------------------------------- the table
title="Test acc: prompting methods x tasks, $MODEL_TAG"
rm -f "$OUT"_history_*.png  # the report writes one per study of these runs; older studies' plots would linger
"$PYTHON" -m autoglm_bench.report "$ROOT" --rows task.name --cols tag --metric acc --baseline 0-shot \
  --out "$OUT" --title "$title" ${REPORT_FLAGS[@]+"${REPORT_FLAGS[@]}"}

wall_s=$(( $(date +%s) - start_s ))
# one line per invocation (start, wall seconds, runs launched, model trained), so a rerun that only
# re-makes the table still reports the wall time of the invocations that did the work
printf '%s\t%s\t%s\t%s\n' "$(date -u -d "@$start_s" +%FT%TZ)" "$wall_s" "$launched" "$trained" \
  >> "$ROOT/invocations.tsv"
command="bash sweeps/prompting_tiny_glm_cpu.sh"
for var in QUICK ALLOW_DIRTY MODEL TASKS TRAIN_TASKS SEEDS LIMIT DEV_SIZE N_TRIALS STEPS TASK_WEIGHTS TASK_GLM_ARGS \
  THREADS RUNS OUT AUTOGLM_DATA_DIR; do
  value=$(printenv "$var" || true)  # only what the caller set in the environment
  if [[ -n "$value" ]]; then command="$var=$(printf %q "$value") $command"; fi
done
"$PYTHON" - "$OUT" "$ROOT" "$MODEL" "$MODEL_PATH" "$command" "$wall_s" "$LIMIT" "$DEV_SIZE" "$N_TRIALS" "$SEEDS" \
  "$K_SHOT" "$start_commit" "${TASKS[*]}" <<'PY'
"""Prepend the provenance header to the report's Markdown, mark BoolQ's few-shot cell n/a, list the prompts
the searches picked."""
import json
import os
import platform
import subprocess
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path

out, root, model, model_path, command, wall_s, limit, dev_size, n_trials, seeds, k_shot, start_commit, tasks = sys.argv[1:]
md_path, tex_path = Path(out + ".md"), Path(out + ".tex")


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


head = sh("git", "rev-parse", "HEAD") or "unknown"
dirty = "-dirty" if sh("git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results") else ""
cpu = next((line.split(":", 1)[1].strip() for line in sh("lscpu").splitlines() if line.startswith("Model name")),
           platform.processor() or "unknown")
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "transformers", "optuna", "hydra-core",
                                                           "autoglm-bench"))
runs = [json.loads(p.read_text()) for p in sorted(Path(root).rglob("results.json"))]
done = [r for r in runs if r.get("status") == "completed"]
device = sorted({r["env"].get("device", "?") for r in done})
threads = sorted({r["env"].get("threads") for r in done if r["env"].get("threads") is not None})
wall = int(wall_s)


def mmss(seconds):
    return f"{int(seconds) // 60} min {int(seconds) % 60} s"


invocations = [line.split("\t") for line in (Path(root) / "invocations.tsv").read_text().splitlines() if line]
working = [(when, int(w), int(n), t == "1") for when, w, n, t in invocations if int(n) or t == "1"]
parts = [f"{mmss(w)} ({when}: " + ", ".join((["trained the model"] if t else []) + [f"ran {n} runs"]) + ")"
         for when, w, n, t in working]
work = " + ".join(parts) or "no invocation ran anything"
if len(working) > 1:
    work = f"{mmss(sum(w for _, w, _, _ in working))} in total over the invocations that did work: " + work
if not working or working[-1][0] != invocations[-1][0]:
    work += f"; this invocation (table only): {mmss(wall)}"
in_runs = sum(v for r in done for k, v in r.get("timings", {}).items()
              if k in ("load_s", "search_s", "eval_s") and isinstance(v, int | float)
              and not (k == "eval_s" and "search_s" in r["timings"]))  # a search's eval_s is inside search_s


def majority(task):
    """Majority-class rate of the task's test rows (from a zero-shot run's targets)."""
    runs = [r for r in done if r["task"] == task and r["method"] == "evaluate"]
    if not runs:
        return None
    targets = [p["target"] for p in runs[0]["predictions"]]
    top = max(set(targets), key=targets.count)
    return targets.count(top) / len(targets), len(targets)


rates = {t: majority(t) for t in tasks.split()}

lines = [
    "# Prompting methods x tasks" + (": a tiny GLM-4-architecture model on CPU" if model == "tiny_glm_cpu" else
                                      f": {model}"),
    "",
    f"- Command (from the repo root): `{command}`",
    f"- Git commit: `{head}{dirty}` when this file was written"
    + (f", `{start_commit}` when this invocation started" if start_commit != head + dirty else "")
    + "; recorded by the runs (results.json `env.git_commit`): "
    + ", ".join(f"`{c}` ({n} runs)" for c, n in Counter(r["env"].get("git_commit") for r in done).most_common()),
    f"- Packages: Python {platform.python_version()}, {versions}",
    f"- Machine: {cpu}, {cores} cores available to this process, {platform.platform()}; runs on "
    f"{', '.join(device)} with {', '.join(map(str, threads))} torch thread(s) each",
    f"- Wall time: {work}; time recorded inside the {len(done)} runs (model loading, scoring, search; not "
    f"process start-up): {in_runs / 60:.1f} min",
    f"- Runs: `{root}/<task>/<column>/seed<N>/results.json` ({len(done)} completed)",
]
if model == "tiny_glm_cpu":
    recipe = json.loads((Path(model_path) / "task_glm_recipe.json").read_text())
    tiny = recipe["tiny"]
    data = "; ".join(f"{d['task']} {d['train_rows']:,} rows" for d in recipe["data"])
    lines += [
        f"- Model: `{model_path}` (`python -m autoglm_bench.bench task-glm`), the tiny_glm architecture "
        f"(`Glm4ForCausalLM`, hidden {tiny['hidden_size']}, {tiny['num_hidden_layers']} layers, "
        f"{tiny['num_attention_heads']} heads / {tiny['num_key_value_heads']} KV heads, MLP "
        f"{tiny['intermediate_size']}, byte-level BPE vocabulary of {tiny['vocab_size']} trained locally; "
        f"{recipe['parameters']:,} parameters) trained from random init for {recipe['steps']} steps of "
        f"{recipe['batch_size']} sequences (AdamW, lr {recipe['lr']}, {recipe['schedule']} schedule after "
        f"{recipe['warmup_steps']} warmup steps; task drawn per batch with weights "
        f"{recipe['task_weights']}; sequences of 1-{recipe['max_demos'] + 1} rows, at most "
        f"{recipe['max_tokens']} tokens; {recipe['threads']} thread) on the train parts of the split protocol "
        f"({data}: each train split less its {recipe['dev_size']} dev rows, split_seed {recipe['split_seed']}), "
        "each row in its task's `default` template followed by its gold label word, loss on the label words "
        f"only. Training took {recipe['train_seconds'] / 60:.1f} min on this machine ({recipe['train_seconds']:.0f} s"
        f", torch {recipe['torch']}); loss {recipe['loss_curve'][0][1]:.3f} (first "
        f"{recipe['loss_curve'][0][0]} steps) -> {recipe['loss_curve'][-1][1]:.3f} (last steps). It never saw "
        "a dev row or a test row" + (", or any BoolQ row." if "boolq" in tasks.split() else "."),
    ]
else:
    lines.append(f"- Model: `model={model}` (no training step)")
lines += [
    "- Protocol (autoglm_bench/data/splits.py): test rows = "
    + ("all rows" if limit == "null" else f"the first {limit} rows (`limit={limit}`)")
    + " of each task's test split (SST-2, RTE, CB: the validation split; BoolQ, which has no train split "
    f"here: the validation split less its {dev_size} dev rows); dev rows = {dev_size} rows drawn with split_seed "
    "0 from the train split (BoolQ: from the validation split)"
    + (f", of which the first {limit} are used (`limit` caps dev rows too)"
       if limit != "null" and int(limit) < int(dev_size) else "")
    + ". The test rows are the same in every column and "
    f"every seed; `seed` ({seeds}) varies the demos and the sampler only.",
    f"- Columns: `0-shot` = `method=evaluate`, the task's `default` template and label words (deterministic: its "
    f"seeds give identical predictions, so the cell is one run, n=1); `{k_shot}-shot` = `method=evaluate prompt=few_shot prompt.k_shot={k_shot} "
    "prompt.demo_selection=balanced` (class-balanced demos from the train part, a different set per seed); "
    f"`prompt-search` = `method=prompt_search search=tpe search.n_trials={n_trials}` (TPE + Wilcoxon pruning) "
    "over instruction (none or the task's), template (all of the task's), label words (the task's or one "
    "alternative set), k in {0,1,2,4}, random or balanced demos, demo order; it selects on the dev rows only, "
    "and its cell is the test accuracy of the prompt it picked. BoolQ's search has k=0 only (no train rows for "
    "demos).",
    "- Test rows and majority-class rate (always predicting the most frequent test label): "
    + "; ".join(f"{t} {n} rows, {100 * m:.1f}%" for t, v in rates.items() if v for m, n in [v]) + ".",
]
if "boolq" in tasks.split():
    lines.append("- BoolQ `4-shot` is n/a: BoolQ has no train split in the offline data, so there are no rows to "
                 "draw demos from that are not dev or test rows (the harness refuses `prompt.k_shot>0` for it).")
lines.append("- Bold: the best method in each row, and any within one standard error of it. †: differs from "
             "`0-shot` in the same row at p < 0.05 after Holm's correction over all the tests of the table; the "
             "test (exact McNemar between one-run cells, otherwise the seed-and-example t-test) is explained in "
             "the notes under the table, and each cell's raw and adjusted p are in the CSV.")
if model == "tiny_glm_cpu":
    lines += [
        "",
        f"**What these numbers are:** accuracies of a ~{recipe['parameters'] / 1e6:.1f}M-parameter model with "
        f"the GLM-4 architecture, trained for {recipe['train_seconds'] / 60:.0f} minutes on CPU on these tasks' "
        "train text in one prompt format, scored by the harness's real scorer on CPU. They show the harness "
        "measuring how prompting methods move a model that is sensitive to its prompt. **What they are not:** "
        "GLM-4 results, or evidence about any pretrained language model; a model this small most likely learns "
        "label priors and surface cues, not entailment. For the GLM-4 table run "
        "`MODEL=glm4_9b bash sweeps/prompting_tiny_glm_cpu.sh` on a GPU.",
    ]
if os.environ.get("QUICK") == "1":
    lines[1:1] = ["", "**QUICK=1**: a smoke run of the whole path (training, runs, report) on tiny settings; its "
                  "numbers mean nothing."]
lines += ["", ""]

table = md_path.read_text(encoding="utf-8")
fixed = []
for line in table.splitlines():
    if line.startswith("| boolq |"):
        line = line.replace("| – |", "| n/a |")
    fixed.append(line)
table = "\n".join(fixed) + "\n"

# what each search picked (from results.json), so a reader sees the chosen prompts
picked = ["", "### Prompts picked by the searches (dev rows only)", "",
          "| task | seed | dev acc | test acc | instruction | template | label words | k | demos |",
          "|---|---:|---:|---:|---|---|---|---:|---|"]
for r in sorted(done, key=lambda r: (r["task"], r["seed"])):
    if r["method"] != "prompt_search":
        continue
    p = r["search"]["best"]["params"]
    cand = r["search"]["best"]["candidate"]
    words = r["config"]["search"]["space"]["verbalizers"].get(p["verbalizer"], [])
    demos = f"{p['demo_selection']}, {p['demo_order']}" if int(p["k_shot"]) else "–"
    instruction = (cand["instruction"] or "none").replace("|", "\\|")
    picked.append(f"| {r['task']} | {r['seed']} | {r['dev_metrics']['acc']:.4f} | {r['metrics']['acc']:.4f} | "
                  f"{instruction} | {p['template']} | {'/'.join(words)} | {p['k_shot']} | {demos} |")
md_path.write_text("\n".join(lines) + table + "\n".join(picked) + "\n", encoding="utf-8")

if tex_path.is_file():
    tex = [ln.replace("& -- ", "& n/a ") if ln.startswith("boolq &") else ln
           for ln in tex_path.read_text(encoding="utf-8").splitlines()]
    tex_path.write_text("\n".join(tex) + "\n", encoding="utf-8")
print(f"wrote {md_path} (header, table, picked prompts); wall time {wall // 60} min {wall % 60} s")
PY
