"""Statistics of a table cell that holds several runs (seeds) scored on the same test examples.

A cell's mean is uncertain for two reasons: the test set is a sample of examples (example level), and
each run is one draw of the randomness its seed controls: demos, initialisation, data order (seed level).
Resampling only the examples of the seed-averaged outcomes (what a one-level test does) ignores the
second, and turns a small mean difference between noisy seeds into a significant one. Here both count:

- :func:`cell_summary` -- mean, seed spread, example-level standard error, and their combination;
- :func:`seed_example_test` -- the difference between two cells, tested with both sources of variance.

Variance of a cell mean (m runs, values x_1..x_m, on n examples)::

    seed part     s^2 / m                 s = sample std of the runs' values (n - 1), m - 1 degrees of freedom
    example part  se^2                    se = the standard error over examples of the seed-averaged
                                          outcomes (lm-eval's mean_stderr; for f1 the bootstrap std), n - 1 df

and the sum is referred to Student's t with Welch-Satterthwaite degrees of freedom. A cell with one
distinct run has no seed part (its repeats, if any, gave identical predictions).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CI_LEVEL,
    CORPUS_METRICS,
    bootstrap_replicates,
    metric_of_outcomes,
    pool_runs,
    resample_replicates,
    stderr_of_mean,
)

TEST_NAME = "seed_example_t"
TEST_TITLE = "seed-and-example t-test"


@dataclass
class CellSummary:
    """One metric of one cell: ``mean`` over runs, their sample ``std``, ``n`` runs, the example-level
    ``stderr`` of the seed-averaged outcomes, the standard error of the mean from both (``sem``), its
    degrees of freedom ``df`` and the t interval ``ci95``."""

    mean: float
    std: float
    n: int
    stderr: float
    sem: float
    df: float
    ci95: tuple[float, float]


def example_variance(metric: str, pooled: np.ndarray) -> float:
    """The example-level variance of the metric of pooled outcomes (:func:`stats.pool_runs`): the squared
    lm-eval standard error of the seed-averaged per-example outcomes, or for a corpus-level metric (f1) the
    variance of its bootstrap replicates. NaN with fewer than 2 examples."""
    if len(pooled) < 2:
        return float("nan")
    if metric in CORPUS_METRICS:
        return float(np.var(bootstrap_replicates(metric, pooled), ddof=1))
    return stderr_of_mean(pooled) ** 2


def satterthwaite(parts: Sequence[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance estimates, each ``(variance, df)``:
    (sum v)^2 / sum(v^2 / df). Infinite when no part carries variance.

    >>> round(satterthwaite([(1.0, 2), (1.0, 2)]), 6)
    4.0
    """
    total = sum(v for v, _ in parts)
    den = sum(v * v / df for v, df in parts if v > 0 and df > 0)
    return total * total / den if den > 0 else math.inf


def t_interval(center: float, variance: float, df: float, level: float = CI_LEVEL) -> tuple[float, float]:
    """``center`` -+ t_{df, (1 + level) / 2} sqrt(variance)."""
    from scipy.stats import t

    if math.isnan(variance):
        return (float("nan"), float("nan"))
    half = float(t.ppf((1 + level) / 2, df)) * math.sqrt(variance) if variance > 0 else 0.0
    return (center - half, center + half)


def cell_summary(metric: str, outcomes_per_run: Sequence[np.ndarray], level: float = CI_LEVEL) -> CellSummary:
    """Mean, spread and uncertainty of ``metric`` over runs that scored the same examples (rows aligned).

    >>> runs = [np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0])]
    >>> s = cell_summary("acc", runs)
    >>> s.mean, s.std, s.n, round(s.stderr, 4)
    (0.5, 0.0, 2, 0.2041)
    """
    values = np.array([metric_of_outcomes(metric, o) for o in outcomes_per_run], dtype=float)
    m = len(values)
    if m == 0:
        raise ValueError("cell_summary needs at least one run")
    std = float(np.std(values, ddof=1)) if m > 1 else 0.0
    ex_var = example_variance(metric, pool_runs(metric, outcomes_per_run))
    parts = [(std * std / m, m - 1), (0.0 if math.isnan(ex_var) else ex_var, len(outcomes_per_run[0]) - 1)]
    var = sum(v for v, _ in parts) if not math.isnan(ex_var) else float("nan")
    df = satterthwaite(parts)
    mean = float(np.mean(values))
    return CellSummary(mean, std, m, math.sqrt(ex_var), math.sqrt(var), df, t_interval(mean, var, df, level))


def paired_labels(a_labels: Sequence[Hashable] | None, b_labels: Sequence[Hashable] | None) -> bool:
    """Whether two cells ran the same seeds: at least two, each once, the same set on both sides."""
    if a_labels is None or b_labels is None or len(a_labels) < 2:
        return False
    return len(set(a_labels)) == len(a_labels) and sorted(map(repr, a_labels)) == sorted(map(repr, b_labels))


def seed_example_test(
    metric: str,
    a_runs: Sequence[np.ndarray],
    b_runs: Sequence[np.ndarray],
    a_labels: Sequence[Hashable] | None = None,
    b_labels: Sequence[Hashable] | None = None,
    level: float = CI_LEVEL,
) -> dict[str, Any]:
    """Test cell B against cell A (each a list of runs' outcome rows on the same examples, aligned) with
    both sources of variance: the seed-and-example t-test.

    diff = mean of B's run values - mean of A's. Its variance is the seed part plus the example part:

    - seeds: when both cells ran the same seeds (``a_labels`` and ``b_labels``, at least two) the runs are
      paired by seed: var(per-seed differences) / S with S - 1 df; otherwise Welch's s_A^2/m + s_B^2/k
      (m - 1 and k - 1 df; a cell with one run adds nothing);
    - examples: the variance over examples of the difference of the seed-averaged outcomes, paired by
      example: var(d_e) / n with d_e = B's mean outcome on example e - A's (n - 1 df); for f1, the
      variance of the paired bootstrap replicates of the difference.

    t = diff / sqrt(variance) against Student's t with Welch-Satterthwaite df; two-sided p; the interval
    is diff -+ t_{df} sqrt(variance), so it excludes 0 exactly when p < 1 - level. When the seed part
    dominates this is the t-test over seeds; with one run per cell it is a paired test over examples.

    >>> a = [np.r_[np.ones(60), np.zeros(40)], np.r_[np.ones(50), np.zeros(50)]]
    >>> b = [np.r_[np.ones(70), np.zeros(30)], np.r_[np.ones(52), np.zeros(48)]]
    >>> r = seed_example_test("acc", a, b, [0, 1], [0, 1])
    >>> round(r["diff"], 2), r["paired_seeds"], r["p_value"] > 0.05
    (0.06, True, True)
    """
    from scipy.stats import t as student_t

    if not a_runs or not b_runs:
        raise ValueError("seed_example_test needs at least one run in each cell")
    n = len(a_runs[0])
    if any(len(o) != n for o in [*a_runs, *b_runs]):
        raise ValueError("seed_example_test needs every run's outcomes on the same examples")
    a_vals = np.array([metric_of_outcomes(metric, o) for o in a_runs], dtype=float)
    b_vals = np.array([metric_of_outcomes(metric, o) for o in b_runs], dtype=float)
    paired = paired_labels(a_labels, b_labels)
    if paired:
        order = {repr(label): i for i, label in enumerate(b_labels)}  # type: ignore[arg-type]
        deltas = np.array([b_vals[order[repr(label)]] - a_vals[i] for i, label in enumerate(a_labels)])  # type: ignore[arg-type]
        parts = [(float(np.var(deltas, ddof=1)) / len(deltas), len(deltas) - 1)]
    else:
        parts = [(float(np.var(v, ddof=1)) / len(v), len(v) - 1) for v in (a_vals, b_vals) if len(v) > 1]
    pool_a, pool_b = pool_runs(metric, a_runs), pool_runs(metric, b_runs)
    if metric in CORPUS_METRICS:
        reps = resample_replicates(metric, [pool_a, pool_b], BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
        ex_var = float(np.var(reps[1] - reps[0], ddof=1))
    else:
        ex_var = float(np.var(pool_b - pool_a, ddof=1)) / n if n > 1 else 0.0
    parts.append((ex_var, n - 1))
    diff = float(np.mean(b_vals) - np.mean(a_vals))
    var = sum(v for v, _ in parts)
    df = satterthwaite(parts)
    if var > 0:
        stat = diff / math.sqrt(var)
        p = float(min(1.0, 2 * student_t.sf(abs(stat), df)))
    else:  # no variance anywhere: identical cells, or a difference no resampling can move
        stat, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    return {
        "test": TEST_NAME,
        "a": float(np.mean(a_vals)),
        "b": float(np.mean(b_vals)),
        "diff": diff,
        "se": math.sqrt(var),
        "df": df,
        "t": stat,
        "p_value": p,
        "ci95": list(t_interval(diff, var, df, level)),
        "paired_seeds": paired,
        "n_a": len(a_runs),
        "n_b": len(b_runs),
        "n": n,
        "seed_var": sum(v for v, _ in parts[:-1]),
        "example_var": ex_var,
    }
