"""The sweeper's config node, ``hydra.sweeper.*`` (no heavy imports: Hydra loads this for every run).

No ``from __future__ import annotations`` here: Hydra imports plugin modules outside ``sys.modules``,
where dataclasses cannot resolve string annotations; typing's Optional/Dict keep OmegaConf happy.
"""
# ruff: noqa: UP006, UP035, UP045

from dataclasses import dataclass, field
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.autoglm_optuna_sweeper.sweeper.OptunaSweeper"
    n_trials: int = 20  # finished trials wanted; rerunning the same sweep resumes up to this number
    n_jobs: int = 1  # trials asked (and launched) together; the launcher may run them in parallel
    direction: Optional[str] = None  # maximize | minimize; null: follows the objective (a loss: minimize)
    sampler: str = "tpe"  # tpe | random | grid | gp (autoglm_bench.studies.SAMPLERS)
    pruner: str = "median"  # none | median | successive_halving | hyperband (used by the jobs)
    seed: int = 0
    n_startup_trials: int = 5  # tpe, gp: random trials before the model takes over
    storage: Optional[str] = None  # RDB URL; null: sqlite in the sweep directory (optuna.db)
    study_name: Optional[str] = None  # null: derived from the sweep (overrides, space, sampler, pruner, seed)
    heartbeat_s: int = 10  # a trial silent for 2x this long (its process died) is failed and retried once
    # more search-space entries, in Hydra's sweep syntax: {optim.lr: "tag(log, interval(1e-5, 1e-3))"}
    params: Dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="autoglm_optuna_sweeper"
)
