"""Hyperparameter search for method=finetune: an Optuna study in which each trial is one training run.

Each trial samples the keys of ``hpo.space`` (or :data:`DEFAULT_SPACE` for the run's PEFT method), trains,
and reports the dev metric after every validation epoch through optuna-integration's
PyTorchLightningPruningCallback, so the pruner stops bad trials early; a pruned trial is stored as
PRUNED. The study lives in SQLite in the run directory unless ``hpo.storage`` names an RDB URL (which
also lets several processes share one study). Finally the best trial's configuration is trained once
more and evaluated like any other run; results.json records the study under ``hpo``.

>>> # python -m autoglm_bench method=finetune peft=lora hpo.n_trials=8 'hpo.space={optim.lr: "loguniform(1e-4,1e-2)"}'
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
import yaml
from omegaconf import OmegaConf

from ..config import ConfigError, RunConfig, validate

COMMON_SPACE = {
    "optim.lr": "loguniform(1e-5,1e-2)",
    "optim.warmup_ratio": "uniform(0.0,0.2)",
    "optim.weight_decay": "uniform(0.0,0.1)",
    "method.batch_size": "choice(8,16,32)",
}
DEFAULT_SPACE = {
    "full": COMMON_SPACE,
    "lora": {**COMMON_SPACE, "peft.r": "choice(4,8,16)", "peft.alpha": "choice(8,16,32)",
             "peft.dropout": "uniform(0.0,0.2)"},
    "prefix": {**COMMON_SPACE, "peft.num_virtual_tokens": "choice(8,16,32)"},
    "prompt_tuning": {**COMMON_SPACE, "peft.num_virtual_tokens": "choice(8,16,32)"},
}
_SPEC = re.compile(r"^\s*(loguniform|uniform|int|choice)\((.*)\)\s*$")


def suggest(trial: optuna.Trial, key: str, spec: str) -> Any:
    """Sample ``key`` as ``spec`` says: ``loguniform(a,b)``, ``uniform(a,b)``, ``int(a,b)`` or
    ``choice(x,y,...)`` (choices parsed as YAML scalars)."""
    match = _SPEC.match(spec)
    if not match:
        raise ConfigError(f"hpo.space[{key!r}] = {spec!r}; allowed: loguniform(a,b), uniform(a,b), int(a,b), "
                          "choice(x,y,...)")
    kind, args = match.group(1), [a.strip() for a in match.group(2).split(",")]
    try:
        if kind == "choice":
            return trial.suggest_categorical(key, [yaml.safe_load(a) for a in args])
        low, high = float(args[0]), float(args[1])
        if kind == "int":
            return trial.suggest_int(key, int(low), int(high))
        return trial.suggest_float(key, low, high, log=kind == "loguniform")
    except (ValueError, IndexError) as exc:
        raise ConfigError(f"hpo.space[{key!r}] = {spec!r} has bad bounds: {exc}") from exc


def with_params(run: RunConfig, params: dict[str, Any]) -> RunConfig:
    """A validated copy of ``run`` with dotted ``params`` set (an unknown key is a ConfigError)."""
    cfg = OmegaConf.structured(run)
    for key, value in params.items():
        if OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
            raise ConfigError(f"hpo.space key {key!r} is not a config key")
        OmegaConf.update(cfg, key, value, merge=False)
    return validate(cfg)


def make_study(run: RunConfig, run_dir: Path, direction: str) -> optuna.Study:
    hpo = run.hpo
    sampler = (optuna.samplers.TPESampler(seed=run.seed, n_startup_trials=4) if hpo.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=run.seed))
    pruner: optuna.pruners.BasePruner = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=run.trainer.max_epochs),
        "none": optuna.pruners.NopPruner,
    }[hpo.pruner]()
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = hpo.storage or f"sqlite:///{run_dir / 'study.db'}"
    return optuna.create_study(study_name=hpo.study_name or f"{run.task.name}-{run.model.name}-{run.peft.method}",
                               storage=storage, sampler=sampler, pruner=pruner, direction=direction,
                               load_if_exists=True)


def sweeper_trial_callback(run: RunConfig) -> Any:
    """The pruning callback of trial ``hpo.trial_number`` in study ``hpo.study_name`` at ``hpo.storage``,
    for a job launched by ``hydra/sweeper=optuna`` (the sweeper asked for the trial; this process reports
    the trial's dev metric after each validation epoch and stops when the pruner says so)."""
    from optuna_integration import PyTorchLightningPruningCallback

    from .run import monitor_of

    if not run.hpo.storage or not run.hpo.study_name:
        raise ConfigError("hpo.trial_number needs hpo.storage and hpo.study_name (the sweeper sets all three)")
    study = optuna.load_study(study_name=run.hpo.study_name, storage=run.hpo.storage)
    # Optuna has no public "trial by number" handle; this is how a worker rejoins a trial it was given.
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, run.hpo.trial_number)
    return PyTorchLightningPruningCallback(optuna.trial.Trial(study, trial_id), monitor=monitor_of(run.task)[0])


def run_search(run: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Run ``hpo.n_trials`` trials, then train and evaluate the best configuration (see module docstring)."""
    from optuna_integration import PyTorchLightningPruningCallback

    from .run import finetune, monitor_of

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = dict(run.hpo.space) or DEFAULT_SPACE[run.peft.method]
    monitor, mode = monitor_of(run.task)
    study = make_study(run, run_dir, "maximize" if mode == "max" else "minimize")

    def objective(trial: optuna.Trial) -> float:
        params = {key: suggest(trial, key, spec) for key, spec in space.items()}
        trial_run = with_params(run, {**params, "method.save_model": False, "trainer.checkpoint": False})
        out = finetune(trial_run, run_dir / f"trial_{trial.number}", evaluate=False,
                       callbacks=[PyTorchLightningPruningCallback(trial, monitor=monitor)])
        value = out["dev_metrics"].get(monitor.removeprefix("dev/"))
        if value is None:
            raise ConfigError(f"trial {trial.number} logged no {monitor}; hpo needs a dev set (method.dev_size > 0)")
        return value

    study.optimize(objective, n_trials=run.hpo.n_trials, catch=())
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(f"no trial of study {study.study_name!r} completed (all {len(study.trials)} pruned/failed)")
    best = study.best_trial
    out = finetune(with_params(run, best.params), run_dir)
    out["hpo"] = {
        "study_name": study.study_name,
        "storage": run.hpo.storage or str(run_dir / "study.db"),
        "monitor": monitor,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                    "intermediate": dict(t.intermediate_values)} for t in study.trials],
    }
    out["timings"]["search_trials"] = len(study.trials)
    return out
