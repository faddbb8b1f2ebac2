"""The Optuna sweeper: ask the study for trials, launch each as a Hydra job, tell the study the result.

Search-space overrides use Hydra's sweep syntax (parsed by :func:`autoglm_bench.studies.parse_space`):
``choice(a,b,c)`` or ``a,b,c``, ``range(a,b[,step])``, ``interval(a,b)`` and ``tag(log, interval(a,b))``.
Every other override is passed to every job unchanged.

Each job gets ``hpo.storage``, ``hpo.study_name``, ``hpo.trial_number`` and ``hpo.pruner`` so that it
rejoins its trial with the sweep's pruner and reports its dev metric per validation epoch (fine-tuning),
and the pruner can stop it. A job's return value is its dev objective (never the reported test split's);
a pruned job is stored as PRUNED, one that raised or returned NaN as FAIL, and the sweep goes on. Job
directories carry the trial number (``hydra.job.num``), so a resumed sweep never overwrites a finished
job. The resume policy is :func:`autoglm_bench.studies.run_trials`: the same command again runs only the
trials still missing, and a trial whose process died is re-run once with its parameters. When the dead
trial's job had already written its results.json (the sweeper was killed between the job's end and the
study's record of it), that file is marked ``"status": "superseded"`` with the retry's trial number
(:func:`mark_superseded`), so the sweep directory holds one counted result per trial.

    python -m autoglm_bench -m hydra/sweeper=optuna method=finetune peft=lora \\
        'optim.lr=tag(log,interval(1e-5,1e-3))' 'peft.r=choice(4,8,16)' hydra.sweeper.n_trials=40
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

if TYPE_CHECKING:  # optuna is imported when a sweep starts, not when Hydra scans its plugins
    import optuna

log = logging.getLogger(__name__)


class OptunaSweeper(Sweeper):
    """Hydra's Sweeper interface (``setup``, ``sweep``) over :func:`autoglm_bench.studies.run_trials`."""

    def __init__(
        self,
        n_trials: int,
        n_jobs: int,
        direction: str | None,
        sampler: str,
        pruner: str,
        seed: int,
        n_startup_trials: int,
        storage: str | None,
        study_name: str | None,
        heartbeat_s: int,
        params: dict[str, str] | None = None,
    ) -> None:
        self.n_trials, self.n_jobs, self.direction = n_trials, max(1, n_jobs), direction
        self.sampler, self.pruner, self.seed, self.n_startup_trials = sampler, pruner, seed, n_startup_trials
        self.storage, self.study_name, self.heartbeat_s = storage, study_name, heartbeat_s
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> optuna.Study:
        from autoglm_bench.config import ConfigError, objective_of
        from autoglm_bench.errors import member
        from autoglm_bench.studies import HpoPruner, grid_of, make_sampler, open_study, parse_space, run_trials

        assert self.config is not None and self.launcher is not None
        overrides = OverridesParser.create().parse_overrides(
            [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        )
        sweeps = {o.get_key_element(): o.input_line.partition("=")[2] for o in overrides if o.is_sweep_override()}
        fixed = [
            f"{o.get_key_element()}={o.get_value_element_as_str()}" for o in overrides if not o.is_sweep_override()
        ]
        if not sweeps:
            raise HydraException(
                "hydra/sweeper=optuna found nothing to search; add e.g. 'optim.lr=tag(log,interval(1e-5,1e-3))'"
            )
        try:
            space = parse_space(sweeps)
            member(HpoPruner, self.pruner, "hydra.sweeper.pruner")
            metric, natural = objective_of(self.config)
            direction = self.direction or natural
            if direction not in ("maximize", "minimize"):
                raise ConfigError(f"unknown hydra.sweeper.direction {direction!r}; allowed: maximize, minimize")
            sampler = make_sampler(self.sampler, self.seed, n_startup_trials=self.n_startup_trials, grid=grid_of(space))
            sweep_dir = Path(self.config.hydra.sweep.dir)
            sweep_dir.mkdir(parents=True, exist_ok=True)
            storage = self.storage or f"sqlite:///{(sweep_dir / 'optuna.db').resolve()}"
            name = self.study_name or self.default_study_name(fixed, sweeps, direction)
            study = open_study(storage, name, [direction], sampler=sampler, heartbeat_s=self.heartbeat_s)
        except ConfigError as exc:
            raise HydraException(str(exc)) from None
        log.info(
            f"Optuna study {name!r} ({direction} dev {metric}) in {storage}: {self.n_trials} trials over "
            f"{', '.join(sweeps)}"
        )
        job_args = [*fixed, f"hpo.storage={storage}", f"hpo.study_name={name}", f"hpo.pruner={self.pruner}"]

        reconciled: set[int] = set()  # retried trial numbers whose job directories were checked

        def launch(trials: list[optuna.Trial]) -> list[Any]:
            mark_superseded(study, sweep_dir, reconciled)
            outcomes = {}
            for group in contiguous(trials):  # job numbers (and so job directories) are trial numbers
                jobs = [
                    tuple([*job_args, *(f"{k}={v}" for k, v in t.params.items()), f"hpo.trial_number={t.number}"])
                    for t in group
                ]
                returns = self.launcher.launch(jobs, initial_job_idx=group[0].number)
                outcomes.update({t.number: outcome(ret) for t, ret in zip(group, returns)})
            return [outcomes[t.number] for t in trials]

        ran = run_trials(study, self.n_trials, launch, space=space, batch_size=self.n_jobs)
        mark_superseded(study, sweep_dir, reconciled)
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        log.info(f"study {name!r}: ran {ran} trials now; states {dict((s, states.count(s)) for s in set(states))}")
        if "COMPLETE" in states:
            log.info(f"best trial {study.best_trial.number}: {study.best_value} with {study.best_params}")
        return study

    def default_study_name(self, fixed: list[str], sweeps: dict[str, str], direction: str) -> str:
        """``sweep-<hash>`` of what the jobs compute and how trials are chosen, so the same command (on any
        worker) joins the same study and two different sweeps on one database never share one."""
        keyed = {
            "fixed": sorted(fixed),
            "space": sweeps,
            "sampler": self.sampler,
            "pruner": self.pruner,
            "seed": self.seed,
            "direction": direction,
        }
        from autoglm_bench.studies import study_name

        return study_name("sweep", keyed, digits=10)


def contiguous(trials: list[Any]) -> list[list[Any]]:
    """``trials`` split into runs of consecutive trial numbers (a launcher numbers jobs consecutively)."""
    groups: list[list[Any]] = []
    for trial in sorted(trials, key=lambda t: t.number):
        if groups and groups[-1][-1].number + 1 == trial.number:
            groups[-1].append(trial)
        else:
            groups.append([trial])
    return groups


def outcome(ret: Any) -> Any:
    """The :class:`~autoglm_bench.studies.Outcome` of one Hydra job."""
    from autoglm_bench.studies import Outcome

    if ret.status == JobStatus.COMPLETED:
        return Outcome(values=ret.return_value)
    error = ret._return_value  # Hydra keeps the job's exception here
    if type(error).__name__ == "TrialPruned":
        return Outcome(pruned=True)
    log.warning(f"job {ret.hydra_cfg.hydra.job.num if ret.hydra_cfg else '?'} failed: {error!r}")
    return Outcome(error=f"{type(error).__name__}: {error}")


def mark_superseded(study: optuna.Study, sweep_dir: Path, reconciled: set[int] | None = None) -> list[Path]:
    """Mark the results.json of every job whose trial went stale and was re-queued as superseded by the
    retry: ``"status": "superseded"`` and ``"superseded": {"by_trial", "study", "status"}`` (the status
    it had). Such a file exists when the sweeper died after the job wrote it but before the study
    recorded the trial; the retry runs the same parameters again, and only its result counts (the report
    skips superseded runs). Trial numbers in ``reconciled`` were checked before and are added to it; the
    sweep directory is read only when a new trial was re-queued. Returns the files marked now."""
    from autoglm_bench.results import write_json_atomic
    from autoglm_bench.studies import retried_numbers

    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials) - (reconciled if reconciled is not None else set())
    if not retried:
        return []
    retry_of = {t.system_attrs["failed_trial"]: t.number for t in trials if "failed_trial" in t.system_attrs}
    marked = []
    for path in sorted(sweep_dir.rglob("results.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        hpo = result.get("config", {}).get("hpo") or {}
        number = hpo.get("trial_number")
        if hpo.get("study_name") != study.study_name or number not in retried or result.get("status") == "superseded":
            continue
        by = retry_of.get(number)
        result["superseded"] = {"by_trial": by, "study": study.study_name, "status": result.get("status")}
        result["status"] = "superseded"
        write_json_atomic(path, result)
        log.info(f"trial {number} was re-run as trial {by}: marked {path} superseded")
        marked.append(path)
    if reconciled is not None:
        reconciled |= retried
    return marked
