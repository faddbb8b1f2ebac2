"""Hyperparameter search for method=finetune: an Optuna study in which each trial is one training run.

Each trial samples the keys of ``hpo.space`` (Hydra's sweep syntax, as on the command line of a
``hydra/sweeper=optuna`` multirun; left empty, :data:`DEFAULT_SPACE` for the run's PEFT method), trains,
and reports the dev metric per validation epoch through optuna-integration's
PyTorchLightningPruningCallback, so the pruner stops bad trials early (stored as PRUNED). Sampler, pruner,
storage and the resume policy are the shared ones of :mod:`autoglm_bench.studies`: SQLite in the run
directory unless ``hpo.storage`` names an RDB URL, and a rerun runs only the trials still missing up to
``hpo.n_trials``. Finally the best trial's configuration is trained once more and evaluated like any other
run; results.json records the study under ``hpo``.

>>> # python -m autoglm_bench method=finetune peft=lora hpo.n_trials=8   (hpo.space={}: the LoRA default space)
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from ...config import ConfigError, RunConfig, objective_of, with_overrides
from ...studies import (
    grid_of,
    join_trial,
    make_pruner,
    make_sampler,
    open_study,
    parse_space,
    run_objective,
    run_trials,
    study_name,
)

COMMON_SPACE = {
    "optim.lr": "tag(log,interval(1e-5,1e-2))",
    "optim.warmup_ratio": "interval(0.0,0.2)",
    "optim.weight_decay": "interval(0.0,0.1)",
    "method.batch_size": "choice(8,16,32)",
}
DEFAULT_SPACE = {
    "full": COMMON_SPACE,
    "lora": {
        **COMMON_SPACE,
        "peft.r": "choice(4,8,16)",
        "peft.alpha": "choice(8,16,32)",
        "peft.dropout": "interval(0.0,0.2)",
    },
    "prefix": {**COMMON_SPACE, "peft.num_virtual_tokens": "choice(8,16,32)"},
    "prompt_tuning": {**COMMON_SPACE, "peft.num_virtual_tokens": "choice(8,16,32)"},
}


def trial_pruner(run: RunConfig) -> Any:
    """The pruner named by ``hpo.pruner``; resources are validation epochs."""
    return make_pruner(run.hpo.pruner, min_resource=1, max_resource=max(1, run.trainer.max_epochs))


def default_study_name(run: RunConfig, space: dict[str, str]) -> str:
    """``<task>-<model>-<peft>-<hash>`` of what changes a trial's result (config less the search budget)."""
    keyed = {k: v for k, v in asdict(run).items() if k not in ("hpo", "logger", "tag")}  # tag: a label only
    keyed["hpo"] = {"space": space, "sampler": run.hpo.sampler, "pruner": run.hpo.pruner}
    return study_name(f"{run.task.name}-{run.model.name}-{run.peft.method}", keyed)


def sweeper_trial(run: RunConfig) -> tuple[Any, dict[str, Any]]:
    """The pruning callback of trial ``hpo.trial_number`` in study ``hpo.study_name`` at ``hpo.storage``,
    for a job launched by ``hydra/sweeper=optuna``, and what the job rejoined (for results.json): this
    process rejoins the trial with the sweep's pruner (``hpo.pruner``) and the study's direction, reports
    the dev metric per validation epoch and stops when the pruner says so."""
    from optuna_integration import PyTorchLightningPruningCallback

    from .training import monitor_of

    if not run.hpo.storage or not run.hpo.study_name:
        raise ConfigError("hpo.trial_number needs hpo.storage and hpo.study_name (the sweeper sets all three)")
    study = open_study(run.hpo.storage, run.hpo.study_name, [], pruner=trial_pruner(run), create=False)
    callback = PyTorchLightningPruningCallback(join_trial(study, run.hpo.trial_number), monitor=monitor_of(run)[0])
    used = {
        "study": study.study_name,
        "number": run.hpo.trial_number,
        "pruner": type(study.pruner).__name__,
        "direction": study.direction.name.lower(),
    }
    return callback, used


def run_search(run: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) ``hpo.n_trials`` trials, then train and evaluate the best configuration."""
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    from .training import finetune, monitor_of

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = dict(run.hpo.space) or DEFAULT_SPACE[run.peft.method]
    space = parse_space(spec)
    monitor = monitor_of(run)[0]
    metric, direction = objective_of(run)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = run.hpo.storage or f"sqlite:///{run_dir.resolve() / 'study.db'}"
    name = run.hpo.study_name or default_study_name(run, spec)
    sampler = make_sampler(run.hpo.sampler, run.seed, n_startup_trials=4, grid=grid_of(space))
    study = open_study(
        storage, name, [direction], sampler=sampler, pruner=trial_pruner(run), heartbeat_s=run.hpo.heartbeat_s
    )

    def objective(trial: optuna.Trial) -> float:
        trial_run = with_overrides(
            run, "hpo.space", {**trial.params, "method.save_model": False, "trainer.checkpoint": False}
        )
        out = finetune(
            trial_run,
            run_dir / f"trial_{trial.number}",
            evaluate=False,
            callbacks=[PyTorchLightningPruningCallback(trial, monitor=monitor)],
        )
        value = out["dev_metrics"].get(metric)
        if value is None:
            raise ConfigError(f"trial {trial.number} logged no {monitor}; hpo needs a dev set (dev_size > 0)")
        return value

    run_trials(study, run.hpo.n_trials, lambda trials: [run_objective(objective, t) for t in trials], space=space)
    trials = study.get_trials(deepcopy=False)
    if not any(t.state.name == "COMPLETE" for t in trials):
        raise RuntimeError(f"no trial of study {name!r} completed (all {len(trials)} pruned or failed)")
    best = study.best_trial
    out = finetune(with_overrides(run, "hpo.space", best.params), run_dir)
    out["hpo"] = {
        "study_name": name,
        "storage": storage,
        "monitor": monitor,
        "direction": direction,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "intermediate": dict(t.intermediate_values),
                "fail_reason": t.system_attrs.get("fail_reason"),
            }
            for t in trials
        ],
    }
    out["timings"]["search_trials"] = len(trials)
    return out
