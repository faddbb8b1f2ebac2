"""Renderings of a report: numbers by significant digits, the notes and provenance header every view
shares, and the terminal (rich), Markdown, lm-eval style and CSV views. LaTeX is in :mod:`.latex`."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

from .. import stats
from .cells import ALPHA, Report, Summary, cell_facts
from .runs import short_commit
from .significance import tests_used

MARK = "†"
UNTESTED = "‡"
CORRECTION_NAMES = {"holm": "Holm's", "bonferroni": "Bonferroni's", "none": "no"}


# ---------------------------------------------------------------- numbers


def decimals(uncertainty: float, digits: int = 2) -> int:
    """Decimal places that show ``uncertainty`` with ``digits`` significant digits (4 when it is 0 or NaN).

    >>> decimals(0.0152), decimals(0.00083), decimals(0.2), decimals(0.0)
    (3, 5, 2, 4)
    """
    if not math.isfinite(uncertainty) or uncertainty <= 0:
        return 4
    return max(0, min(6, digits - 1 - math.floor(math.log10(uncertainty))))


def number(x: float, places: int) -> str:
    return f"{x:.{places}f}" if math.isfinite(x) else "nan"


def spread(x: float, places: int) -> str:
    """An uncertainty at ``places`` decimals, or at its own first significant digit when that shows 0."""
    if math.isfinite(x) and 0 < x and round(x, places) == 0:
        places = decimals(x, 1)
    return number(x, places)


@dataclass
class CellText:
    """A cell as text: ``value`` (the part bold marks), ``extra`` (stderr and n) and its ``mark``."""

    value: str
    extra: str
    mark: str
    bold: bool

    def plain(self) -> str:
        return f"{self.value} {self.extra}{self.mark}".strip()


def cell_text(s: Summary, ci: bool, mean_column: bool = False) -> CellText:
    """``0.702 ± 0.019 (se 0.016, n=3)``, ``0.720 (se 0.015, n=1)``, or with ``ci`` ``0.702 [0.66, 0.74]
    (n=3)``: the mean to the precision of its standard error (2 significant digits)."""
    places = decimals(s.sem)
    mark = MARK if s.significant else UNTESTED if s.untested else ""
    if ci:
        value = f"{number(s.mean, places)} [{number(s.ci95[0], places)}, {number(s.ci95[1], places)}]"
        return CellText(value, "" if mean_column else f"(n={s.n})", mark, s.best)
    if mean_column:
        return CellText(number(s.mean, places), f"(se {spread(s.sem, places)})", "", False)
    value = number(s.mean, places) + (f" ± {spread(s.std, places)}" if s.n > 1 else "")
    return CellText(value, f"(se {spread(s.stderr, places)}, n={s.n})", mark, s.best)


# ---------------------------------------------------------------- what every view says


def display(text: str, labels: dict[str, str]) -> str:
    """``text`` (a config key or value) under its ``--labels`` name, if it has one."""
    return labels.get(text, text)


def corner(report: Report, labels: dict[str, str]) -> str:
    rows = ", ".join(display(k, labels) for k in report.row_keys)
    return rows + " \\ " + ", ".join(display(k, labels) for k in report.col_keys)


def headings(report: Report, labels: dict[str, str]) -> list[tuple[str, str, str]]:
    """(heading, column, metric) of each table column: one per column and metric, then the means."""
    several = len(report.metrics) > 1
    out = [
        (display(col, labels) + (f": {m}" if several else ""), col, m) for col in report.cols for m in report.metrics
    ]
    if report.means is not None:
        out += [("mean" + (f": {m}" if several else ""), "", m) for m in report.metrics]
    return out


def grid(report: Report, ci: bool, labels: dict[str, str]) -> list[tuple[str, str, list[CellText | None]]]:
    """Each row, its displayed label and its cells' texts (None: no runs there), in :func:`headings` order."""
    out = []
    for row in report.rows:
        texts: list[CellText | None] = []
        for _, col, metric in headings(report, labels):
            if not col:
                s = (report.means or {}).get((row, metric))
                texts.append(None if s is None else cell_text(s, ci, mean_column=True))
                continue
            cell = report.cells.get((row, col))
            texts.append(None if cell is None else cell_text(cell.summaries[metric], ci))
        out.append((row, display(row, labels), texts))
    return out


def provenance_lines(report: Report) -> list[str]:
    """The commits and task versions of the runs, for the table's header."""
    prov = report.provenance
    if prov is None:
        return []
    if prov.clean:
        ((commit, n),) = prov.commits.items()
        lines = [f"Commit: {commit} (all {n} runs; clean tree)."]
    else:
        listed = ", ".join(f"{short_commit(c)} ({n} runs)" for c, n in prov.commits.most_common())
        lines = [f"Commits: {listed}; not one clean commit (allowed by --allow-dirty)."]
    versions = "; ".join(
        f"{task} " + ", ".join(f"{v}" + (f" ({n} runs)" if len(counts) > 1 else "") for v, n in counts.most_common())
        for task, counts in sorted(prov.task_versions.items())
    )
    lines.append(f"Task versions (digest of the resolved task config): {versions}.")
    return lines


def notes(report: Report, ci: bool = False) -> list[str]:
    """Plain-text lines that explain the table (shared by every view)."""
    metric = ", ".join(report.metrics)
    f1 = "; f1: the std of its bootstrap replicates" if "f1" in report.metrics else ""
    if ci:
        lines = [
            f"Metric: {metric}. A cell is the mean over its n distinct runs and its 95% interval mean ± "
            "t_df sqrt(s²/n + e²): s the sample standard deviation over runs (seeds), e the example-level "
            f"standard error of the seed-averaged per-example outcomes (lm-eval's mean_stderr{f1}), "
            "Welch-Satterthwaite df."
        ]
    else:
        lines = [
            f"Metric: {metric}. A cell is mean ± s (se e, n): the mean over its n distinct runs, s their sample "
            "standard deviation (n - 1; the seed spread, absent for one run), e the example-level standard "
            f"error of the seed-averaged per-example outcomes over the test rows (lm-eval's mean_stderr{f1})."
        ]
    lines.append(
        "n counts distinct runs: a run copied to another directory counts once, and runs with identical "
        "predictions (deterministic repeats, whatever their seed) count once."
    )
    if report.bold != "none":
        where = "row" if report.bold == "row" else "column"
        lines.append(
            f"Bold: the best mean in each {where}, and every cell within one standard error "
            "(sqrt(s²/n + e²)) of it, a tie."
        )
    lines.append(f"Runs of a cell differ only in {', '.join(report.replicate)} (--replicate).")
    if report.pooled:
        lines.append(
            "Pooled within cells on purpose (--pool): "
            + "; ".join(v for vs in report.pooled.values() for v in vs)
            + "."
        )
    if report.means is not None:
        lines.append(
            "mean: the average of the row's cells, (se) sqrt(sum of their squared standard errors) / number "
            "of cells; empty where a row lacks a column."
        )
    if report.baseline is not None:
        lines.append(
            f"{MARK}: differs from the baseline column {report.baseline!r} in its row at p < {ALPHA} after "
            f"{CORRECTION_NAMES[report.correction]} correction over the {report.n_tests} tests of this table "
            f"(--correction {report.correction}; raw and adjusted p in the CSV). Paired over the test rows both "
            "cells scored: when both hold one distinct run, the exact McNemar test (f1: a paired bootstrap, "
            f"{stats.BOOTSTRAP_RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED}); otherwise the "
            "seed-and-example t-test: the difference of cell means over sqrt(seed variance + example variance), "
            "the seed variance from the per-seed differences when both cells ran the same seeds (else "
            "s_A²/m + s_B²/k; a one-run cell adds none), the example variance that of the per-example "
            "differences of the seed-averaged outcomes / rows; Welch-Satterthwaite df. Tests used: "
            + (", ".join(tests_used(report)) or "none")
            + "."
        )
        if any(s.untested for c in report.cells.values() for s in c.summaries.values()):
            lines.append(f"{UNTESTED}: not tested against the baseline (why: below).")
    skipped = sum(report.skipped.values())
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(report.skipped.items()))
    read = sum(c.read for c in report.cells.values())
    repeats = f" ({read} read; identical repeats counted once)" if read != report.n_runs else ""
    cells = "1 cell" if len(report.cells) == 1 else f"{len(report.cells)} cells"
    lines.append(
        f"Runs: {report.n_runs} distinct in {cells}{repeats}; "
        + (f"skipped {skipped} ({why})." if skipped else "none skipped.")
    )
    return lines + report.warnings


# ---------------------------------------------------------------- views


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(report: Report, ci: bool = False, labels: dict[str, str] | None = None) -> str:
    """The table as GitHub Markdown: header lines, bold via ``**``, marks after the cell, notes below."""
    labels = labels or {}
    lines = [f"## {report.title}", ""] if report.title else []
    lines += [f"_{line}_" for line in provenance_lines(report)] + ([""] if report.provenance else [])
    heads = [h for h, _, _ in headings(report, labels)]
    lines += ["| " + " | ".join(map(_md, [corner(report, labels), *heads])) + " |", "|" + "---|" * (len(heads) + 1)]
    for _, row, texts in grid(report, ci, labels):
        shown = [
            "–" if t is None else (f"**{t.value}**" if t.bold else t.value) + f" {t.extra}{t.mark}".rstrip()
            for t in texts
        ]
        lines.append("| " + " | ".join(_md(x) for x in [row, *shown]) + " |")
    return "\n".join(lines + [""] + [f"- {line}" for line in notes(report, ci)]) + "\n"


def lmeval_rows(report: Report, labels: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """lm-evaluation-harness's summary layout: one line per cell and metric with the task version, n-shot,
    value, ± example-level stderr, and our seed spread and number of runs."""
    head = [
        ", ".join(display(k, labels) for k in report.row_keys),
        ", ".join(display(k, labels) for k in report.col_keys),
        "Version",
        "n-shot",
        "Metric",
        "Value",
        "",
        "Stderr",
        "Seed std",
        "n",
    ]
    lines = []
    for row in report.rows:
        for col in report.cols:
            cell = report.cells.get((row, col))
            if cell is None:
                continue
            facts = cell_facts(cell)
            for metric in report.metrics:
                s = cell.summaries[metric]
                places = decimals(s.sem)
                mark = MARK if s.significant else UNTESTED if s.untested else ""
                lines.append(
                    [
                        display(row, labels),
                        display(col, labels),
                        facts["version"],
                        facts["n_shot"],
                        metric,
                        number(s.mean, places) + mark,
                        "±",
                        spread(s.stderr, places),
                        spread(s.std, places) if s.n > 1 else "–",
                        str(s.n),
                    ]
                )
    return head, lines


def render_lmeval(report: Report, labels: dict[str, str] | None = None) -> str:
    """The lm-eval style summary as Markdown, with the header lines and notes."""
    head, lines = lmeval_rows(report, labels or {})
    out = [f"## {report.title}", ""] if report.title else []
    out += [f"_{line}_" for line in provenance_lines(report)] + ([""] if report.provenance else [])
    out += ["|" + "|".join(map(_md, head)) + "|", "|" + "|".join("---" for _ in head) + "|"]
    out += ["|" + "|".join(map(_md, line)) + "|" for line in lines]
    return "\n".join(out + [""] + [f"- {line}" for line in notes(report)]) + "\n"


CSV_FIELDS = (
    "row,col,metric,mean,std,n,runs_read,stderr,sem,ci95_lo,ci95_hi,test,p_vs_baseline,p_adjusted,correction,"
    "significant,untested,task_version,n_shot"
).split(",")


def render_csv(report: Report) -> str:
    """One line per cell and metric (and per row's mean with ``--mean``), full precision: ``stderr`` is the
    example-level standard error, ``sem`` the standard error of the mean from seeds and examples,
    ``p_adjusted`` the p-value after the table's correction."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)

    def line(row: str, col: str, metric: str, s: Summary, read: Any, facts: dict[str, Any]) -> None:
        optional = [s.test, s.p, s.p_adjusted]
        writer.writerow(
            [row, col, metric, repr(s.mean), repr(s.std), s.n, read, repr(s.stderr), repr(s.sem)]
            + [repr(s.ci95[0]), repr(s.ci95[1])]
            + ["" if x is None else (x if isinstance(x, str) else repr(x)) for x in optional]
            + [report.correction if s.p is not None else "", str(s.significant).lower() if s.p is not None else ""]
            + [s.untested or "", facts.get("version", ""), facts.get("n_shot", "")]
        )

    for row in report.rows:
        for col in report.cols:
            cell = report.cells.get((row, col))
            if cell is not None:
                for metric in report.metrics:
                    line(row, col, metric, cell.summaries[metric], cell.read, cell_facts(cell))
        for metric in report.metrics:
            s = (report.means or {}).get((row, metric))
            if s is not None:
                line(row, "mean", metric, s, "", {})
    return buf.getvalue()


def print_report(report: Report, console: Any = None, *, ci: bool = False, view: str = "table", labels=None) -> None:
    """The table (or the lm-eval style summary) on the terminal with rich, header above, notes below."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # labels are config values: Text keeps "[0,2]" from being read as markup

    labels = labels or {}
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: don't wrap cells at 80 columns
            console = Console(width=250)
    title = (
        report.title or f"{', '.join(report.metrics)} by {', '.join(report.row_keys)} x {', '.join(report.col_keys)}"
    )
    table = Table(title=Text(title))
    if view == "lmeval":
        head, lines = lmeval_rows(report, labels)
        for h in head:
            table.add_column(Text(h), no_wrap=True)
        for line in lines:
            table.add_row(*map(Text, line))
    else:
        table.add_column(Text(corner(report, labels)), no_wrap=True)
        for heading, _, _ in headings(report, labels):
            table.add_column(Text(heading), justify="right", no_wrap=True)
        for _, row, texts in grid(report, ci, labels):
            cells = [Text("–") if t is None else Text(t.plain(), style="bold" if t.bold else "") for t in texts]
            table.add_row(Text(row), *cells)
    for line in provenance_lines(report):
        console.print(line, markup=False, highlight=False)
    console.print(table)
    for line in notes(report, ci and view != "lmeval"):
        console.print(line, markup=False, highlight=False)
