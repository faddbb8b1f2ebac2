"""Uncertainty of metrics and paired tests between runs (numpy only; no torch).

- :func:`stderr_of_mean` -- lm-evaluation-harness's ``mean_stderr``, the standard error of ``acc``,
  ``acc_norm`` and ``exact_match``.
- :func:`bootstrap_ci` / :func:`bootstrap_replicates` -- a seeded percentile bootstrap over examples,
  for every metric, including the corpus-level macro-F1 (whose standard error is the bootstrap standard
  deviation, as in lm-eval).
- :func:`metric_stats` -- the ``metric_stats`` block of results.json.
- :func:`mcnemar_exact` (with :func:`mcnemar_ci`, its consistent interval) and :func:`paired_bootstrap` --
  two runs compared on the same examples.
- :func:`adjust_p_values` -- Holm or Bonferroni over the tests of one table.
- :func:`mean_std` -- mean and spread over seeds, for the report.

Statistics of several runs (seeds) together are in :mod:`autoglm_bench.seed_stats`.

A metric is computed from its per-example *outcomes* (:func:`example_outcomes`): a vector of 0/1
correctness for ``acc``, ``acc_norm`` and ``exact_match`` (the metric is its mean), or a label table for
``f1`` (column 0 the gold label, the other columns the predicted labels of one or more runs; the metric
is the mean over those runs of macro-F1). Resampling examples means resampling rows of the outcomes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from .metrics import choice_prediction, macro_f1

BOOTSTRAP_RESAMPLES = 1000
"""Resamples of every bootstrap here: 1000 leaves 25 resamples beyond each end of a 95% interval, enough
for the two digits a table shows (lm-eval's default for its bootstrapped stderrs is 100,000)."""
BOOTSTRAP_SEED = 0
"""Seed of the resampling (numpy's default_rng), so the same predictions always give the same interval."""
CI_LEVEL = 0.95
PER_EXAMPLE_METRICS = ("acc", "acc_norm", "exact_match")
CORPUS_METRICS = ("f1",)
METRICS = PER_EXAMPLE_METRICS + CORPUS_METRICS
METHOD_KEY = "_method"
_CHUNK = 100  # resamples drawn at once: bounds memory at 100 x n indices


def stderr_of_mean(values: Sequence[float] | np.ndarray) -> float:
    """Standard error of a mean, exactly lm-evaluation-harness's ``mean_stderr``::

        stderr = sqrt( sum_i (x_i - mean)^2 / (n - 1) ) / sqrt(n)

    i.e. the sample standard deviation (n - 1 in the denominator) over sqrt(n). For 0/1 correctness with
    accuracy p this is sqrt(p (1 - p) / (n - 1)). NaN when n < 2 (lm-eval divides by zero there).

    >>> round(stderr_of_mean([1, 0, 1, 1]), 4)
    0.25
    """
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float("nan")
    return float(np.std(x, ddof=1) / math.sqrt(x.size))


class MeanStd(NamedTuple):
    """A table cell's summary: mean, sample standard deviation and number of values."""

    mean: float
    std: float
    n: int


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean, sample standard deviation (n - 1; 0.0 for a single value) and count, for a table cell.

    >>> mean_std([1.0, 2.0, 3.0])
    MeanStd(mean=2.0, std=1.0, n=3)
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_std needs at least one value")
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return MeanStd(float(np.mean(x)), std, int(x.size))


# ---------------------------------------------------------------- per-example outcomes


def check_metric(metric: str) -> None:
    """Raise ValueError naming ``metric`` and the allowed names when it cannot be computed per example."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} cannot be computed from predictions; allowed: {', '.join(METRICS)}")


def _choice_index(rule: str, p: dict[str, Any]) -> int:
    if "scores" in p:
        return choice_prediction(rule, p["scores"], p["choices"])
    if rule == "acc" and isinstance(p.get("prediction"), int):
        return p["prediction"]
    raise ValueError(f"prediction {p.get('id', '?')!r} has no choice scores to compute {rule} from")


def per_example(metric: str, predictions: list[dict[str, Any]]) -> np.ndarray:
    """0/1 correctness of each example under ``acc``, ``acc_norm`` or ``exact_match``; its mean is the metric.

    >>> p = [{"target": 0, "scores": [-1.0, -2.0], "choices": ["a", "bbbb"]}]
    >>> per_example("acc", p), per_example("acc_norm", p)
    (array([1.]), array([0.]))
    """
    if metric == "exact_match":
        return np.array([float(p["prediction"] == p["target"]) for p in predictions])
    if metric == "acc" and predictions and all("correct" in p for p in predictions):  # judged by a hook (mmmu)
        return np.array([float(p["correct"]) for p in predictions])
    if metric in ("acc", "acc_norm"):
        return np.array([float(_choice_index(metric, p) == p["target"]) for p in predictions])
    check_metric(metric)
    raise ValueError(f"metric {metric!r} is corpus-level: it has no per-example value; use example_outcomes")


def example_outcomes(metric: str, predictions: list[dict[str, Any]]) -> np.ndarray:
    """What ``metric`` is a function of, one row per example: correctness ``(n,)`` for the per-example
    metrics, ``(n, 3)`` (gold label, number of labels, predicted label by ``acc``'s rule) for ``f1``."""
    check_metric(metric)
    if metric in CORPUS_METRICS:
        labels = max((len(p["choices"]) for p in predictions), default=0)
        rows = [[p["target"], labels, _choice_index("acc", p)] for p in predictions]
        return np.array(rows, dtype=int).reshape(-1, 3)
    return per_example(metric, predictions)


def metric_of_outcomes(metric: str, outcomes: np.ndarray) -> float:
    """The metric of outcome rows: their mean, or for ``f1`` the mean over prediction columns of macro-F1."""
    if len(outcomes) == 0:
        return float("nan")
    if metric in CORPUS_METRICS:
        gold, labels = outcomes[:, 0], int(outcomes[0, 1])
        return float(np.mean([macro_f1(gold, outcomes[:, j], labels) for j in range(2, outcomes.shape[1])]))
    return float(np.mean(outcomes))


def metric_on_resample(metric: str, predictions: list[dict[str, Any]], index: Sequence[int] | np.ndarray) -> float:
    """``metric`` over the examples at ``index`` (repeats allowed: one bootstrap resample).

    >>> p = [{"target": 0, "scores": [-1.0, -2.0], "choices": ["a", "b"]},
    ...      {"target": 1, "scores": [-1.0, -2.0], "choices": ["a", "b"]}]
    >>> metric_on_resample("acc", p, [0, 0, 1])
    0.6666666666666666
    """
    return metric_of_outcomes(metric, example_outcomes(metric, predictions)[np.asarray(index, dtype=int)])


def pool_runs(metric: str, outcomes_per_run: Sequence[np.ndarray]) -> np.ndarray:
    """One outcome table for several runs (seeds) on the same examples, rows aligned: per-example
    correctness averaged over the runs, or for ``f1`` the gold and label-count columns followed by every
    run's predictions.
    Either way :func:`metric_of_outcomes` of the pool is the mean of the runs' metrics, on any resample."""
    if metric in CORPUS_METRICS:
        gold = outcomes_per_run[0][:, 0]
        if any(not np.array_equal(o[:, 0], gold) for o in outcomes_per_run):
            raise ValueError("runs pooled for f1 disagree on the gold labels of their examples")
        return np.column_stack([gold, outcomes_per_run[0][:, 1], *[o[:, 2] for o in outcomes_per_run]])
    return np.mean(np.stack(outcomes_per_run), axis=0)


# ---------------------------------------------------------------- bootstrap


def _resample_indices(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of bootstrap index rows, ``resamples`` in all, the same sequence for the same seed."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _CHUNK):
        yield rng.integers(0, n, size=(min(_CHUNK, resamples - start), n))


def resample_replicates(metric: str, outcome_tables: Sequence[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """Metric of each table on the same resamples of rows: shape (len(outcome_tables), resamples)."""
    n = len(outcome_tables[0])
    out = []
    for idx in _resample_indices(n, resamples, seed):
        if metric in CORPUS_METRICS:
            out.append([[metric_of_outcomes(metric, t[row]) for row in idx] for t in outcome_tables])
        else:
            out.append([t[idx].mean(axis=1) for t in outcome_tables])
    return np.concatenate([np.asarray(chunk, dtype=float) for chunk in out], axis=1)


def bootstrap_replicates(
    metric: str, outcomes: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> np.ndarray:
    """The metric on ``resamples`` seeded resamples (with replacement, same size) of the outcome rows."""
    if len(outcomes) == 0:
        return np.full(resamples, np.nan)
    return resample_replicates(metric, [np.asarray(outcomes)], resamples, seed)[0]


def percentile_interval(replicates: np.ndarray, level: float = CI_LEVEL) -> list[float]:
    """The percentile interval [(1 - level) / 2, (1 + level) / 2] of bootstrap replicates."""
    if np.isnan(replicates).any():
        return [float("nan"), float("nan")]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(replicates, [tail, 100 - tail])
    return [float(lo), float(hi)]


def bootstrap_ci(
    metric: str,
    predictions: list[dict[str, Any]],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CI_LEVEL,
) -> list[float]:
    """Seeded percentile bootstrap confidence interval ``[lo, hi]`` of ``metric`` over examples.

    Examples are resampled with replacement ``resamples`` times (numpy ``default_rng(seed)``); the
    interval is the (1 - level)/2 and (1 + level)/2 percentiles of the metric over the resamples. For
    ``f1`` the (gold, predicted) pairs are resampled and macro-F1 recomputed on each resample.

    >>> p = [{"target": i % 2, "scores": [0.0, -1.0], "choices": ["a", "b"]} for i in range(10)]
    >>> lo, hi = bootstrap_ci("acc", p)
    >>> lo < 0.5 < hi
    True
    """
    return percentile_interval(
        bootstrap_replicates(metric, example_outcomes(metric, predictions), resamples=resamples, seed=seed), level
    )


def metric_stats(
    metric_names: Sequence[str], predictions: list[dict[str, Any]], seed: int = BOOTSTRAP_SEED
) -> dict[str, dict[str, Any]]:
    """Standard error and 95% bootstrap CI of each metric, for results.json's ``metric_stats``.

    Shape (one entry per metric name, plus ``"_method"`` saying how the numbers were made)::

        {"acc": {"value": 0.505, "stderr": 0.0354, "ci95": [0.435, 0.575], "n": 200},
         "f1":  {"value": 0.49, "stderr": 0.0361, "ci95": [0.42, 0.56], "n": 200},
         "_method": {"stderr": "lm-eval mean_stderr: sample std (n-1) / sqrt(n); f1: sample std of
                                the bootstrap replicates (lm-eval bootstrap_stderr)",
                     "ci": "percentile", "ci_level": 0.95, "bootstrap_resamples": 1000,
                     "bootstrap_seed": 0, "resampling_unit": "example"}}

    ``value`` is the metric on the predictions (equal to results.json's ``metrics``), ``n`` the number of
    examples. ``acc``, ``acc_norm`` and ``exact_match`` get :func:`stderr_of_mean` of the per-example
    correctness; ``f1`` (macro-F1, a corpus-level metric) gets the standard deviation of its bootstrap
    replicates, as lm-eval's ``bootstrap_stderr`` does for f1. Empty predictions give NaNs and n = 0.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in metric_names:
        outcomes = example_outcomes(name, predictions)
        replicates = bootstrap_replicates(name, outcomes, seed=seed)
        if name in CORPUS_METRICS:
            stderr = float(np.std(replicates, ddof=1)) if len(outcomes) else float("nan")
        else:
            stderr = stderr_of_mean(outcomes)
        out[name] = {
            "value": metric_of_outcomes(name, outcomes),
            "stderr": stderr,
            "ci95": percentile_interval(replicates),
            "n": len(outcomes),
        }
    out[METHOD_KEY] = {
        "stderr": "lm-eval mean_stderr: sample std (n-1) / sqrt(n); f1: sample std of the bootstrap replicates "
        "(lm-eval bootstrap_stderr)",
        "ci": "percentile",
        "ci_level": CI_LEVEL,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "bootstrap_seed": seed,
        "resampling_unit": "example",
    }
    return out


# ---------------------------------------------------------------- paired tests


def mcnemar_exact(a_correct: Sequence[float] | np.ndarray, b_correct: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Exact two-sided McNemar test of two 0/1 correctness vectors over the same examples, in the same order.

    Only discordant examples count: ``a_only`` (A right, B wrong) and ``b_only`` (A wrong, B right). Under
    the null both are equally likely, so with X ~ Binomial(a_only + b_only, 1/2)::

        p = min(1, 2 * P[X <= min(a_only, b_only)])      (p = 1 when there is no discordant example)

    >>> mcnemar_exact([1, 0, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1])
    {'a_only': 1, 'b_only': 6, 'n': 7, 'p_value': 0.125}
    """
    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact needs paired vectors of one length, got {a.size} and {b.size}")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = a_only + b_only
    # P[X <= k] = sum_{i <= k} C(d, i) / 2^d summed in integers, so the only rounding is the final division.
    tail, term = 0, 1
    for i in range(min(a_only, b_only) + 1):
        tail += term
        term = term * (discordant - i) // (i + 1)
    p = min(1.0, 2 * tail / 2**discordant) if discordant else 1.0
    return {"a_only": a_only, "b_only": b_only, "n": int(a.size), "p_value": p}


def paired_bootstrap(
    metric: str,
    a_outcomes: np.ndarray,
    b_outcomes: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Difference B - A of ``metric`` between two runs on the same examples, with a paired bootstrap.

    ``a_outcomes`` and ``b_outcomes`` are :func:`example_outcomes` (or :func:`pool_runs`) rows for the same
    examples in the same order. Each resample draws one set of example indices and applies it to both, so
    the spread reflects only how the runs differ on the examples. The 95% CI is the percentile interval
    of the resampled differences; the two-sided p-value inverts it: twice the smaller share of resampled
    differences at or beyond zero on either side, counted with an add-one correction so it is never 0
    (smallest value 2 / (resamples + 1)), capped at 1.

    >>> a, b = np.zeros(50), np.r_[np.ones(20), np.zeros(30)]
    >>> r = paired_bootstrap("acc", a, b)
    >>> r["diff"], r["ci95"][0] > 0, r["p_value"] < 0.05
    (0.4, True, True)
    """
    a_outcomes, b_outcomes = np.asarray(a_outcomes), np.asarray(b_outcomes)
    if len(a_outcomes) != len(b_outcomes):
        raise ValueError(
            f"paired_bootstrap needs outcomes of the same examples, got {len(a_outcomes)} and {len(b_outcomes)} rows"
        )
    a_value, b_value = metric_of_outcomes(metric, a_outcomes), metric_of_outcomes(metric, b_outcomes)
    if len(a_outcomes) == 0:
        nan = float("nan")
        return {
            "a": nan,
            "b": nan,
            "diff": nan,
            "ci95": [nan, nan],
            "p_value": nan,
            "n": 0,
            "resamples": resamples,
            "seed": seed,
        }
    reps = resample_replicates(metric, [a_outcomes, b_outcomes], resamples, seed)
    diffs = reps[1] - reps[0]
    tail = min(np.sum(diffs <= 0), np.sum(diffs >= 0))
    p = min(1.0, 2 * (tail + 1) / (resamples + 1))
    return {
        "a": a_value,
        "b": b_value,
        "diff": b_value - a_value,
        "ci95": percentile_interval(diffs),
        "p_value": float(p),
        "n": len(a_outcomes),
        "resamples": resamples,
        "seed": seed,
    }


def clopper_pearson(k: int, n: int, level: float = CI_LEVEL) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion from ``k`` successes in ``n`` trials.

    >>> [round(x, 4) for x in clopper_pearson(1, 7)]
    [0.0036, 0.5787]
    """
    from scipy.stats import beta

    if n == 0:
        return (0.0, 1.0)
    tail = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return (lo, hi)


def mcnemar_ci(a_only: int, b_only: int, n: int, level: float = CI_LEVEL) -> list[float]:
    """The interval of the accuracy difference B - A = (b_only - a_only) / n that agrees with
    :func:`mcnemar_exact`: the exact Clopper-Pearson interval of the share pi = b_only / d of the d
    discordant examples, mapped through B - A = (d / n) (2 pi - 1). It excludes 0 exactly when the exact
    McNemar p-value is below 1 - level (both invert the same binomial tails), so a table never prints a
    significant test beside an interval that holds 0, or the other way round.

    >>> mcnemar_ci(0, 0, 10)
    [0.0, 0.0]
    >>> lo, hi = mcnemar_ci(1, 6, 12); lo < 0 < hi      # McNemar p = 0.125
    True
    """
    d = a_only + b_only
    if d == 0 or n == 0:
        return [0.0, 0.0]
    lo, hi = clopper_pearson(b_only, d, level)
    return [d / n * (2 * lo - 1), d / n * (2 * hi - 1)]


CORRECTIONS = ("holm", "bonferroni", "none")


def adjust_p_values(p_values: Sequence[float], method: str = "holm") -> list[float]:
    """p-values adjusted for the number of tests (the family: every test of one table).

    ``holm`` (Holm 1979, step-down): sort the m p-values ascending; the i-th smallest (i = 1..m) becomes
    max over j <= i of min(1, (m - j + 1) p_(j)). It controls the family-wise error rate like Bonferroni
    and rejects at least as much. ``bonferroni``: min(1, m p). ``none``: unchanged.

    >>> adjust_p_values([0.01, 0.04, 0.03, 0.02])
    [0.04, 0.06, 0.06, 0.06]
    >>> adjust_p_values([0.01, 0.04], "bonferroni")
    [0.02, 0.08]
    """
    if method not in CORRECTIONS:
        raise ValueError(f"unknown correction {method!r}; allowed: {', '.join(CORRECTIONS)}")
    p = [float(x) for x in p_values]
    m = len(p)
    if method == "none":
        return p
    if method == "bonferroni":
        return [min(1.0, m * x) for x in p]
    out, running = [0.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out
