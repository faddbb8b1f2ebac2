"""Runs -> tables and plots: ``python -m autoglm_bench.report DIR_OR_FILE... --rows task.name --cols method.name``.

Every results.json under the given paths (runs, multiruns, sweeps) with status ``completed`` is grouped
by config keys into a table: one cell per (row, column), the mean ± sample standard deviation of one
metric over the runs in it (seeds), with their number n. The best mean of each column is bold;
``--baseline`` marks the cells that differ significantly from the baseline column in their row, paired
over examples (:func:`autoglm_bench.compare.compare_runs` for single runs, a paired bootstrap of the
seed-averaged per-example outcomes otherwise). The table always goes to the terminal (rich); ``--out
PREFIX`` also writes PREFIX.md, PREFIX.tex (booktabs), PREFIX.csv, PREFIX_cost.png (metric against
evaluation cost) and one PREFIX_history_<study>.png per Optuna study found in the given directories.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import stats
from .compare import UsageError, compare_runs, examples_by_id

ALPHA = 0.05
MARK = "†"
COST_KEYS = ("examples_scored", "tokens_processed")
STUDY_FILES = ("optuna.db", "study.db")  # our Hydra sweeper's; prompt search's and fine-tuning HPO's


@dataclass
class Run:
    """One completed run: where its results.json is, the file's content, and its table coordinates."""

    path: Path
    result: dict[str, Any]
    row: str = ""
    col: str = ""

    def value(self, metric: str) -> float:
        return float(self.result["metrics"][metric])


@dataclass
class Cell:
    """The runs at one (row, column) and their summary."""

    row: str
    col: str
    runs: list[Run]
    mean: float
    std: float
    n: int
    stderr: float
    p_vs_baseline: float | None = None
    best: bool = False

    @property
    def significant(self) -> bool:
        return self.p_vs_baseline is not None and self.p_vs_baseline < ALPHA


@dataclass
class Report:
    """A table of cells, and what a reader needs to interpret it."""

    metric: str
    row_keys: list[str]
    col_keys: list[str]
    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str], Cell]
    skipped: Counter = field(default_factory=Counter)
    baseline: str | None = None
    title: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def n_runs(self) -> int:
        return sum(c.n for c in self.cells.values())


# ---------------------------------------------------------------- finding and loading runs


def find_result_files(paths: list[str | Path]) -> list[Path]:
    """Every results.json under ``paths`` (a file is taken as it is, a directory searched recursively)."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise UsageError(f"no such file or directory: {path}")
        files = [path] if path.is_file() else sorted(path.rglob("results.json"))
        if not files:
            raise UsageError(f"no results.json found under {path}")
        found.update(dict.fromkeys(f.resolve() for f in files))
    return list(found)


def load_runs(files: list[Path]) -> tuple[list[Run], Counter]:
    """The completed runs among ``files``, and a count of the others by reason ("failed", "pruned", ...)."""
    runs, skipped = [], Counter()
    for file in files:
        try:
            result = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            skipped["unreadable"] += 1
            continue
        status = result.get("status")
        if status == "completed":
            runs.append(Run(file, result))
        else:
            skipped[str(status)] += 1
    return runs, skipped


def split_keys(text: str) -> list[str]:
    """``"task.name, peft.method"`` -> ``["task.name", "peft.method"]``."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise UsageError(f"no config key in {text!r}; give dotted keys like task.name or peft.method,prompt.k_shot")
    return keys


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` of a resolved config; a group (``task``) stands for its ``name``.

    >>> config_value({"task": {"name": "sst2"}, "prompt": {"k_shot": 4}}, "prompt.k_shot")
    4
    >>> config_value({"task": {"name": "sst2"}}, "task")
    'sst2'
    """
    node: Any = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            parent = ".".join(parts[:i])
            where = "the config" if i == 0 else repr(parent)
            inner = (
                ""
                if i == 0
                else (f" (its keys: {', '.join(sorted(node))})" if isinstance(node, dict) else " (it is a value)")
            )
            raise UsageError(
                f"unknown config key {key!r}: {where} has no {part!r}{inner}; "
                f"top-level config keys: {', '.join(sorted(config))}"
            )
        node = node[part]
    if isinstance(node, dict):
        if "name" in node:
            return node["name"]
        raise UsageError(f"config key {key!r} is a group, not a value; pick one of its keys: {', '.join(sorted(node))}")
    return node


def format_value(value: Any) -> str:
    """A config value as a table label (YAML spelling for booleans and null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def _sort_key(values: tuple) -> tuple:
    """Numbers in numeric order before text, so k_shot reads 0, 2, 16 rather than 0, 16, 2."""
    return tuple(
        (0, v, "") if isinstance(v, int | float) and not isinstance(v, bool) else (1, 0, format_value(v))
        for v in values
    )


def label_of(values: tuple) -> str:
    """The label of a row or column: its config values joined by `` / ``."""
    return " / ".join(format_value(v) for v in values)


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value


def coordinates(run: Run, keys: list[str]) -> tuple:
    """The run's config values at ``keys`` (lists as tuples, so that they can group runs)."""
    return tuple(_hashable(config_value(run.result.get("config", {}), k)) for k in keys)


def choose_metric(runs: list[Run], metric: str | None) -> str:
    """``metric`` if some run has it, else (None) the first metric of the first run."""
    if metric is None:
        return next(iter(runs[0].result.get("metrics", {})), "acc")
    if not any(metric in r.result.get("metrics", {}) for r in runs):
        have = sorted({m for r in runs for m in r.result.get("metrics", {})})
        raise UsageError(
            f"metric {metric!r} is in none of the {len(runs)} completed runs; their metrics: "
            f"{', '.join(have) or 'none'}"
        )
    return metric


# ---------------------------------------------------------------- the table


def run_stderr(run: Run, metric: str) -> float:
    """The run's own standard error of ``metric``: its stored ``metric_stats``, else computed from predictions."""
    stored = run.result.get("metric_stats", {}).get(metric, {}).get("stderr")
    if stored is not None:
        return float(stored)
    if metric not in stats.METRICS or not run.result.get("predictions"):
        return float("nan")
    return stats.metric_stats([metric], run.result["predictions"])[metric]["stderr"]


def make_cell(row: str, col: str, runs: list[Run], metric: str) -> Cell:
    """Summarise the runs of one cell: mean, sample std, n, and the stderr over seeds (or the run's own)."""
    values = [r.value(metric) for r in runs]
    mean, std, n = stats.mean_std(values)
    stderr = stats.stderr_of_mean(values) if n > 1 else run_stderr(runs[0], metric)
    return Cell(row, col, runs, mean, std, n, stderr)


def build_report(
    runs: list[Run], row_keys: list[str], col_keys: list[str], metric: str, baseline: str | None = None
) -> Report:
    """Group ``runs`` into cells by the config values at ``row_keys`` x ``col_keys`` and summarise ``metric``."""
    with_metric = [r for r in runs if isinstance(r.result.get("metrics", {}).get(metric), int | float)]
    skipped = Counter()
    if len(with_metric) < len(runs):
        skipped[f"no {metric}"] = len(runs) - len(with_metric)
    row_vals = {id(r): coordinates(r, row_keys) for r in with_metric}
    col_vals = {id(r): coordinates(r, col_keys) for r in with_metric}
    rows = [label_of(v) for v in sorted(set(row_vals.values()), key=_sort_key)]
    cols = [label_of(v) for v in sorted(set(col_vals.values()), key=_sort_key)]
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in with_metric:
        r.row, r.col = label_of(row_vals[id(r)]), label_of(col_vals[id(r)])
        groups.setdefault((r.row, r.col), []).append(r)
    cells = {key: make_cell(*key, group, metric) for key, group in groups.items()}
    report = Report(metric, row_keys, col_keys, rows, cols, cells, skipped, baseline)
    mark_best_per_column(report)
    if baseline is not None:
        add_baseline_tests(report)
    return report


def mark_best_per_column(report: Report) -> None:
    """Bold the highest mean of each column that has at least two cells (all our metrics: higher is better)."""
    for col in report.cols:
        column = [c for c in report.cells.values() if c.col == col and not math.isnan(c.mean)]
        if len(column) < 2:
            continue
        top = max(c.mean for c in column)
        for c in column:
            c.best = math.isclose(c.mean, top, rel_tol=0, abs_tol=1e-12)


def pooled_outcomes(runs: list[Run], metric: str, ids: list[str]) -> Any:
    """The runs' outcomes on examples ``ids``, pooled over the runs (:func:`stats.pool_runs`)."""
    per_run = []
    for r in runs:
        by_id = examples_by_id(r.result, str(r.path))
        per_run.append(stats.example_outcomes(metric, [by_id[i] for i in ids]))
    return stats.pool_runs(metric, per_run)


def p_value_vs(base: Cell, cell: Cell, metric: str) -> float:
    """Paired p-value of ``cell`` against ``base``: :func:`compare_runs` (exact McNemar for acc, acc_norm,
    exact_match) when both hold one run, else a paired bootstrap of the seed-pooled outcomes over the
    examples every run of both cells scored."""
    if base.n == 1 and cell.n == 1:
        return compare_runs(base.runs[0].result, cell.runs[0].result, metric)["p_value"]
    runs = base.runs + cell.runs
    ids = [p["id"] for p in base.runs[0].result["predictions"]]
    for r in runs[1:]:
        seen = examples_by_id(r.result, str(r.path))
        ids = [i for i in ids if i in seen]
    if not ids:
        raise UsageError(f"cells ({base.row}, {base.col}) and ({cell.row}, {cell.col}) share no example id")
    return stats.paired_bootstrap(
        metric, pooled_outcomes(base.runs, metric, ids), pooled_outcomes(cell.runs, metric, ids)
    )["p_value"]


def add_baseline_tests(report: Report) -> None:
    """Set ``p_vs_baseline`` of every cell that has a baseline cell in its row."""
    if report.baseline not in report.cols:
        raise UsageError(
            f"--baseline {report.baseline!r} is not a column value of {','.join(report.col_keys)}; "
            f"columns: {', '.join(report.cols)}"
        )
    if report.metric not in stats.METRICS:
        raise UsageError(
            f"--baseline needs a metric computable per example ({', '.join(stats.METRICS)}), not {report.metric!r}"
        )
    for (row, col), cell in report.cells.items():
        base = report.cells.get((row, report.baseline))
        if base is None or col == report.baseline:
            continue
        try:
            cell.p_vs_baseline = p_value_vs(base, cell, report.metric)
        except ValueError as exc:
            report.warnings.append(f"no test of ({row}, {col}) against the baseline: {exc}")


def notes(report: Report) -> list[str]:
    """Plain-text lines that explain the table (shared by the terminal, Markdown and LaTeX outputs)."""
    lines = [
        f"Metric: {report.metric}. A cell is the mean ± sample standard deviation (n - 1) over its runs; "
        f"n = number of runs (seeds, or any config value not used for rows or columns).",
        "Bold: the best mean in each column (columns with at least two cells).",
    ]
    if report.baseline is not None:
        single = "a paired bootstrap" if report.metric in stats.CORPUS_METRICS else "the exact McNemar test"
        pooled = (
            f"{report.metric} averaged over each cell's runs on the same resampled examples"
            if report.metric in stats.CORPUS_METRICS
            else f"each example's {report.metric} averaged over the cell's runs"
        )
        lines.append(
            f"{MARK}: differs from the baseline column {report.baseline!r} in the same row at p < {ALPHA}, paired "
            f"over the examples both cells scored: {single} when both cells hold one run, otherwise a paired "
            f"bootstrap ({stats.BOOTSTRAP_RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED}) of {pooled}."
        )
    skipped = sum(report.skipped.values())
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(report.skipped.items()))
    cells = "1 cell" if len(report.cells) == 1 else f"{len(report.cells)} cells"
    lines.append(
        f"Runs: {report.n_runs} completed in {cells}; "
        + (f"skipped {skipped} ({why})." if skipped else "none skipped.")
    )
    return lines + report.warnings


# ---------------------------------------------------------------- renderings


def cell_text(cell: Cell) -> str:
    """``0.5050 ± 0.0430 (n=3)``, the plain text of a cell (without bold or mark)."""
    return f"{cell.mean:.4f} ± {cell.std:.4f} (n={cell.n})"


def _md(text: str) -> str:
    """A label fit for a Markdown table cell."""
    return text.replace("|", "\\|")


def render_markdown(report: Report) -> str:
    """The table as GitHub Markdown: bold via ``**``, the mark after the cell, notes below."""
    head = ", ".join(report.row_keys) + " \\ " + ", ".join(report.col_keys)
    lines = [f"## {report.title}", ""] if report.title else []
    lines += ["| " + " | ".join(map(_md, [head, *report.cols])) + " |", "|" + "---|" * (len(report.cols) + 1)]
    for row in report.rows:
        texts = []
        for col in report.cols:
            c = report.cells.get((row, col))
            if c is None:
                texts.append("–")
                continue
            value = f"{c.mean:.4f} ± {c.std:.4f}"
            texts.append((f"**{value}**" if c.best else value) + f" (n={c.n})" + (MARK if c.significant else ""))
        lines.append("| " + " | ".join([_md(row), *texts]) + " |")
    return "\n".join(lines + [""] + [f"- {line}" for line in notes(report)]) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    r"""Escape LaTeX's special characters: ``latex_escape("tiny_glm")`` -> ``tiny\_glm``."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text).replace("±", r"$\pm$").replace(MARK, r"$^\dagger$")


def render_latex(report: Report) -> str:
    """The table as a LaTeX ``table`` with booktabs rules (needs ``\\usepackage{booktabs}``)."""
    head = latex_escape(", ".join(report.row_keys) + " \\ " + ", ".join(report.col_keys))
    lines = [
        "% made by python -m autoglm_bench.report; needs \\usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
    ]
    if report.title:
        lines.append(rf"\caption{{{latex_escape(report.title)}}}")
    lines += [
        r"\begin{tabular}{l" + "c" * len(report.cols) + "}",
        r"\toprule",
        " & ".join([head, *map(latex_escape, report.cols)]) + r" \\",
        r"\midrule",
    ]
    for row in report.rows:
        texts = []
        for col in report.cols:
            c = report.cells.get((row, col))
            if c is None:
                texts.append("--")
                continue
            value = rf"{c.mean:.4f} $\pm$ {c.std:.4f}"
            texts.append(
                (rf"\textbf{{{value}}}" if c.best else value) + f" ({c.n})" + (r"$^\dagger$" if c.significant else "")
            )
        lines.append(" & ".join([latex_escape(row), *texts]) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\par\smallskip",
        r"{\footnotesize " + r" \\ ".join(latex_escape(n) for n in notes(report)) + "}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def render_csv(report: Report) -> str:
    """One line per cell: row, col, mean, std, n, stderr (over seeds, or the single run's), p_vs_baseline."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["row", "col", "mean", "std", "n", "stderr", "p_vs_baseline"])
    for row in report.rows:
        for col in report.cols:
            c = report.cells.get((row, col))
            if c is not None:
                p = "" if c.p_vs_baseline is None else repr(c.p_vs_baseline)
                writer.writerow([row, col, repr(c.mean), repr(c.std), c.n, repr(c.stderr), p])
    return buf.getvalue()


def print_table(report: Report, console: Any = None) -> None:
    """The table on the terminal with rich: bold for the best of each column, notes below."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # labels are config values: Text keeps "[0,2]" from being read as markup

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: don't wrap cells at 80 columns
            console = Console(width=200)
    title = report.title or f"{report.metric} by {', '.join(report.row_keys)} x {', '.join(report.col_keys)}"
    table = Table(title=Text(title))
    table.add_column(Text(", ".join(report.row_keys) + " \\ " + ", ".join(report.col_keys)), no_wrap=True)
    for col in report.cols:
        table.add_column(Text(col), justify="right", no_wrap=True)
    for row in report.rows:
        texts = []
        for col in report.cols:
            c = report.cells.get((row, col))
            if c is None:
                texts.append(Text("–"))
            else:
                texts.append(Text(cell_text(c) + (MARK if c.significant else ""), style="bold" if c.best else ""))
        table.add_row(Text(row), *texts)
    console.print(table)
    for line in notes(report):
        console.print(line, markup=False, highlight=False)


# ---------------------------------------------------------------- plots


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


# ---------------------------------------------------------------- command line


def write_outputs(report: Report, prefix: Path, paths: list[str], cost_key: str) -> list[Path]:
    """PREFIX.md, .tex, .csv and the plots; returns the files written."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = [plot_cost(report, prefix.with_name(prefix.name + "_cost.png"), cost_key)]
    written += plot_histories(report, find_study_files(paths), prefix)
    for suffix, text in (
        (".md", render_markdown(report)),
        (".tex", render_latex(report)),
        (".csv", render_csv(report)),
    ):
        path = prefix.with_name(prefix.name + suffix)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return [p for p in written if p is not None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m autoglm_bench.report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tabulate runs: every results.json under the given paths with status completed, grouped\n"
        "by config keys into rows x columns; a cell is mean ± sample std over its runs (seeds).",
        epilog="examples:\n"
        "  python -m autoglm_bench.report multirun/2026-11-25/ --rows task --cols method\n"
        "  python -m autoglm_bench.report outputs/ --rows task.name --cols peft.method \\\n"
        "      --baseline full --out results/peft --title 'PEFT methods'\n"
        "keys are dotted paths into the resolved config (a group such as task stands for task.name);\n"
        "several keys are comma-separated: --rows task.name,prompt.k_shot",
    )
    parser.add_argument("paths", nargs="+", metavar="DIR_OR_FILE", help="run/multirun/sweep directories or files")
    parser.add_argument("--rows", default="task.name", help="config key(s) of the rows (default: task.name)")
    parser.add_argument("--cols", default="method.name", help="config key(s) of the columns (default: method.name)")
    parser.add_argument("--metric", help="metric to tabulate (default: the first metric of the first run)")
    parser.add_argument(
        "--baseline",
        metavar="COLVALUE",
        help=f"a column label as printed; other cells of its row are marked {MARK} when they differ from it "
        f"at p < {ALPHA} (paired over examples)",
    )
    parser.add_argument(
        "--out",
        metavar="PREFIX",
        type=Path,
        help="write PREFIX.md, PREFIX.tex, PREFIX.csv, PREFIX_cost.png and PREFIX_history_*.png",
    )
    parser.add_argument("--title", help="title of the table and plots")
    parser.add_argument(
        "--cost",
        choices=COST_KEYS,
        default="examples_scored",
        help="x axis of the cost plot (default: examples_scored)",
    )
    return parser


def make_report(args: argparse.Namespace) -> Report:
    """Find, load and tabulate the runs named by parsed command-line ``args``."""
    runs, skipped = load_runs(find_result_files(args.paths))
    if not runs:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        raise UsageError(f"no completed run under {', '.join(args.paths)} ({why})")
    metric = choose_metric(runs, args.metric)
    report = build_report(runs, split_keys(args.rows), split_keys(args.cols), metric, args.baseline)
    report.skipped.update(skipped)
    report.title = args.title
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = make_report(args)
        written = write_outputs(report, args.out, args.paths, args.cost) if args.out else []
    except (ValueError, OSError) as exc:  # UsageError, predictions a paired test cannot use, an unwritable --out
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(report)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
