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
    n_trials: int = 20
    n_jobs: int = 1  # trials asked (and launched) together
    direction: str = "maximize"
    sampler: str = "tpe"  # tpe | random
    pruner: str = "median"  # median | hyperband | none
    seed: int = 0
    storage: Optional[str] = None  # RDB URL; null: sqlite in the sweep directory
    study_name: Optional[str] = None  # null: "sweep"
    # more search-space entries, in override syntax: {optim.lr: "tag(log, interval(1e-5, 1e-3))"}
    params: Dict[str, str] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf,
                             provider="autoglm_optuna_sweeper")
