"""The Optuna sweeper: ask the study for trials, launch each as a Hydra job, tell the study the result.

Search-space overrides use Hydra's sweep syntax: ``choice(a,b,c)`` or ``a,b,c`` (categorical),
``range(a,b[,step])`` (categorical over the integers), ``interval(a,b)`` (uniform float, or integer when
both ends are integers) and ``tag(log, interval(a,b))`` (log-uniform). Every other override is passed to
every job unchanged.

Each job gets ``hpo.storage``, ``hpo.study_name`` and ``hpo.trial_number`` so that a fine-tuning run
reports its dev metric after each validation to the same study (SQLite in the sweep directory by
default, or any RDB URL shared by many workers) and the study's pruner can stop it. A job's return value
(for method=finetune the dev metric, never the eval split's) is the trial's value; a pruned job is stored
as PRUNED and a crashed one as FAIL.

    python -m autoglm_bench -m hydra/sweeper=optuna method=finetune peft=lora \\
        'optim.lr=tag(log,interval(1e-5,1e-3))' 'peft.r=choice(4,8,16)' hydra.sweeper.n_trials=40
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

if TYPE_CHECKING:  # optuna is imported when a sweep starts, not when Hydra scans its plugins
    import optuna

log = logging.getLogger(__name__)


def distribution(override: Override) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one sweep override."""
    import optuna

    sweep = override.value()
    if isinstance(sweep, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(sweep, RangeSweep):
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return optuna.distributions.IntDistribution(sweep.start, sweep.end, log=log_scale)
        return optuna.distributions.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise HydraException(f"hydra/sweeper=optuna cannot search {override.input_line!r}; use choice(...), "
                         "range(...), interval(a,b) or tag(log,interval(a,b))")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise HydraException(f"unknown hydra.sweeper.sampler {name!r}; allowed: tpe, random")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    import optuna

    pruners = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2),
               "hyperband": optuna.pruners.HyperbandPruner, "none": optuna.pruners.NopPruner}
    if name not in pruners:
        raise HydraException(f"unknown hydra.sweeper.pruner {name!r}; allowed: {', '.join(pruners)}")
    return pruners[name]()


class OptunaSweeper(Sweeper):
    """Hydra's Sweeper interface (``setup``, ``sweep``) over an Optuna ask/tell loop."""

    def __init__(self, n_trials: int, n_jobs: int, direction: str, sampler: str, pruner: str, seed: int,
                 storage: str | None, study_name: str | None, params: dict[str, str] | None = None) -> None:
        self.n_trials, self.n_jobs, self.direction = n_trials, max(1, n_jobs), direction
        self.sampler, self.pruner, self.seed = sampler, pruner, seed
        self.storage, self.study_name, self.params = storage, study_name, dict(params or {})
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> optuna.Study:
        import optuna

        assert self.config is not None and self.launcher is not None
        parser = OverridesParser.create()
        overrides = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        space = {o.get_key_element(): distribution(o) for o in overrides if o.is_sweep_override()}
        fixed = [f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in overrides
                 if not o.is_sweep_override()]
        if not space:
            raise HydraException("hydra/sweeper=optuna found nothing to search; add e.g. "
                                 "'optim.lr=tag(log,interval(1e-5,1e-3))'")
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        storage = self.storage or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
        study = optuna.create_study(study_name=self.study_name or "sweep", storage=storage,
                                    sampler=make_sampler(self.sampler, self.seed), pruner=make_pruner(self.pruner),
                                    direction=self.direction, load_if_exists=True)
        log.info(f"Optuna study {study.study_name!r} in {storage}: {self.n_trials} trials over {', '.join(space)}")
        done = 0
        while done < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            jobs = [tuple(fixed + [f"{k}={v}" for k, v in t.params.items()]
                          + [f"hpo.storage={storage}", f"hpo.study_name={study.study_name}",
                             f"hpo.trial_number={t.number}"]) for t in trials]
            for trial, ret in zip(trials, self.launcher.launch(jobs, initial_job_idx=done)):
                self._tell(study, trial, ret)
            done += len(trials)
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if completed:
            log.info(f"best trial {study.best_trial.number}: {study.best_value} with {study.best_params}")
        return study

    @staticmethod
    def _tell(study: optuna.Study, trial: optuna.Trial, ret: Any) -> None:
        import optuna

        if ret.status == JobStatus.COMPLETED and ret.return_value is not None:
            study.tell(trial, float(ret.return_value))
            return
        error = ret._return_value if ret.status == JobStatus.FAILED else None
        pruned = type(error).__name__ == "TrialPruned"
        state = optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.FAIL
        if not pruned:
            log.warning(f"trial {trial.number} failed: {error!r}")
        study.tell(trial, state=state)
