"""The table's tests: each cell against the baseline cell of its row, paired over the test examples both
scored, then corrected for the number of tests in the table (Holm by default).

- both cells hold one distinct run: the exact McNemar test (``acc``, ``acc_norm``, ``exact_match``) or a
  paired bootstrap (``f1``) -- :mod:`autoglm_bench.stats`;
- otherwise the seed-and-example t-test (:func:`autoglm_bench.seed_stats.seed_example_test`), whose unit
  is the seed and the example together.

Cells scored on different test rows than their baseline are not tested; the report says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import seed_stats, stats
from ..compare import UsageError
from .cells import Cell, Report

TEST_TITLES = {
    "mcnemar_exact": "exact McNemar",
    "paired_bootstrap": "paired bootstrap",
    seed_stats.TEST_NAME: seed_stats.TEST_TITLE,
}


def aligned(cell: Cell, metric: str, ids: list[str]) -> list[np.ndarray]:
    """The cell's outcome rows of each run, reordered to the example ids ``ids``."""
    index = {i: k for k, i in enumerate(cell.ids)}
    order = np.array([index[i] for i in ids], dtype=int)
    return [o[order] for o in cell.outcomes[metric]]


def why_untested(base: Cell, cell: Cell) -> str | None:
    """Why two cells cannot be paired over examples (different test rows or gold answers), or None."""
    if set(base.ids) != set(cell.ids):
        shared = len(set(base.ids) & set(cell.ids))
        return (
            f"scored on different test rows than the baseline ({len(cell.ids)} vs {len(base.ids)} rows, "
            f"{shared} shared)"
        )
    gold = {p["id"]: p.get("target") for p in base.runs[0].result.get("predictions", [])}
    if any(gold.get(p["id"]) != p.get("target") for p in cell.runs[0].result.get("predictions", [])):
        return "its gold answers differ from the baseline's on the same example ids"
    return None


def test_cells(base: Cell, cell: Cell, metric: str) -> dict[str, Any]:
    """The test of ``cell`` against ``base`` on ``metric`` (see the module docstring): a dict with at
    least ``test`` and ``p_value``."""
    a_runs, b_runs = base.outcomes[metric], aligned(cell, metric, base.ids)
    if base.n == 1 and cell.n == 1:
        if metric in stats.PER_EXAMPLE_METRICS:
            return {"test": "mcnemar_exact", **stats.mcnemar_exact(a_runs[0], b_runs[0])}
        return {"test": "paired_bootstrap", **stats.paired_bootstrap(metric, a_runs[0], b_runs[0])}
    return seed_stats.seed_example_test(metric, a_runs, b_runs, base.labels, cell.labels)


def add_baseline_tests(report: Report) -> None:
    """Test every cell against the baseline column of its row, for each metric, then adjust the p-values
    of all those tests together with ``report.correction``."""
    if report.baseline not in report.cols:
        raise UsageError(
            f"--baseline {report.baseline!r} is not a column value of {','.join(report.col_keys)}; "
            f"columns: {', '.join(report.cols)}"
        )
    for metric in report.metrics:
        if metric not in stats.METRICS:
            raise UsageError(
                f"--baseline needs metrics computable per example ({', '.join(stats.METRICS)}), not {metric!r}"
            )
    family = []
    for metric in report.metrics:
        for (row, col), cell in sorted(report.cells.items()):
            base = report.cells.get((row, report.baseline))
            if base is None or col == report.baseline:
                continue
            summary = cell.summaries[metric]
            why = why_untested(base, cell)
            if why is None and metric not in cell.outcomes:
                why = "its runs carry no predictions"
            if why is not None:
                summary.untested = why
                warning = f"({row}, {col}) is not tested against the baseline: {why}."
                if warning not in report.warnings:
                    report.warnings.append(warning)
                continue
            result = test_cells(base, cell, metric)
            summary.test, summary.p = result["test"], float(result["p_value"])
            family.append(summary)
    for summary, adjusted in zip(family, stats.adjust_p_values([s.p for s in family], report.correction)):
        summary.p_adjusted = adjusted
    report.n_tests = len(family)


def tests_used(report: Report) -> list[str]:
    """The names of the tests the table used, in a fixed order."""
    used = {s.test for c in report.cells.values() for s in c.summaries.values() if s.test}
    return [TEST_TITLES[t] for t in TEST_TITLES if t in used]
