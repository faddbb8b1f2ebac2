"""The report's plots: metric against evaluation cost (one point per run), and each Optuna study's
history (objective per trial and the running best)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .cells import Report

STUDY_FILES = ("optuna.db", "study.db")  # our Hydra sweeper's; prompt search's and fine-tuning HPO's


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cost(report: Report, path: Path, cost_key: str = "examples_scored") -> Path | None:
    """Metric against evaluation cost (``cost[cost_key]``), one point per run, colored by column.
    Returns None (and a warning in the report) when no run records that cost."""
    points = [
        (c.col, r.result.get("cost", {}).get(cost_key), r.value(report.metric))
        for c in report.cells.values()
        for r in c.runs
    ]
    points = [(col, x, y) for col, x, y in points if isinstance(x, int | float)]
    if not points:
        report.warnings.append(f"no cost plot: no run records cost.{cost_key}")
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, col in enumerate(report.cols):
        mine = [(x, y) for c, x, y in points if c == col]
        if mine:
            ax.scatter(*zip(*mine), label=col, color=f"C{i % 10}", alpha=0.8)
    xs = [x for _, x, _ in points]
    if min(xs) > 0 and max(xs) / min(xs) > 100:
        ax.set_xscale("log")
    ax.set_xlabel(f"cost.{cost_key}")
    ax.set_ylabel(report.metric)
    ax.set_title(report.title or f"{report.metric} vs evaluation cost")
    ax.legend(title=", ".join(report.col_keys), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def find_study_files(paths: list[str | Path]) -> list[Path]:
    """The Optuna SQLite files (``optuna.db``, ``study.db``) under the given directories."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.is_dir():
            for name in STUDY_FILES:
                found.update(dict.fromkeys(f.resolve() for f in sorted(path.rglob(name))))
    return list(found)


def plot_study_history(study: Any, path: Path) -> Path:
    """Objective per trial number (finished trials) and the running best, for an Optuna study."""
    import optuna

    plt = _pyplot()
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    xs = [t.number for t in trials]
    ys = [t.values[0] for t in trials]
    best, running = [], None
    for y in ys:
        running = y if running is None else (max(running, y) if maximize else min(running, y))
        best.append(running)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(xs, ys, s=14, label="trial", color="C0")
    ax.step(xs, best, where="post", label="best so far", color="C3")
    other = len(study.trials) - len(trials)
    objective = "objective" if len(study.directions) == 1 else f"objective 1 of {len(study.directions)}"
    ax.set_xlabel("trial number")
    ax.set_ylabel(f"{objective} ({'max' if maximize else 'min'})")
    ax.set_title(f"{study.study_name}: {len(trials)} complete" + (f", {other} pruned/failed/running" if other else ""))
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_histories(report: Report, db_files: list[Path], prefix: Path) -> list[Path]:
    """One ``PREFIX_history_<study>.png`` per study in each file; unreadable files become warnings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    written: list[Path] = []
    for db in db_files:
        storage = f"sqlite:///{db}"
        try:
            names = optuna.get_all_study_names(storage=storage)
            studies = [optuna.load_study(study_name=name, storage=storage) for name in names]
        except Exception as exc:  # a locked or foreign SQLite file must not cost the whole report
            report.warnings.append(f"no history plot for {db}: {type(exc).__name__}: {exc}".splitlines()[0])
            continue
        for study in studies:
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", study.study_name).strip("_") or "study"
            path = prefix.with_name(f"{prefix.name}_history_{stem}.png")
            k = 2
            while path in written:
                path = prefix.with_name(f"{prefix.name}_history_{stem}_{k}.png")
                k += 1
            written.append(plot_study_history(study, path))
    return written
