"""The table: runs grouped into cells by config values, each cell checked for homogeneity, its identical
repeats counted once, and each metric summarised with its seed spread and example-level uncertainty."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import seed_stats, stats
from ..compare import UsageError, examples_by_id
from .runs import (
    Provenance,
    Run,
    coordinates,
    describe_keys,
    differing_keys,
    flatten,
    label_of,
    leaf_key,
    outcome_digest,
    sort_key,
)

ALPHA = 0.05
BOLD_MODES = ("row", "col", "none")


@dataclass
class Summary(seed_stats.CellSummary):
    """One metric of one cell (:class:`autoglm_bench.seed_stats.CellSummary`: mean, std, n, stderr, sem,
    df, ci95) and its test against the baseline: ``test`` name, raw ``p``, ``p_adjusted`` for the table's
    tests, or ``untested`` saying why there is none; ``best`` when bold."""

    test: str | None = None
    p: float | None = None
    p_adjusted: float | None = None
    untested: str | None = None
    best: bool = False

    @property
    def significant(self) -> bool:
        return self.p_adjusted is not None and self.p_adjusted < ALPHA


@dataclass
class Cell:
    """The distinct runs at one (row, column): ``read`` runs went in, runs with identical predictions
    became one; ``labels`` are each distinct run's replicate values (its seed), ``ids`` the test rows."""

    row: str
    col: str
    runs: list[Run]
    read: int
    labels: list[tuple]
    ids: list[str]
    summaries: dict[str, Summary] = field(default_factory=dict)
    outcomes: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs)


@dataclass
class Report:
    """A table of cells, and what a reader needs to interpret it."""

    metrics: list[str]
    row_keys: list[str]
    col_keys: list[str]
    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str], Cell]
    skipped: Counter = field(default_factory=Counter)
    replicate: list[str] = field(default_factory=lambda: ["seed"])
    pooled: dict[str, list[str]] = field(default_factory=dict)
    provenance: Provenance | None = None
    baseline: str | None = None
    correction: str = "holm"
    bold: str = "row"
    means: dict[tuple[str, str], Summary | None] | None = None
    n_tests: int = 0
    title: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def n_runs(self) -> int:
        return sum(c.n for c in self.cells.values())


def choose_metrics(runs: list[Run], metrics: list[str] | None) -> list[str]:
    """``metrics`` if each is in some run, else (None) the first metric of the first run."""
    if not metrics:
        return [next(iter(runs[0].result.get("metrics", {})), "acc")]
    for metric in metrics:
        if not any(metric in r.result.get("metrics", {}) for r in runs):
            have = sorted({m for r in runs for m in r.result.get("metrics", {})})
            raise UsageError(
                f"metric {metric!r} is in none of the {len(runs)} completed runs; their metrics: "
                f"{', '.join(have) or 'none'}"
            )
    return metrics


def check_keys_exist(runs: list[Run], keys: list[str], flag: str) -> None:
    """Refuse a --replicate or --pool key that no run's config has."""
    present = set().union(*(flatten(r.config) for r in runs))
    for key in keys:
        if not any(k == key or k.startswith(key + ".") for k in present):
            raise UsageError(
                f"{flag} key {key!r} is in no run's config; give dotted keys such as seed or prompt.k_shot"
            )


def distinct_runs(runs: list[Run]) -> list[Run]:
    """The runs with distinct outcomes, first of each in path order: identical repeats count once."""
    seen: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: str(r.path)):
        seen.setdefault(outcome_digest(run), run)
    return list(seen.values())


def run_outcomes(run: Run, metric: str, ids: list[str]) -> np.ndarray:
    by_id = examples_by_id(run.result, str(run.path))
    return stats.example_outcomes(metric, [by_id[i] for i in ids])


def stored_summary(runs: list[Run], metric: str) -> Summary:
    """A summary from the runs' metric values alone (no predictions to recompute the metric from): the
    example-level stderr is the root mean square of the runs' stored ``metric_stats`` stderrs."""
    values = [r.value(metric) for r in runs]
    mean, std, n = stats.mean_std(values)
    stored = [r.result.get("metric_stats", {}).get(metric, {}).get("stderr") for r in runs]
    stderr = math.sqrt(float(np.mean(np.square(stored)))) if all(s is not None for s in stored) else math.nan
    parts = [(std * std / n, n - 1), (0.0 if math.isnan(stderr) else stderr**2, math.inf)]
    var = sum(v for v, _ in parts) if not math.isnan(stderr) else math.nan
    df = seed_stats.satterthwaite(parts)
    return Summary(mean, std, n, stderr, math.sqrt(var), df, seed_stats.t_interval(mean, var, df))


def make_cell(row: str, col: str, runs: list[Run], metrics: list[str], replicate: list[str]) -> Cell:
    """Summarise the runs of one cell (already checked homogeneous) for each metric."""
    distinct = distinct_runs(runs)
    ids = list(distinct[0].test_ids)
    flat = [flatten(r.config) for r in distinct]
    labels = [tuple(f.get(k) for k in replicate) for f in flat]
    cell = Cell(row, col, distinct, len(runs), labels, ids)
    for metric in metrics:
        if metric in stats.METRICS and ids:
            outcomes = [run_outcomes(r, metric, ids) for r in distinct]
            cell.outcomes[metric] = outcomes
            cell.summaries[metric] = Summary(**vars(seed_stats.cell_summary(metric, outcomes)))
        else:
            cell.summaries[metric] = stored_summary(distinct, metric)
    return cell


def check_cell(
    row: str, col: str, runs: list[Run], replicate: list[str], coords: set[str], pooled: dict[str, set[str]]
) -> None:
    """Refuse a cell whose runs differ in a config key that is not a row, column, replicate or pooled key,
    or that were scored on different test rows; remember which pooled keys did differ."""
    differ = differing_keys(runs, set(replicate) | coords)
    refused = {k: v for k, v in differ.items() if not any(k == p or k.startswith(p + ".") for p in pooled)}
    if refused:
        raise UsageError(
            f"cell ({row}, {col}) mixes runs that differ in {describe_keys(refused)}; runs of a cell may differ "
            f"only in the replicate keys ({', '.join(replicate)}; --replicate): add the "
            f"key to --rows or --cols, or pool it on purpose with --pool {next(iter(refused))}"
        )
    for key, values in differ.items():
        pool_key = next(p for p in pooled if key == p or key.startswith(p + "."))
        pooled[pool_key].add(f"{key}: {', '.join(values)}")
    id_sets = Counter(tuple(sorted(r.test_ids)) for r in runs)
    if len(id_sets) > 1:
        sizes = ", ".join(f"{len(ids)} rows ({n} runs)" for ids, n in id_sets.most_common())
        raise UsageError(
            f"cell ({row}, {col}) mixes runs scored on different test rows: {sizes}; "
            "its runs must share one set of test rows (same task, split_seed, dev_size and limit)"
        )


def build_report(
    runs: list[Run],
    row_keys: list[str],
    col_keys: list[str],
    metrics: list[str],
    *,
    replicate: list[str] | None = None,
    pool: list[str] | None = None,
    bold: str = "row",
    mean: bool = False,
) -> Report:
    """Group ``runs`` into cells by the config values at ``row_keys`` x ``col_keys`` and summarise
    ``metrics``; a cell whose runs differ in any other config key than ``replicate`` (default ``seed``) or
    ``pool`` is refused with a :class:`UsageError` naming the keys and their values."""
    replicate = list(replicate or ["seed"])
    pool = list(pool or [])
    check_keys_exist(runs, replicate, "--replicate")
    check_keys_exist(runs, pool, "--pool")
    skipped: Counter = Counter()
    usable = []
    for r in runs:
        missing = [m for m in metrics if not isinstance(r.result.get("metrics", {}).get(m), int | float)]
        if missing:
            skipped[f"no {missing[0]}"] += 1
        else:
            usable.append(r)
    if not usable:
        raise UsageError(f"no completed run reports {', '.join(metrics)}")
    row_vals = {id(r): coordinates(r, row_keys) for r in usable}
    col_vals = {id(r): coordinates(r, col_keys) for r in usable}
    rows = [label_of(v) for v in sorted(set(row_vals.values()), key=sort_key)]
    cols = [label_of(v) for v in sorted(set(col_vals.values()), key=sort_key)]
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in usable:
        r.row, r.col = label_of(row_vals[id(r)]), label_of(col_vals[id(r)])
        groups.setdefault((r.row, r.col), []).append(r)
    pooled: dict[str, set[str]] = {p: set() for p in pool}
    cells = {}
    for (row, col), group in groups.items():
        coords = {leaf_key(group[0].config, k) for k in row_keys + col_keys}
        check_cell(row, col, group, replicate, coords, pooled)
        cells[(row, col)] = make_cell(row, col, group, metrics, replicate)
    report = Report(metrics, row_keys, col_keys, rows, cols, cells, skipped, replicate, bold=bold)
    report.pooled = {k: sorted(v) for k, v in pooled.items() if v}
    mark_best(report)
    if mean:
        add_means(report)
    return report


def mark_best(report: Report) -> None:
    """Bold the best mean of each row (``bold=row``: the best method for a task) or column, per metric; a
    cell within one standard error (``sem``, seeds and examples) of the best is a tie and bold too. All
    our metrics are better higher."""
    if report.bold == "none":
        return
    for metric in report.metrics:
        lines = report.rows if report.bold == "row" else report.cols
        for line in lines:
            group = [
                c.summaries[metric]
                for c in report.cells.values()
                if (c.row if report.bold == "row" else c.col) == line and not math.isnan(c.summaries[metric].mean)
            ]
            if len(group) < 2:
                continue
            top = max(group, key=lambda s: s.mean)
            tie = top.sem if math.isfinite(top.sem) else 0.0
            for s in group:
                s.best = top.mean - s.mean <= tie + 1e-12


def add_means(report: Report) -> None:
    """The mean over the columns of each row (a model's average over tasks), per metric, with the
    standard error of an average of independent cells: sqrt(sum of their sem^2) / number of columns.
    None for a row that lacks a column."""
    report.means = {}
    for row in report.rows:
        for metric in report.metrics:
            cells = [report.cells.get((row, col)) for col in report.cols]
            if any(c is None for c in cells):
                report.means[(row, metric)] = None
                continue
            parts = [c.summaries[metric] for c in cells if c is not None]
            k = len(parts)
            avg = float(np.mean([s.mean for s in parts]))
            var = sum(s.sem**2 for s in parts) / k**2
            df = seed_stats.satterthwaite([(s.sem**2 / k**2, s.df) for s in parts])
            se = math.sqrt(sum(s.stderr**2 for s in parts)) / k
            report.means[(row, metric)] = Summary(
                avg, math.nan, k, se, math.sqrt(var), df, seed_stats.t_interval(avg, var, df)
            )


def n_shot(cell: Cell) -> str:
    """The cell's few-shot k: ``prompt.k_shot``, or the k a prompt search picked (from results.json)."""
    ks = set()
    for r in cell.runs:
        picked = r.result.get("search", {}).get("best", {}).get("params", {}).get("k_shot")
        ks.add(picked if picked is not None else r.config.get("prompt", {}).get("k_shot"))
    return ",".join(str(k) for k in sorted(ks, key=lambda k: sort_key((k,))))


def task_versions(cell: Cell) -> str:
    return ",".join(sorted({r.task_version for r in cell.runs}))


def cell_facts(cell: Cell) -> dict[str, Any]:
    """What the lm-eval style view shows about a cell besides its numbers."""
    return {"version": task_versions(cell), "n_shot": n_shot(cell)}
