"""Prompt-search efficiency: random, TPE and TPE + Wilcoxon pruning against the exhaustive grid.

The space (instruction x template x label words x shots x demo selection x demo order) is finite, so
the grid scores every prompt on all of dev and gives the true best dev accuracy. Each other method runs
``--trials`` trials for each of ``--seeds`` sampler seeds, each study with its own empty evaluation
cache (so nothing it did not score itself is free), and the table reports the best dev accuracy it
found relative to the grid's best and the examples it scored as a fraction of the grid's, mean +- std.

The model is tiny_glm briefly trained (a plain torch loop, ``--train-steps``) on the toy sentiment
task's train rows (the train split less the dev rows, which stay unseen) in one prompt format: the
``default`` template with the task's label words, zero to two demos. A random-init model predicts one
class whatever the prompt, so its accuracy would not depend on the prompt; the trained one is accurate in
the format it learned, at chance with other label words, and inverted with swapped ones, so the search
has something real to find.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from .task_glm import TRAIN_RECIPE, train_prompt_sensitive_glm  # noqa: F401  (the toy trainer lives there)

BENCH_SPACE = [
    "search.space.instructions=[none,task]",
    "search.space.templates=null",
    "+search.space.verbalizers.task=[negative,positive]",
    "+search.space.verbalizers.bad_good=[bad,good]",
    "+search.space.verbalizers.swapped=[positive,negative]",
    "search.space.k_shot=[0,1,2]",
    "search.space.demo_selection=[random,balanced]",
    "search.space.demo_order=[selected,reversed]",
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=30, help="trials per study for random, tpe, tpe+pruning")
    parser.add_argument("--seeds", type=int, default=5, help="sampler seeds per method")
    parser.add_argument("--train-steps", type=int, default=60, help="training steps of the benchmark model")
    parser.add_argument("--eval-size", type=int, default=200, help="toy eval rows (the test rows)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; for a model this small more threads only add synchronisation",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table to this file")
    parser.add_argument("override", nargs="*", help="extra config overrides, e.g. search.minibatch=16")


def run_study(
    run: Any, task: Any, lm: Any, splits: Any, space: Any, sampler: str, pruner: str, seed: int, n_trials: int
) -> dict[str, Any]:
    """One study with the real sampler, pruner, objective and scorer, an in-memory storage and its own
    empty cache; returns the best complete trial's dev accuracy, its prompt's test accuracy, and the cost."""
    import dataclasses

    import optuna

    from autoglm_bench.lm import CachedLM, RequestCache
    from autoglm_bench.methods.evaluate import choice_predictions
    from autoglm_bench.methods.prompt_search.evaluation import Evaluator, demo_pool
    from autoglm_bench.methods.prompt_search.space import candidate_from_params
    from autoglm_bench.methods.prompt_search.study import Objective, best_trial
    from autoglm_bench.studies import make_pruner, make_sampler

    search = dataclasses.replace(run.search, sampler=sampler, pruner=pruner)
    run = dataclasses.replace(run, search=search)
    evaluator = Evaluator(
        task=task,
        lm=CachedLM(lm, RequestCache(":memory:")),
        base_prompt=run.prompt,
        verbalizers=space.verbalizers,
        pool=demo_pool(splits.train, search.demo_pool, run.seed),
        seed=run.seed,
        batch_size=run.method.batch_size,
    )
    study = optuna.create_study(
        direction="maximize",
        sampler=make_sampler(sampler, seed, n_startup_trials=search.n_startup_trials, grid=space.grid()),
        pruner=make_pruner(
            pruner, min_resource=search.minibatch, max_resource=len(splits.dev), p_threshold=search.p_threshold
        ),
    )
    start = time.perf_counter()
    study.optimize(Objective(run.search, space, evaluator, splits, None), n_trials=n_trials)
    seconds = time.perf_counter() - start
    scored = evaluator.scored
    best = best_trial(study)
    examples = evaluator.render(candidate_from_params(best.params), splits.test)
    test = task.hook.score(choice_predictions(examples, evaluator.score(examples)))
    states = [t.state.name for t in study.trials]
    return {
        "dev": best.value,
        "test": test[search.objectives[0]],
        "scored": scored,
        "seconds": seconds,
        "trials": len(states),
        "pruned": states.count("PRUNED"),
        "params": best.params,
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the architecture."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return names[0] if names else platform.machine()


def run(args: argparse.Namespace) -> None:
    import os

    import optuna
    import torch

    from autoglm_bench.config import compose
    from autoglm_bench.data.prepare import prepare
    from autoglm_bench.lm import load
    from autoglm_bench.methods.prompt_search.space import PromptSpace
    from autoglm_bench.results import git_commit

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    path = train_prompt_sensitive_glm(steps=args.train_steps)
    train_s = time.perf_counter() - start
    cfg = compose(
        [
            "task=toy_sentiment",
            f"task.options.eval_size={args.eval_size}",
            "model=hf",
            f"model.path={path}",
            "method=prompt_search",
            "search=tpe",
            *BENCH_SPACE,
            *args.override,
        ]
    )
    prep = prepare(cfg, data_dir=None, limit=None)
    task, splits = prep.task, prep.splits
    space = PromptSpace.from_config(cfg.search.space, task.cfg)
    lm = load(cfg.model)
    print(
        f"prompt search benchmark: model trained {args.train_steps} steps in {train_s:.0f}s; space {space.size} "
        f"prompts; dev {len(splits.dev)}, test {len(splits.test)} examples; {args.trials} trials x {args.seeds} "
        f"seeds per method",
        flush=True,
    )

    grid = run_study(cfg, task, lm, splits, space, "grid", "none", 0, space.size)
    print(f"grid: best dev acc {grid['dev']:.4f}, {grid['scored']} examples scored, {grid['seconds']:.0f}s", flush=True)
    methods = {"random": ("random", "none"), "tpe": ("tpe", "none"), "tpe+wilcoxon": ("tpe", "wilcoxon")}
    rows, per_seed = {}, []
    for name, (sampler, pruner) in methods.items():
        rows[name] = [
            run_study(cfg, task, lm, splits, space, sampler, pruner, seed, args.trials) for seed in range(args.seeds)
        ]
        per_seed.append(
            f"- {name}: best dev acc per seed {[round(r['dev'], 4) for r in rows[name]]}, examples "
            f"scored {[r['scored'] for r in rows[name]]}, {sum(r['seconds'] for r in rows[name]):.0f}s"
        )
        print(per_seed[-1], flush=True)

    def mean_std(values: list[float], fmt: str) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{format(statistics.mean(values), fmt)} +- {format(sd, fmt)}"

    lines = [
        "| method | trials | best dev acc | gap to grid best (points) | examples scored | cost / grid | "
        "test acc of chosen prompt | pruned trials |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| grid (reference) | {grid['trials']} | {grid['dev']:.4f} | 0 | {grid['scored']} | 1.00 | "
        f"{grid['test']:.4f} | 0 |",
    ]
    for name, results in rows.items():
        lines.append(
            f"| {name} | {args.trials} | {mean_std([r['dev'] for r in results], '.4f')} | "
            f"{mean_std([100 * (r['dev'] - grid['dev']) for r in results], '.2f')} | "
            f"{mean_std([r['scored'] for r in results], '.0f')} | "
            f"{mean_std([r['scored'] / grid['scored'] for r in results], '.3f')} | "
            f"{mean_std([r['test'] for r in results], '.4f')} | {mean_std([r['pruned'] for r in results], '.1f')} |"
        )
    wil = rows["tpe+wilcoxon"]
    gap = statistics.mean(100 * (grid["dev"] - r["dev"]) for r in wil)
    frac = statistics.mean(r["scored"] / grid["scored"] for r in wil)
    verdict = (
        f"tpe+wilcoxon: mean gap to the grid best {gap:.2f} points (target <= 1) at {100 * frac:.1f}% of the "
        f"grid's cost (target <= 30%): {'met' if gap <= 1 and frac <= 0.30 else 'NOT met'}"
    )
    command = "python -m autoglm_bench.bench search " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    text = "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"Commit: `{git_commit()}`; machine: {cpu_model()}, "
            f"{len(os.sched_getaffinity(0))} cores, {platform.platform()}; torch {torch.__version__}, "
            f"optuna {optuna.__version__}",
            "",
            f"Model: tiny_glm trained {args.train_steps} steps on toy_sentiment in one prompt format; space "
            f"{space.size} prompts; dev {len(splits.dev)} / test {len(splits.test)} examples; torch on "
            f"{torch.get_num_threads()} CPU thread(s); "
            f"mean +- std over {args.seeds} sampler seeds; each study starts with an empty cache.",
            "",
            *lines,
            "",
            "Seeds 0..N-1 in order:",
            *per_seed,
            "",
            verdict,
            f"total wall time {time.perf_counter() - start:.0f}s",
            "",
        ]
    )
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
