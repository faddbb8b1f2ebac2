"""``python -m autoglm_bench.report DIR_OR_FILE... --rows task.name --cols method.name``: the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import stats
from ..compare import UsageError
from .cells import ALPHA, BOLD_MODES, Report, build_report, choose_metrics
from .latex import default_label, render_latex
from .plots import find_study_files, plot_cost, plot_histories
from .runs import find_result_files, load_runs, provenance, split_keys
from .significance import add_baseline_tests
from .views import MARK, print_report, render_csv, render_lmeval, render_markdown

COST_KEYS = ("examples_scored", "tokens_processed")
FORMATS = ("table", "lmeval")


def parse_labels(items: list[str] | None) -> dict[str, str]:
    """``["task.name=Task,lora=LoRA"]`` -> ``{"task.name": "Task", "lora": "LoRA"}``."""
    out = {}
    for item in items or []:
        for pair in item.split(","):
            key, eq, name = pair.partition("=")
            if not eq or not key.strip() or not name.strip():
                raise UsageError(f"--labels {pair!r} is not KEY=Name; e.g. --labels task.name=Task,lora=LoRA")
            out[key.strip()] = name.strip()
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m autoglm_bench.report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tabulate runs: every results.json under the given paths with status completed, grouped\n"
        "by config keys into rows x columns; a cell is the mean over its distinct runs (seeds) with their\n"
        "spread and the example-level standard error. Runs of a cell may differ only in --replicate keys.",
        epilog="examples:\n"
        "  python -m autoglm_bench.report multirun/2026-11-25/ --rows task --cols method\n"
        "  python -m autoglm_bench.report outputs/ --rows task.name --cols peft.method \\\n"
        "      --baseline full --out results/peft --title 'PEFT methods'\n"
        "  python -m autoglm_bench.report outputs/ --rows model.name --cols task.name --mean --metric acc,f1\n"
        "keys are dotted paths into the resolved config (a group such as task stands for task.name);\n"
        "several keys are comma-separated: --rows task.name,prompt.k_shot",
    )
    parser.add_argument("paths", nargs="+", metavar="DIR_OR_FILE", help="run/multirun/sweep directories or files")
    parser.add_argument("--rows", default="task.name", help="config key(s) of the rows (default: task.name)")
    parser.add_argument("--cols", default="method.name", help="config key(s) of the columns (default: method.name)")
    parser.add_argument(
        "--metric", help="metric(s) to tabulate, comma-separated, e.g. acc,f1 (default: the first run's first)"
    )
    parser.add_argument(
        "--replicate",
        default="seed",
        metavar="KEYS",
        help="config keys in which the runs of one cell may differ: its replicates (default: seed)",
    )
    parser.add_argument(
        "--pool",
        metavar="KEYS",
        help="other config keys the runs of a cell may differ in, pooled on purpose (the notes list them)",
    )
    parser.add_argument(
        "--baseline",
        metavar="COLVALUE",
        help=f"a column label as printed; other cells of its row are marked {MARK} when they differ from it "
        f"at p < {ALPHA} after --correction (paired over examples; seeds counted when a cell has several)",
    )
    parser.add_argument(
        "--correction",
        choices=stats.CORRECTIONS,
        default="holm",
        help="multiple-comparison correction over all the tests of the table (default: holm)",
    )
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="tabulate runs made at several commits or with uncommitted changes (the header lists them)",
    )
    parser.add_argument(
        "--bold",
        choices=BOLD_MODES,
        default="row",
        help="bold the best mean of each row (default), of each column, or nothing; ties within one stderr",
    )
    parser.add_argument("--ci", action="store_true", help="show 95%% intervals instead of ± std (se)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (default) or lmeval: one line per cell and metric with task version, n-shot, value ± stderr",
    )
    parser.add_argument("--mean", action="store_true", help="add a column with the mean over each row's cells")
    parser.add_argument(
        "--labels",
        action="append",
        metavar="KEY=Name",
        help="display names for config keys or values, comma-separated: --labels task.name=Task,lora=LoRA",
    )
    parser.add_argument(
        "--out",
        metavar="PREFIX",
        type=Path,
        help="write PREFIX.md, PREFIX.tex, PREFIX.csv, PREFIX_cost.png and PREFIX_history_*.png",
    )
    parser.add_argument("--title", help="title of the table (the LaTeX caption) and plots")
    parser.add_argument("--label", help="LaTeX \\label of the table (default: tab:<PREFIX name>)")
    parser.add_argument(
        "--cost",
        choices=COST_KEYS,
        default="examples_scored",
        help="x axis of the cost plot (default: examples_scored)",
    )
    return parser


def make_report(args: argparse.Namespace) -> Report:
    """Find, load, check and tabulate the runs named by parsed command-line ``args``."""
    runs, skipped = load_runs(find_result_files(args.paths))
    if not runs:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        raise UsageError(f"no completed run under {', '.join(map(str, args.paths))} ({why})")
    metrics = choose_metrics(runs, split_keys(args.metric) if args.metric else None)
    report = build_report(
        runs,
        split_keys(args.rows),
        split_keys(args.cols),
        metrics,
        replicate=split_keys(args.replicate),
        pool=split_keys(args.pool) if args.pool else None,
        bold=args.bold,
        mean=args.mean,
    )
    report.skipped.update(skipped)
    report.provenance = provenance(runs, args.allow_dirty)  # after the key checks: their errors come first
    report.title, report.correction = args.title, args.correction
    if args.baseline is not None:
        report.baseline = args.baseline
        add_baseline_tests(report)
    return report


def write_outputs(report: Report, args: argparse.Namespace, labels: dict[str, str]) -> list[Path]:
    """PREFIX.md, .tex, .csv and the plots; returns the files written."""
    prefix: Path = args.out
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = [plot_cost(report, prefix.with_name(prefix.name + "_cost.png"), args.cost)]
    written += plot_histories(report, find_study_files(args.paths), prefix)
    markdown = render_lmeval(report, labels) if args.format == "lmeval" else render_markdown(report, args.ci, labels)
    latex = render_latex(report, ci=args.ci, labels=labels, label=args.label or default_label(prefix.name))
    for suffix, text in ((".md", markdown), (".tex", latex), (".csv", render_csv(report))):
        path = prefix.with_name(prefix.name + suffix)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return [p for p in written if p is not None]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        labels = parse_labels(args.labels)
        report = make_report(args)
        written = write_outputs(report, args, labels) if args.out else []
    except (ValueError, OSError) as exc:  # UsageError, predictions a paired test cannot use, an unwritable --out
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_report(report, ci=args.ci, view=args.format, labels=labels)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
