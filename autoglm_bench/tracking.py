"""Experiment loggers: ``logger=csv`` (metrics.csv in the run directory), ``logger=tensorboard`` (event
files in ``<run dir>/tensorboard/summary``), ``logger=wandb`` (offline by default, so it needs no account
and no network) or ``logger=none``. Each sees the same numbers as results.json, with credential-like
config values redacted."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from .config import LoggerConfig
from .results import redact


def log_run(cfg: LoggerConfig, run_dir: Path, result: dict[str, Any]) -> None:
    if cfg.name == "csv":
        _log_csv(run_dir / "metrics.csv", result)
    elif cfg.name == "tensorboard":
        _log_tensorboard(run_dir / "tensorboard" / "summary", result)
    elif cfg.name == "wandb":
        _log_wandb(cfg, run_dir, result)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The flat numbers a logger records: metrics, cost and timings."""
    flat = dict(result["metrics"])
    flat.update({f"cost/{k}": v for k, v in result["cost"].items()})
    flat.update({f"time/{k}": v for k, v in result["timings"].items() if v is not None})
    return flat


def _log_csv(path: Path, result: dict[str, Any]) -> None:
    row = {
        "task": result["task"],
        "model": result["model"],
        "method": result["method"],
        "seed": result["seed"],
        **summary(result),
    }
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)


def _log_tensorboard(folder: Path, result: dict[str, Any]) -> None:
    """The numbers of :func:`summary` as scalars at step 0, and which run they belong to as text."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    try:
        for name, value in summary(result).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(name, value, 0)
        run = {k: result[k] for k in ("task", "model", "method", "seed", "status")}
        writer.add_text("run", " | ".join(f"{k}={v}" for k, v in run.items()), 0)
    finally:
        writer.close()


def _log_wandb(cfg: LoggerConfig, run_dir: Path, result: dict[str, Any]) -> None:
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        tags=list(cfg.tags),
        mode=cfg.mode,
        dir=str(run_dir),
        name=run_dir.name,
        config=redact(result["config"]),
        settings=wandb.Settings(console="off", x_disable_stats=True),
    )
    try:
        run.log(summary(result))
        run.summary["status"] = result["status"]
    finally:
        run.finish()
