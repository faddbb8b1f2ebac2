"""``python -m autoglm_bench``: the Hydra entry point. Compose, validate, dispatch on ``method.name``,
write results.json. Bad input of any kind ends in one line on stderr and exit status 2."""

from __future__ import annotations

import logging
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .config import (
    CONF_DIR,
    ConfigError,
    RunConfig,
    check_task_choice,
    describe_composition_error,
    register_schemas,
    validate,
)
from .logs import FILE_ONLY
from .methods import method_of
from .results import redact
from .threads import available_cpus, choose_threads, use_threads

register_schemas()
log = logging.getLogger("autoglm_bench")  # not __name__: run as a script this module is "__main__"


def parallel_jobs(cores: int) -> int:
    """How many jobs the Hydra launcher runs at once (joblib's ``n_jobs``, capped by our sweeper's), else 1."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # not under Hydra (tests calling execute directly)
        return 1
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    if not isinstance(n_jobs, int):
        return 1
    if n_jobs < 0:  # joblib: -1 is every core, -2 all but one, ...
        n_jobs = cores + 1 + n_jobs
    sweeper_jobs = OmegaConf.select(hydra_cfg, "sweeper.n_jobs", default=None)
    if isinstance(sweeper_jobs, int) and sweeper_jobs > 0:
        n_jobs = min(n_jobs, sweeper_jobs)
    return max(1, n_jobs)


def cpu_threads(run: RunConfig) -> int:
    """``threads=``, else this job's share of the CPUs it may use (affinity, cgroup quota; see
    :mod:`autoglm_bench.threads`): two parallel jobs on 2 CPUs get one thread each (oversubscribed cores
    made small models many times slower)."""
    return choose_threads(parallel_jobs(available_cpus()), run.threads)


def execute(cfg: DictConfig, run_dir: Path, multirun: bool = False) -> dict[str, Any]:
    """Run one composed config and write its results.json; returns the result record.

    A crash after validation still leaves a results.json with ``status: failed`` and the error, so
    a sweep records the failed run and goes on.
    """
    run = validate(cfg)
    if run.method.score_dev is None:  # evaluate: score the dev rows (the sweeper's objective) in a multirun
        run.method.score_dev = multirun
    log.info("config: %s", redact(config_summary(run)), extra=FILE_ONLY)
    random.seed(run.seed)
    import torch

    torch.manual_seed(run.seed)
    use_threads(cpu_threads(run))
    log.info("%s: started (%d torch threads)", run.method.name, torch.get_num_threads(), extra=FILE_ONLY)
    start = time.perf_counter()
    from .results import env_info, write_results
    from .stats import METRICS as STAT_METRICS
    from .stats import metric_stats
    from .tracking import log_run

    record: dict[str, Any] = {
        "task": run.task.name,
        "model": run.model.name,
        "method": run.method.name,
        "seed": run.seed,
        "config": redact(OmegaConf.to_container(cfg, resolve=True)),
        "run_dir": str(run_dir),
    }
    try:
        out = method_of(run.method.name).run(run, run_dir)
    except ConfigError:
        raise
    except Exception as exc:
        status = "pruned" if type(exc).__name__ == "TrialPruned" else "failed"  # a sweeper's pruner stopped it
        log.error("%s %s: %s: %s", run.method.name, status, type(exc).__name__, exc, extra=FILE_ONLY)
        write_results(
            run_dir,
            {
                **record,
                "status": status,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
                "metrics": {},
                "predictions": [],
                "timings": {},
                "cost": {},
                "env": env_info(),
            },
        )
        raise
    if not out.pop("primary", True):  # a non-zero rank of a multi-process run: rank 0 writes the results
        return {**record, **out, "metrics": {}, "cost": {"examples_scored": 0}}
    device, backend = out.pop("device", None), out.pop("backend", "hf")
    env = {**env_info(device), "backend": backend, "threads": torch.get_num_threads()}
    record.update(status="completed", env=env, **out)
    record["metric_stats"] = metric_stats([m for m in record["metrics"] if m in STAT_METRICS], record["predictions"])
    path = write_results(run_dir, record)
    timings = " ".join(
        f"{k}={v:.1f}"
        for k, v in record["timings"].items()
        if k.endswith("_s") and not k.endswith("per_s") and v is not None
    )
    log.info(
        "%s: finished in %.1f s (%s), %s examples scored; wrote %s",
        run.method.name,
        time.perf_counter() - start,
        timings,
        record["cost"].get("examples_scored"),
        path,
        extra=FILE_ONLY,
    )
    log_run(run.logger, run_dir, record)
    return record


def summary_line(record: dict[str, Any]) -> str:
    """The run's last result line: the metrics, over ``test n`` examples, and how many examples the model
    ``scored`` to get them (prompt search: its dev trials too; examples answered by a cache are not scored).

    >>> summary_line({"task": "t", "model": "m", "method": "evaluate", "metrics": {"acc": 0.5},
    ...               "predictions": [{}, {}], "cost": {"examples_scored": 2}})
    't | m | evaluate | test n=2 | scored 2 | acc=0.5000'
    """
    shown = " ".join(f"{k}={v:.4f}" for k, v in record["metrics"].items())
    n, scored = len(record["predictions"]), record.get("cost", {}).get("examples_scored", 0)
    return f"{record['task']} | {record['model']} | {record['method']} | test n={n} | scored {scored} | {shown}"


def config_summary(run: RunConfig) -> str:
    """One line naming what a run does (the whole config is in .hydra/config.yaml and results.json)."""
    p = run.prompt
    return (
        f"task={run.task.name} model={run.model.name} ({run.model.path or run.model.kind}) method={run.method.name} "
        f"prompt.template={p.template} prompt.k_shot={p.k_shot} seed={run.seed} split_seed={run.split_seed} "
        f"dev_size={run.dev_size} limit={run.limit} data_dir={run.data_dir} tag={run.tag}"
    )


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        check_task_choice(HydraConfig.get().runtime.choices.get("task"), cfg)
        record = execute(cfg, run_dir, multirun)
    except ConfigError as exc:
        log.error("%s", exc)  # the terminal's one line on stderr, and the run's log file
        if multirun:
            raise  # Hydra records the failed job, the sweep goes on, and the error is reported at the end
        raise SystemExit(2) from None
    log.info(summary_line(record))
    log.info(f"run dir: {run_dir}")
    # What a Hydra sweeper optimises: the run's dev objective, never a metric of the reported test rows.
    return record.get("objective")


def main() -> None:
    # Let composition errors reach us instead of Hydra's multi-line report; a user who sets
    # HYDRA_FULL_ERROR=1 gets the full traceback as usual.
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except Exception as exc:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if full_error or not isinstance(exc, (HydraException, OmegaConfBaseException, ConfigError)):
            raise
        print(f"error: {describe_composition_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
