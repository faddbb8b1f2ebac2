"""Compare two runs on the examples both scored: ``python -m autoglm_bench.compare RUN_A RUN_B``.

Examples are paired by ``id``. ``acc``, ``acc_norm`` and ``exact_match`` are tested with the exact
McNemar test and their difference B - A gets the exact interval that agrees with it
(:func:`autoglm_bench.stats.mcnemar_ci`); ``f1`` (corpus-level) gets a paired bootstrap, whose p-value
and percentile interval come from the same resamples. Each run is labelled by the config keys in which
the two differ. :func:`compare_runs` is the library entry point.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import stats
from .results import flatten_config


class UsageError(ValueError):
    """Input the command cannot use; the CLI prints it as one ``error: ...`` line and exits with 2."""


def load_run(path: str | Path) -> dict[str, Any]:
    """The results.json of a run directory, or of a results.json path, as a dict."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        where = f"{path} holds no results.json" if path.is_dir() else f"no such file: {path}"
        raise UsageError(f"{where} (give a run directory or its results.json)")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{file} is not valid JSON ({exc})") from exc


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The config keys (dotted leaves) whose values differ between runs A and B, with (A's, B's) value;
    a key only one run has shows ``<unset>`` for the other.

    >>> config_differences({"config": {"seed": 2, "trainer": {"max_epochs": 1}}},
    ...                    {"config": {"seed": 2, "trainer": {"max_epochs": 3}}})
    {'trainer.max_epochs': (1, 3)}
    """
    fa, fb = flatten_config(a.get("config", {})), flatten_config(b.get("config", {}))
    return {
        k: (fa.get(k, "<unset>"), fb.get(k, "<unset>"))
        for k in sorted(set(fa) | set(fb))
        if fa.get(k, "<unset>") != fb.get(k, "<unset>")
    }


def difference_labels(a: dict[str, Any], b: dict[str, Any], limit: int = 6) -> tuple[str, str]:
    """Each run's values of the keys in which the two differ: ``optim.lr=0.0001, seed=2``."""
    differ = config_differences(a, b)
    if not differ:
        return ("same config", "same config")
    keys = list(differ)[:limit]
    more = f", and {len(differ) - limit} more keys" if len(differ) > limit else ""
    return tuple(", ".join(f"{k}={differ[k][side]}" for k in keys) + more for side in (0, 1))  # type: ignore[return-value]


def require_completed(run: dict[str, Any], label: str) -> None:
    """Raise :class:`UsageError` unless the run's status is ``completed``."""
    status = run.get("status")
    if status != "completed":
        raise UsageError(f"run {label} has status {status!r}; only completed runs can be compared")


def comparable_metrics(run: dict[str, Any]) -> list[str]:
    """The run's metrics that can be recomputed from its predictions (in the run's order)."""
    return [m for m in run.get("metrics", {}) if m in stats.METRICS]


def examples_by_id(run: dict[str, Any], label: str) -> dict[str, dict[str, Any]]:
    """The run's predictions keyed by example id; duplicate ids are an error (pairing would be ambiguous)."""
    out: dict[str, dict[str, Any]] = {}
    for p in run.get("predictions", []):
        if p["id"] in out:
            raise UsageError(f"run {label} has example id {p['id']!r} twice; examples are paired by id")
        out[p["id"]] = p
    return out


def paired_predictions(a: dict[str, Any], b: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """The predictions of the examples both runs scored, in A's order, after checking the gold answers agree."""
    by_a, by_b = examples_by_id(a, "A"), examples_by_id(b, "B")
    ids = [i for i in by_a if i in by_b]
    if not ids:
        raise UsageError(
            f"runs A ({len(by_a)} examples) and B ({len(by_b)} examples) share no example id; "
            f"compare runs of the same task and split"
        )
    differ = [i for i in ids if by_a[i]["target"] != by_b[i]["target"]]
    if differ:
        raise UsageError(
            f"runs A and B disagree on the gold answer of {len(differ)} of {len(ids)} paired "
            f"examples (e.g. id {differ[0]!r}); compare runs of the same task and split"
        )
    return [by_a[i] for i in ids], [by_b[i] for i in ids]


def check_metric_in_both(a: dict[str, Any], b: dict[str, Any], metric: str) -> None:
    """Raise :class:`UsageError` unless ``metric`` is computable per example and both runs report it."""
    if metric not in stats.METRICS:
        raise UsageError(f"metric {metric!r} cannot be compared per example; allowed: {', '.join(stats.METRICS)}")
    if metric not in a.get("metrics", {}) or metric not in b.get("metrics", {}):
        shared = [m for m in comparable_metrics(a) if m in comparable_metrics(b)]
        raise UsageError(
            f"metric {metric!r} is not in both runs (A has {', '.join(a.get('metrics', {})) or 'none'}; "
            f"B has {', '.join(b.get('metrics', {})) or 'none'}); allowed: {', '.join(shared) or 'none'}"
        )


def compare_runs(a: dict[str, Any], b: dict[str, Any], metric: str) -> dict[str, Any]:
    """Compare run B with run A (results.json dicts) on ``metric`` over the examples both scored.

    Returns ``{"metric", "test", "n_paired", "n_a", "n_b", "a", "b", "diff", "ci95", "ci_method",
    "p_value"}`` plus, for the McNemar test, ``"a_only"`` (examples only A got right) and ``"b_only"``, and
    for the bootstrap ``"bootstrap_resamples"`` and ``"bootstrap_seed"``. ``a`` and ``b`` are the metric
    on the paired examples, ``diff`` is B - A with a 95% interval ``ci95`` that agrees with the test:
    for acc, acc_norm and exact_match the exact McNemar test and its exact interval
    (:func:`stats.mcnemar_ci`); for f1 a paired bootstrap, p-value and percentile interval from the same
    resamples. Raises :class:`UsageError` for runs that cannot be paired.

    >>> run = lambda preds: {"status": "completed", "metrics": {"acc": 0.0}, "predictions": [
    ...     {"id": str(i), "target": 0, "scores": [s, 0.0], "choices": ["a", "b"]} for i, s in enumerate(preds)]}
    >>> r = compare_runs(run([-1.0] * 7), run([1.0] + [-1.0] * 6), "acc")
    >>> r["a"], r["b"], r["test"], r["b_only"], r["p_value"], r["ci95"][0] < 0 < r["ci95"][1]
    (0.0, 0.14285714285714285, 'mcnemar_exact', 1, 1.0, True)
    """
    require_completed(a, "A")
    require_completed(b, "B")
    check_metric_in_both(a, b, metric)
    preds_a, preds_b = paired_predictions(a, b)
    out_a, out_b = stats.example_outcomes(metric, preds_a), stats.example_outcomes(metric, preds_b)
    a_value, b_value = stats.metric_of_outcomes(metric, out_a), stats.metric_of_outcomes(metric, out_b)
    result: dict[str, Any] = {
        "metric": metric,
        "n_paired": len(preds_a),
        "n_a": len(a["predictions"]),
        "n_b": len(b["predictions"]),
        "a": a_value,
        "b": b_value,
        "diff": b_value - a_value,
    }
    if metric in stats.PER_EXAMPLE_METRICS:
        test = stats.mcnemar_exact(out_a, out_b)
        ci = stats.mcnemar_ci(test["a_only"], test["b_only"], test["n"])
        result.update(test="mcnemar_exact", p_value=test["p_value"], a_only=test["a_only"], b_only=test["b_only"])
        result.update(ci95=ci, ci_method="exact (Clopper-Pearson on the discordant examples; agrees with McNemar)")
    else:
        boot = stats.paired_bootstrap(metric, out_a, out_b)
        result.update(test="paired_bootstrap", p_value=boot["p_value"], ci95=boot["ci95"])
        result.update(ci_method="paired bootstrap percentile", bootstrap_resamples=boot["resamples"])
        result.update(bootstrap_seed=boot["seed"])
    return result


def format_comparison(result: dict[str, Any], labels: tuple[str, str]) -> str:
    """The comparison as the CLI prints it."""
    m = result["metric"]
    lo, hi = result["ci95"]
    if result["test"] == "mcnemar_exact":
        how = "exact, from the discordant examples: excludes 0 exactly when McNemar's p < 0.05"
        test = (
            f"test: exact McNemar (A right, B wrong: {result['a_only']}; A wrong, B right: "
            f"{result['b_only']}), p = {result['p_value']:.6g}"
        )
    else:
        how = (
            f"paired bootstrap over examples, {result['bootstrap_resamples']} resamples, seed "
            f"{result['bootstrap_seed']}"
        )
        test = f"test: paired bootstrap of {m} (the same resamples), p = {result['p_value']:.6g}"
    return "\n".join(
        [
            f"A: {labels[0]}",
            f"B: {labels[1]}",
            f"paired examples: {result['n_paired']} (A scored {result['n_a']}, B scored {result['n_b']})",
            f"{m} on the paired examples: A {result['a']:.4f}, B {result['b']:.4f}",
            f"B - A: {result['diff']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}] ({how})",
            test,
        ]
    )


def default_metric(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The first of A's metrics that B also has and that can be compared per example."""
    shared = [m for m in comparable_metrics(a) if m in comparable_metrics(b)]
    if not shared:
        raise UsageError(
            f"runs A ({', '.join(a.get('metrics', {})) or 'no metrics'}) and B "
            f"({', '.join(b.get('metrics', {})) or 'no metrics'}) share no metric among "
            f"{', '.join(stats.METRICS)}"
        )
    return shared[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m autoglm_bench.compare",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare two runs on the examples both scored (paired by example id): the metric of\n"
        "each, the difference B - A with a 95% CI, and a paired test that agrees with it (exact McNemar\n"
        "and its exact interval for acc, acc_norm and exact_match; a paired bootstrap for f1). Each run is\n"
        "labelled by the config keys in which the two differ.",
        epilog="example:\n  python -m autoglm_bench.compare outputs/run_a outputs/run_b --metric acc",
    )
    parser.add_argument("run_a", metavar="RUN_A", help="run directory or results.json (the reference)")
    parser.add_argument("run_b", metavar="RUN_B", help="run directory or results.json (compared with A)")
    parser.add_argument(
        "--metric", help=f"one of {', '.join(stats.METRICS)} that both runs report (default: A's first such metric)"
    )
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON instead of text")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        a, b = load_run(args.run_a), load_run(args.run_b)
        require_completed(a, f"A ({args.run_a})")
        require_completed(b, f"B ({args.run_b})")
        result = compare_runs(a, b, args.metric or default_metric(a, b))
    except ValueError as exc:  # UsageError, or predictions the metric cannot be computed from
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        differ = {k: list(v) for k, v in config_differences(a, b).items()}
        print(json.dumps({**result, "config_differences": differ}, indent=2, default=str))
    else:
        diff_a, diff_b = difference_labels(a, b)
        print(format_comparison(result, (f"{args.run_a}  ({diff_a})", f"{args.run_b}  ({diff_b})")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
