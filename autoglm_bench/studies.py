"""The one Optuna layer: samplers, pruners, storage, search spaces and the resume policy, shared by prompt
search (``search.*``), fine-tuning HPO (``hpo.*``) and the Hydra sweeper (``hydra/sweeper=optuna``).

- **Factories**: :func:`make_sampler` and :func:`make_pruner` build every sampler and pruner from a name
  and a few numbers; :func:`open_study` opens (or creates) a study on an RDB storage with heartbeats.
- **One search-space syntax**: Hydra's sweep grammar, parsed by :func:`parse_space`: ``choice(a,b)`` or
  ``a,b`` (categorical), ``range(a,b[,step])`` (categorical over the integers), ``interval(a,b)`` (uniform;
  integers when both ends are) and ``tag(log,interval(a,b))`` (log-uniform).
- **One resume policy** (:func:`run_trials`): "run until the study has ``n_trials`` finished trials", not
  "``n_trials`` more". While a trial runs its process records a heartbeat; a trial whose process died
  (SIGKILL, preemption) goes stale after ``2 x heartbeat_s``, is marked FAIL and re-queued once with the
  same parameters. A trial that raised or returned NaN is FAIL and counts as finished (so a broken
  configuration cannot loop forever); the sweep goes on. Several processes may share one study: a trial
  asked beyond the budget (two workers asking at once) is recorded as FAIL with ``surplus`` and never run.

>>> from autoglm_bench.studies import parse_space
>>> parse_space({"optim.lr": "tag(log,interval(1e-4,1e-2))", "peft.r": "choice(4,8)"})["peft.r"]
CategoricalDistribution(choices=(4, 8))
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, choices, one_line

# the names make_sampler and make_pruner build; the config schema types search/hpo/sweeper fields with them
Sampler = choices("Sampler", "tpe", "random", "grid", "gp", "nsga2")
Pruner = choices("Pruner", "none", "median", "wilcoxon", "successive_halving", "hyperband")
# fine-tuning HPO (hpo.*, hydra/sweeper=optuna): single-objective samplers, and pruners on validation epochs
HpoSampler = choices("HpoSampler", "tpe", "random", "grid", "gp")
HpoPruner = choices("HpoPruner", "none", "median", "successive_halving", "hyperband")

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
RETRIES = 1  # a trial whose process died is re-run once with its parameters


def study_name(prefix: str, keyed: Any, digits: int = 8) -> str:
    """The one way a study is named when the user names none: ``<prefix>-<hash of keyed>``, where ``keyed``
    holds everything that changes what a trial computes (so the same command resumes its study and a changed
    one starts a new study beside it) and nothing that does not (the budget, the storage).

    >>> study_name("sst2-tiny_glm-tpe", {"seed": 0})
    'sst2-tiny_glm-tpe-de7d7744'
    """
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:digits]
    return f"{prefix}-{digest}"


def make_sampler(
    name: str,
    seed: int,
    *,
    n_startup_trials: int = 5,
    population_size: int = 10,
    grid: dict[str, list[Any]] | None = None,
) -> optuna.samplers.BaseSampler:
    """The Optuna sampler called ``name``, seeded; ``grid`` (name -> choices) is what ``grid`` enumerates.

    >>> make_sampler("random", seed=0).__class__.__name__
    'RandomSampler'
    """
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        if grid is None:
            raise ConfigError("sampler grid needs a finite space: every parameter a choice(...) or range(...)")
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials, deterministic_objective=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
    raise ConfigError(f"unknown sampler {name!r}; allowed: {', '.join(Sampler.names())}")


def make_pruner(
    name: str,
    *,
    min_resource: int = 1,
    max_resource: int | str = "auto",
    p_threshold: float = 0.1,
    n_startup_trials: int = 2,
    reduction_factor: int = 2,
) -> optuna.pruners.BasePruner:
    """The Optuna pruner called ``name``. Resources are in the unit a trial reports its steps in (prompt
    search: dev examples; fine-tuning: validation epochs).

    >>> make_pruner("none").__class__.__name__
    'NopPruner'
    """
    import optuna

    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=0)
    if name == "wilcoxon":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(p_threshold=p_threshold)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=reduction_factor)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_resource, max_resource=max_resource, reduction_factor=reduction_factor
        )
    raise ConfigError(f"unknown pruner {name!r}; allowed: {', '.join(Pruner.names())}")


def parse_space(entries: dict[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Config key -> Optuna distribution, from Hydra sweep-grammar strings (a YAML list is a choice).

    >>> parse_space({"method.batch_size": "8,16"})["method.batch_size"]
    CategoricalDistribution(choices=(8, 16))
    """
    return {key: distribution(key, spec) for key, spec in entries.items()}


def distribution(key: str, spec: Any) -> optuna.distributions.BaseDistribution:
    """The distribution of one search-space entry (see :func:`parse_space`)."""
    import optuna
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    if isinstance(spec, (list, tuple)):
        return optuna.distributions.CategoricalDistribution(list(spec))
    allowed = "choice(a,b,...), a,b,..., range(a,b), interval(a,b) or tag(log,interval(a,b))"
    try:
        override = OverridesParser.create().parse_override(f"{key}={spec}")
    except Exception as exc:  # Hydra's grammar error: name the entry and the grammar
        raise ConfigError(f"search space entry {key}={spec!r} does not parse ({one_line(exc)}); use {allowed}") from exc
    sweep = override.value()
    if isinstance(sweep, (ChoiceSweep, RangeSweep)):
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(sweep, IntervalSweep):
        log = "log" in sweep.tags
        if log and not float(sweep.start) > 0:
            raise ConfigError(f"search space entry {key}={spec!r}: a log interval needs a start > 0")
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return optuna.distributions.IntDistribution(sweep.start, sweep.end, log=log)
        return optuna.distributions.FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    raise ConfigError(f"search space entry {key}={spec!r} is a single value, not a range to search; use {allowed}")


def grid_of(space: dict[str, optuna.distributions.BaseDistribution]) -> dict[str, list[Any]] | None:
    """The choices of each parameter when every one is categorical (what ``grid`` enumerates), else None."""
    import optuna

    if not all(isinstance(d, optuna.distributions.CategoricalDistribution) for d in space.values()):
        return None
    return {k: list(d.choices) for k, d in space.items()}  # type: ignore[attr-defined]


def open_study(
    storage_url: str,
    study_name: str,
    directions: Sequence[str],
    sampler: Any = None,
    pruner: Any = None,
    heartbeat_s: int = 10,
    create: bool = True,
) -> optuna.Study:
    """Open study ``study_name`` at an RDB URL (creating it unless ``create`` is false) with heartbeats.

    A SQLite file gets WAL and ``synchronous=NORMAL``. Any failure (bad URL, missing driver, unreachable
    server, a study of that name with other directions) is one :class:`ConfigError` line.
    """
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import IntegrityError

    for attempt in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                storage = RDBStorage(
                    storage_url,
                    heartbeat_interval=heartbeat_s,
                    grace_period=2 * heartbeat_s,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=RETRIES),
                )
                if storage_url.startswith("sqlite"):
                    tune_sqlite(storage.engine)
                if create:
                    study = optuna.create_study(
                        storage=storage,
                        study_name=study_name,
                        directions=list(directions),
                        sampler=sampler,
                        pruner=pruner,
                        load_if_exists=True,
                    )
                else:
                    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
                break
            except IntegrityError:  # another worker created the same tables or study a moment ago: look again
                if attempt == 2:
                    raise
                time.sleep(0.2 + attempt)
            except Exception as exc:
                raise ConfigError(
                    f"storage {safe_url(storage_url)!r} cannot open study {study_name!r}: {one_line(exc)}"
                ) from exc
    found = [d.name.lower() for d in study.directions]
    if create and found != list(directions):
        raise ConfigError(
            f"study {study_name!r} at {safe_url(storage_url)} optimises {found}, not "
            f"{list(directions)}; pass another study name"
        )
    return study


def tune_sqlite(engine: Any) -> None:
    """WAL journal and ``synchronous=NORMAL`` on every connection: Wilcoxon pruning reports one value per
    dev example, and a full fsync per report made storage writes ~6x slower than this. A killed process
    still loses nothing committed; only an OS crash or power loss could drop the last transactions."""
    from sqlalchemy import event

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened before the listener existed get the pragmas when reopened


def safe_url(url: str) -> str:
    """The storage URL with any password masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a parseable URL: it holds no password we could mask
        return url


def join_trial(study: optuna.Study, number: int) -> optuna.Trial:
    """A handle on trial ``number`` of ``study``, for a process that was handed that trial (a sweeper job)."""
    import optuna

    # Optuna has no public "trial by number" handle; this is how a worker rejoins a trial it was given.
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    return optuna.trial.Trial(study, trial_id)


# ---------------------------------------------------------------- the resume policy


def retried_numbers(trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the trials that went stale and were re-queued (their retry counts in their place)."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def counts(trial: optuna.trial.FrozenTrial, retried: set[int]) -> bool:
    """Whether ``trial`` uses up one of the study's ``n_trials``: finished, running or queued, but not a
    stale trial that was re-queued and not a surplus trial that was never run."""
    if trial.state.name == "FAIL":
        return trial.number not in retried and not trial.user_attrs.get("surplus")
    return True


def finished(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that count and have ended (complete, pruned, or failed by their own error)."""
    retried = retried_numbers(trials)
    return [t for t in trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL") and counts(t, retried)]


@dataclass
class Outcome:
    """What running one trial gave: values (complete), ``pruned``, or an ``error`` (failed)."""

    values: float | Sequence[float] | None = None
    pruned: bool = False
    error: str | None = None


class Heartbeat:
    """Records a heartbeat for each given trial every ``interval`` seconds while the block runs, so a
    trial whose process dies goes stale and is retried by the next :func:`run_trials`."""

    def __init__(self, study: optuna.Study, trials: Sequence[optuna.Trial]):
        storage = study._storage
        self.storage, self.ids = storage, [t._trial_id for t in trials]
        self.interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            for trial_id in self.ids:
                self.storage.record_heartbeat(trial_id)

    def __enter__(self) -> Heartbeat:
        if self.interval:
            for trial_id in self.ids:  # a trial with no heartbeat yet could never go stale
                self.storage.record_heartbeat(trial_id)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def adopt_silent_trials(study: optuna.Study) -> None:
    """Give a heartbeat to each RUNNING trial that never recorded one and began over a grace period ago.

    A process killed between asking a trial and its first heartbeat leaves a RUNNING trial with no
    heartbeat row, which Optuna never calls stale. Beating for it once makes it go stale one grace
    period later, so it is failed and retried like any other dead trial.
    """
    from datetime import datetime, timedelta

    import optuna
    from optuna.storages._rdb import models

    storage = getattr(study._storage, "_backend", study._storage)  # optuna wraps RDBStorage in a cache
    if not isinstance(storage, optuna.storages.RDBStorage) or not storage.heartbeat_interval:
        return
    grace = storage.grace_period or 2 * storage.heartbeat_interval
    began_before = datetime.now() - timedelta(seconds=grace)  # FrozenTrial times are local and naive
    old = {
        t._trial_id
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if t.datetime_start is not None and t.datetime_start < began_before
    }
    if not old:
        return
    session = storage.scoped_session()
    try:
        beating = models.TrialHeartbeatModel.trial_id.in_(old)
        silent = old - {trial_id for (trial_id,) in session.query(models.TrialHeartbeatModel.trial_id).filter(beating)}
    finally:
        session.close()
    for trial_id in silent:
        storage.record_heartbeat(trial_id)


def run_trials(
    study: optuna.Study,
    n_trials: int,
    run_batch: Callable[[list[optuna.Trial]], list[Outcome]],
    *,
    space: dict[str, Any] | None = None,
    batch_size: int = 1,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    wait_s: float | None = None,
) -> int:
    """Run trials until ``study`` has ``n_trials`` finished ones (see the module docstring); returns how
    many this call ran.

    ``run_batch`` runs up to ``batch_size`` asked trials (possibly in parallel) and returns one
    :class:`Outcome` each; ``space`` (name -> distribution) is suggested at ask time, else the objective
    suggests define-by-run. Trials other processes are running count against the budget: when they fill
    it, this call waits for them (polling every ``wait_s``, default the heartbeat interval) and fails the
    ones that went stale.
    """
    import optuna
    from optuna.storages import fail_stale_trials

    storage = study._storage
    wait = wait_s or (storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None) or 5
    if isinstance(study.sampler, optuna.samplers.GridSampler) and space:
        n_trials = min(n_trials, math.prod(len(grid) for grid in (grid_of(space) or {}).values()))
    if study.get_trials(deepcopy=False):
        study.sampler.reseed_rng()  # a resumed study must not replay the draws of the run that began it
    ran = 0
    while True:
        adopt_silent_trials(study)
        with warnings.catch_warnings():  # stale-trial handling is "experimental" in Optuna since 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        if len(finished(trials)) >= n_trials:
            return ran
        waiting = sum(t.state.name == "WAITING" for t in trials)
        runnable = waiting + max(0, n_trials - sum(counts(t, retried) for t in trials))
        if runnable == 0:  # the rest are running elsewhere (or died: they go stale and are re-queued)
            running = [t.number for t in trials if t.state.name == "RUNNING"]
            log.info(f"study {study.study_name}: waiting for running trials {running}")
            time.sleep(wait)
            continue
        batch: list[optuna.Trial] = []
        for _ in range(min(batch_size, runnable)):
            with warnings.catch_warnings():  # we record the heartbeats ourselves (class Heartbeat)
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                trial = study.ask(space)
            if over_budget(study, trial.number, n_trials):
                trial.set_user_attr("surplus", True)
                tell(study, trial, Outcome(error="surplus: asked beyond n_trials by a concurrent worker"))
                break
            batch.append(trial)
        if not batch:
            time.sleep(wait)
            continue
        with Heartbeat(study, batch):
            outcomes = run_batch(batch)
        for trial, outcome in zip(batch, outcomes):
            tell(study, trial, outcome)
            if on_trial is not None:
                on_trial(study, study.get_trials(deepcopy=False)[trial.number])
        ran += len(batch)


def over_budget(study: optuna.Study, number: int, n_trials: int) -> bool:
    """Whether trial ``number`` comes after ``n_trials`` counting trials (another worker asked first)."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return sum(t.number < number and counts(t, retried) for t in trials) >= n_trials


def tell(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
    """Record an outcome: COMPLETE with its values, PRUNED, or FAIL with the error (NaN values are FAIL)."""
    import optuna

    values = outcome.values
    if not outcome.pruned and outcome.error is None:
        as_list = list(values) if isinstance(values, Sequence) else [values]
        if any(v is None or not math.isfinite(float(v)) for v in as_list):
            outcome = Outcome(error=f"objective returned {values!r}, not a finite number")
    try:
        if outcome.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif outcome.error is not None:
            study._storage.set_trial_system_attr(trial._trial_id, "fail_reason", outcome.error[:2000])
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, values)
    except RuntimeError as exc:
        # GridSampler calls study.stop() once every grid point is taken, which Optuna only allows inside
        # study.optimize; the trial's state is stored before that call, and run_trials counts the budget.
        if "Study.stop" not in str(exc):
            raise


def run_objective(objective: Callable[[optuna.Trial], Any], trial: optuna.Trial) -> Outcome:
    """Run ``objective`` on ``trial`` in this process: its value, a pruned trial, or the error it raised.

    Every exception is recorded (not raised) so that a crashed trial is FAIL and the study goes on,
    except a :class:`ConfigError`, which is the user's input and stops the run.
    """
    import optuna

    try:
        return Outcome(values=objective(trial))
    except optuna.TrialPruned:
        return Outcome(pruned=True)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded on the trial as its fail reason
        log.warning(f"trial {trial.number} failed: {type(exc).__name__}: {exc}")
        return Outcome(error=f"{type(exc).__name__}: {exc}")
