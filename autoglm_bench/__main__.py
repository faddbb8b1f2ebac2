"""``python -m autoglm_bench``: the Hydra entry point. Compose, validate, dispatch on ``method.name``,
write results.json. Bad input of any kind ends in one line on stderr and exit status 2."""

from __future__ import annotations

import os
import random
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from .config import CONF_DIR, ConfigError, RunConfig, group_options, one_line, register_schemas, validate

register_schemas()


def run_method(run: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Dispatch to the method's implementation (imported lazily: torch loads only for real work).

    Each returns its part of the result record: metrics, predictions, timings, cost and ``device``
    (popped before writing), plus any method-specific fields.
    """
    if run.method.name == "evaluate":
        from .evaluate import run_evaluate

        return run_evaluate(run)
    if run.method.name == "finetune":
        from .train.run import run_finetune

        return run_finetune(run, run_dir)
    if run.method.name == "prompt_search":
        from .search import run_prompt_search

        return run_prompt_search(run, run_dir)
    raise ConfigError(f"unknown method {run.method.name!r}")


def execute(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run one composed config and write its results.json; returns the result record.

    A crash after validation still leaves a results.json with ``status: failed`` and the error, so
    a sweep records the failed run and goes on.
    """
    run = validate(cfg)
    random.seed(run.seed)
    import torch

    torch.manual_seed(run.seed)
    from .loggers import log_run
    from .results import env_info, redact, write_results

    record: dict[str, Any] = {
        "task": run.task.name,
        "model": run.model.name,
        "method": run.method.name,
        "seed": run.seed,
        "config": redact(OmegaConf.to_container(cfg, resolve=True)),
        "run_dir": str(run_dir),
    }
    try:
        out = run_method(run, run_dir)
    except ConfigError:
        raise
    except Exception as exc:
        status = "pruned" if type(exc).__name__ == "TrialPruned" else "failed"  # a sweeper's pruner stopped it
        write_results(run_dir, {**record, "status": status, "error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc(), "metrics": {}, "predictions": [],
                                "timings": {}, "cost": {}, "env": env_info()})
        raise
    if not out.pop("primary", True):  # a non-zero rank of a multi-process run: rank 0 writes the results
        return {**record, **out, "metrics": {}, "cost": {"examples_scored": 0}}
    device = out.pop("device", None)
    record.update(status="completed", env=env_info(device), **out)
    write_results(run_dir, record)
    log_run(run.logger, run_dir, record)
    return record


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        record = execute(cfg, run_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # Hydra records the failed job, the sweep goes on, and the error is reported at the end
        raise SystemExit(2) from None
    metrics = record["metrics"]
    shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    n = record["cost"]["examples_scored"]
    print(f"{record['task']} | {record['model']} | {record['method']} | n={n} | {shown}")
    print(f"run dir: {run_dir}")
    # The objective a Hydra sweeper optimises: a method's own (finetune: the dev metric), else the first metric.
    return record.get("objective", next(iter(metrics.values()), None))


def describe_hydra_error(exc: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error, naming the bad value and what is allowed."""
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        if group in ("task", "model", "prompt", "method", "search", "trainer", "logger", "experiment",
                     "peft", "optim"):
            return f"unknown {group} {name!r}; available: {', '.join(group_options(group))}"
    cause = exc.__cause__
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key and cause.parent_node is not None:
        allowed = ", ".join(str(k) for k in cause.parent_node.keys() if k != "hydra")
        return f"unknown config key {cause.full_key!r}; allowed here: {allowed}"
    message = one_line(exc)
    if cause is not None and one_line(cause) not in message:
        message = f"{message}: {one_line(cause)}"
    return message


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
        print(f"error: {describe_hydra_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
