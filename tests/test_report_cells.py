"""The report on constructed runs whose answers are known by hand: seed-aware tests (the audit's two cases),
Holm's correction, homogeneous cells, runs counted by content, test rows, commits, and the views."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from autoglm_bench import stats
from autoglm_bench.compare import UsageError
from autoglm_bench.report.__main__ import build_parser, make_report, parse_labels
from autoglm_bench.report.latex import render_latex
from autoglm_bench.report.views import render_csv, render_lmeval, render_markdown

from .conftest import cli_ok, run_cli
from .constructed_runs import mcnemar_by_hand, seed_runs, write_run


def report_of(*argv: str):
    return make_report(build_parser().parse_args(list(argv)))


def csv_rows(report) -> dict[tuple[str, str, str], dict]:
    return {(r["row"], r["col"], r["metric"]): r for r in csv.DictReader(io.StringIO(render_csv(report)))}


def hand_seed_example_p(a_runs, b_runs, paired: bool) -> float:
    """The seed-and-example t-test written out here: seed variance (per-seed differences when paired, else
    Welch's) plus the example variance of the per-example difference of seed-averaged correctness, with
    Welch-Satterthwaite degrees of freedom."""
    a_vals, b_vals = [r.mean() for r in a_runs], [r.mean() for r in b_runs]
    if paired:
        deltas = np.subtract(b_vals, a_vals)
        parts = [(deltas.var(ddof=1) / len(deltas), len(deltas) - 1)]
    else:
        parts = [(np.var(v, ddof=1) / len(v), len(v) - 1) for v in (a_vals, b_vals) if len(v) > 1]
    d = np.mean(b_runs, axis=0) - np.mean(a_runs, axis=0)
    parts.append((d.var(ddof=1) / len(d), len(d) - 1))
    var = sum(v for v, _ in parts)
    df = var**2 / sum(v**2 / k for v, k in parts)
    t = (np.mean(b_vals) - np.mean(a_vals)) / math.sqrt(var)
    return float(2 * scipy_stats.t.sf(abs(t), df))


def one_level_p(a_runs, b_runs) -> float:
    """What the report used to do: resample examples of the seed-averaged correctness only."""
    return stats.paired_bootstrap("acc", np.mean(a_runs, axis=0), np.mean(b_runs, axis=0))["p_value"]


def write_cells(root: Path, cells: dict[str, list[np.ndarray]], **config) -> None:
    for tag, runs in cells.items():
        for seed, correct in enumerate(runs):
            write_run(root / tag / f"seed{seed}", correct, tag=tag, seed=seed, **config)


def test_audit_case_1_noisy_seeds_small_difference_no_dagger(tmp_path):
    """SST-2-sized (872 rows), 3 paired seeds per cell, per-seed accuracies 0.70/0.70/0.70 vs 0.75/0.68/0.73:
    the one-level test said † at p = 0.036, the paired t-test over seeds p = 0.43."""
    rng = np.random.default_rng(1)
    base = np.zeros(872, bool)
    base[:610] = True
    rng.shuffle(base)
    a, b = seed_runs(base, [0.70] * 3, 0.06, rng), seed_runs(base, [0.75, 0.68, 0.73], 0.06, rng)
    assert one_level_p(a, b) == pytest.approx(0.036, abs=0.001)  # the audit's false †
    seed_level = scipy_stats.ttest_rel([r.mean() for r in b], [r.mean() for r in a]).pvalue
    assert seed_level == pytest.approx(0.426, abs=0.001)
    write_cells(tmp_path, {"base": a, "new": b})

    report = report_of(str(tmp_path), "--cols", "tag", "--baseline", "base")
    row = csv_rows(report)[("sst2", "new", "acc")]
    assert row["test"] == "seed_example_t" and row["n"] == "3"
    assert float(row["p_vs_baseline"]) == pytest.approx(hand_seed_example_p(a, b, paired=True), rel=1e-9)
    assert float(row["p_vs_baseline"]) == pytest.approx(seed_level, abs=0.02)  # its seed-level p
    assert row["significant"] == "false"
    assert "†" not in render_markdown(report).split("\n- ")[0]
    assert "seed-and-example t-test" in " ".join(render_markdown(report).splitlines())


def test_audit_case_2_cb_two_seeds_far_apart(tmp_path):
    """CB-sized (56 rows): full fine-tuning at 0.68/0.66/0.70 (seeds 0-2), LoRA seeds at 0.41 and 0.61
    (seeds 0-1, so unpaired): one-level p well under 0.05, Welch's t-test over seeds p = 0.33."""
    rng = np.random.default_rng(0)
    base = np.zeros(56, bool)
    base[:36] = True
    rng.shuffle(base)
    full, lora = seed_runs(base, [0.68, 0.66, 0.70], 0.05, rng), seed_runs(base, [0.41, 0.61], 0.05, rng)
    assert one_level_p(full, lora) < 0.05
    seed_level = scipy_stats.ttest_ind([r.mean() for r in lora], [r.mean() for r in full], equal_var=False).pvalue
    assert seed_level == pytest.approx(0.33, abs=0.005)
    write_cells(tmp_path, {"full": full, "lora": lora}, **{"task.name": "cb"})

    report = report_of(str(tmp_path), "--cols", "tag", "--baseline", "full")
    row = csv_rows(report)[("cb", "lora", "acc")]
    assert float(row["p_vs_baseline"]) == pytest.approx(hand_seed_example_p(full, lora, paired=False), rel=1e-9)
    assert float(row["p_vs_baseline"]) == pytest.approx(seed_level, abs=0.05) and row["significant"] == "false"


def test_holm_on_a_hand_computed_table(tmp_path):
    """Four one-run cells against a baseline, each with raw McNemar p < 0.05; Holm keeps only the smallest."""
    base = np.r_[np.ones(20), np.zeros(20)]
    discordant = {"c1": (0, 8), "c2": (1, 9), "c3": (2, 10), "c4": (3, 12)}  # (a_only, b_only)
    cells = {"base": [base]}
    for tag, (a_only, b_only) in discordant.items():
        run = base.copy()
        run[:a_only] = 0  # right in the baseline, wrong here
        run[20 : 20 + b_only] = 1  # wrong in the baseline, right here
        cells[tag] = [run]
    write_cells(tmp_path, cells)
    raw = {tag: mcnemar_by_hand(*ab) for tag, ab in discordant.items()}
    assert max(raw.values()) < 0.05
    ordered = sorted(raw, key=raw.get)
    holm, running = {}, 0.0
    for i, tag in enumerate(ordered):
        running = max(running, min(1.0, (4 - i) * raw[tag]))
        holm[tag] = running
    expected = {
        "holm": holm,
        "bonferroni": {t: min(1.0, 4 * p) for t, p in raw.items()},
        "none": raw,
    }
    for correction, adjusted in expected.items():
        report = report_of(str(tmp_path), "--cols", "tag", "--baseline", "base", "--correction", correction)
        rows = csv_rows(report)
        for tag in discordant:
            row = rows[("sst2", tag, "acc")]
            assert row["test"] == "mcnemar_exact" and float(row["p_vs_baseline"]) == pytest.approx(raw[tag])
            assert float(row["p_adjusted"]) == pytest.approx(adjusted[tag])
            assert row["significant"] == str(adjusted[tag] < 0.05).lower()
    assert [t for t in discordant if holm[t] < 0.05] == ["c1"]
    table = render_markdown(report_of(str(tmp_path), "--cols", "tag", "--baseline", "base"))
    assert table.count("†") == 1 + 1  # one cell, and the note that explains the mark
    assert "Holm's correction over the 4 tests" in table


def test_a_cell_mixing_k_shot_is_refused_naming_the_key_unless_pooled(tmp_path):
    correct = np.r_[np.ones(30), np.zeros(10)]
    write_run(tmp_path / "a", correct, **{"prompt.k_shot": 0})
    write_run(tmp_path / "b", correct[::-1], seed=1, **{"prompt.k_shot": 2})
    proc = run_cli(str(tmp_path), "--cols", "model.name", module="autoglm_bench.report")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: cell (sst2, tiny_glm) mixes runs that differ in prompt.k_shot (0, 2)")
    assert "--pool prompt.k_shot" in proc.stderr

    report = report_of(str(tmp_path), "--cols", "model.name", "--pool", "prompt.k_shot")
    assert report.cells[("sst2", "tiny_glm")].n == 2
    assert "Pooled within cells on purpose (--pool): prompt.k_shot: 0, 2." in render_markdown(report)


def test_a_copied_run_directory_counts_once_and_identical_repeats_are_one_run(tmp_path):
    correct = np.r_[np.ones(30), np.zeros(10)]
    write_run(tmp_path / "runs" / "s0", correct)
    shutil.copytree(tmp_path / "runs" / "s0", tmp_path / "copy_of_s0")
    write_run(tmp_path / "runs" / "s1", correct, seed=1)  # a deterministic method: seed 1 gives the same
    report = report_of(str(tmp_path), "--cols", "model.name")
    cell = report.cells[("sst2", "tiny_glm")]
    assert (cell.n, cell.read, report.skipped["duplicate"]) == (1, 2, 1)
    s = cell.summaries["acc"]
    assert s.std == 0 and s.stderr == pytest.approx(math.sqrt(0.75 * 0.25 / 39))  # lm-eval's stderr, not ± 0
    assert "0.750 (se 0.069, n=1)" in render_markdown(report)
    assert "Runs: 1 distinct in 1 cell (2 read; identical repeats counted once); skipped 1 (1 duplicate)." in (
        render_markdown(report)
    )


def test_cells_of_one_row_on_different_test_rows_are_flagged_not_tested(tmp_path):
    write_run(tmp_path / "base", np.r_[np.ones(40), np.zeros(60)], tag="base", limit=100)
    write_run(tmp_path / "new", np.r_[np.ones(25), np.zeros(25)], tag="new", limit=50)  # the first 50 rows
    report = report_of(str(tmp_path), "--cols", "tag", "--baseline", "base", "--bold", "none")
    row = csv_rows(report)[("sst2", "new", "acc")]
    assert row["p_vs_baseline"] == "" and row["significant"] == "" and "different test rows" in row["untested"]
    table = render_markdown(report)
    assert "0.500 (se 0.071, n=1)‡" in table and "†" not in table.split("\n- ")[0]
    assert "(sst2, new) is not tested against the baseline: scored on different test rows than the baseline " in table


def test_dirty_or_mixed_commits_are_refused_unless_allowed(tmp_path):
    correct = np.r_[np.ones(30), np.zeros(10)]
    write_run(tmp_path / "a", correct, commit="abc123-dirty")
    proc = run_cli(str(tmp_path), "--cols", "model.name", module="autoglm_bench.report")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: the runs come from a tree with uncommitted changes: abc123-dirty (1 runs)")
    write_run(tmp_path / "b", correct[::-1], seed=1, commit="def456")
    proc = run_cli(str(tmp_path), "--cols", "model.name", module="autoglm_bench.report")
    assert proc.returncode == 2 and "abc123-dirty (1 runs), def456 (1 runs)" in proc.stderr
    report = report_of(str(tmp_path), "--cols", "model.name", "--allow-dirty")
    assert "_Commits: abc123-dirty (1 runs), def456 (1 runs); not one clean commit (allowed by --allow-dirty)" in (
        render_markdown(report)
    )


def test_runs_outside_a_git_checkout_are_refused_unless_allowed(tmp_path):
    write_run(tmp_path / "a", np.r_[np.ones(30), np.zeros(10)], commit="")  # env.git_commit: none recorded
    with pytest.raises(UsageError, match=r"no known commit \(not run from a git checkout\): unknown \(1 runs\)"):
        report_of(str(tmp_path), "--cols", "model.name")
    assert "_Commits: unknown (1 runs); not one clean commit" in render_markdown(
        report_of(str(tmp_path), "--cols", "model.name", "--allow-dirty")
    )


def test_header_names_the_commit_and_task_versions(tmp_path):
    write_run(tmp_path / "a", np.r_[np.ones(30), np.zeros(10)])
    report = report_of(str(tmp_path), "--cols", "model.name", "--title", "T")
    md = render_markdown(report)
    assert md.startswith("## T\n\n_Commit: c0ffee" + "0" * 34 + " (all 1 runs; clean tree)._\n")
    assert re.search(r"_Task versions \(digest of the resolved task config\): sst2 [0-9a-f]{12}\._", md)


def test_bold_is_the_best_method_of_each_row_with_ties_within_one_stderr(tmp_path):
    n = 100
    for task, accs in {"sst2": (0.80, 0.78, 0.60), "rte": (0.50, 0.70, 0.52)}.items():
        for tag, acc in zip(("a", "b", "c"), accs):
            write_run(
                tmp_path / task / tag,
                np.r_[np.ones(int(acc * n)), np.zeros(n - int(acc * n))],
                tag=tag,
                **{"task.name": task},
            )
    bold = {
        mode: {
            k
            for k, c in report_of(str(tmp_path), "--cols", "tag", "--bold", mode).cells.items()
            if c.summaries["acc"].best
        }
        for mode in ("row", "col", "none")
    }
    # sst2: a 0.80 is best and b 0.78 lies within a's stderr (0.040); rte: b 0.70 alone
    assert bold["row"] == {("sst2", "a"), ("sst2", "b"), ("rte", "b")}
    assert bold["col"] == {("sst2", "a"), ("sst2", "b"), ("sst2", "c")}
    assert bold["none"] == set()


def test_several_metrics_lmeval_view_and_a_model_by_task_matrix_with_means(tmp_path):
    for model, accs in {"m1": (0.8, 0.6), "m2": (0.7, 0.5)}.items():
        for task, acc in zip(("sst2", "rte"), accs):
            correct = np.r_[np.ones(int(acc * 50)), np.zeros(50 - int(acc * 50))]
            path = write_run(tmp_path / model / task, correct, **{"model.name": model, "task.name": task})
            result = json.loads(path.read_text())
            result["metrics"]["f1"] = stats.metric_of_outcomes(
                "f1", stats.example_outcomes("f1", result["predictions"])
            )
            path.write_text(json.dumps(result))
    report = report_of(str(tmp_path), "--rows", "model.name", "--cols", "task.name", "--metric", "acc,f1", "--mean")
    rows = csv_rows(report)
    assert float(rows[("m1", "mean", "acc")]["mean"]) == pytest.approx(0.7)
    se = [float(rows[("m1", t, "acc")]["sem"]) for t in ("rte", "sst2")]
    assert float(rows[("m1", "mean", "acc")]["sem"]) == pytest.approx(math.sqrt(se[0] ** 2 + se[1] ** 2) / 2)
    assert ("m2", "sst2", "f1") in rows
    md = render_markdown(report)
    assert "| model.name \\ task.name | rte: acc | rte: f1 | sst2: acc | sst2: f1 | mean: acc | mean: f1 |" in md
    lm = render_lmeval(report)
    assert "|model.name|task.name|Version|n-shot|Metric|Value||Stderr|Seed std|n|" in lm
    assert re.search(r"\|m1\|sst2\|[0-9a-f]{12}\|0\|acc\|0\.800\|±\|0\.057\|–\|1\|", lm)


def test_latex_has_booktabs_caption_label_human_names_and_digits_by_stderr(tmp_path):
    for tag, acc in (("full", 0.8), ("lora", 0.7)):
        for seed, shift in enumerate((0, 2, 4)):
            k = int(acc * 200) + shift
            write_run(tmp_path / tag / str(seed), np.r_[np.ones(k), np.zeros(200 - k)], tag=tag, seed=seed)
    report = report_of(str(tmp_path), "--cols", "tag", "--title", "PEFT methods")
    tex = render_latex(report, labels=parse_labels(["task.name=Task,lora=LoRA", "full=Full"]), label="tab:peft")
    for piece in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{PEFT methods}", r"\label{tab:peft}"):
        assert piece in tex
    assert "Task & Full & LoRA \\\\" in tex and "(n)" not in tex and "n=3" not in tex
    # full: seeds at 0.800, 0.810, 0.820: mean 0.810, std 0.010, and the stderr of the seed-averaged rows
    pooled = np.mean([np.r_[np.ones(k), np.zeros(200 - k)] for k in (160, 162, 164)], axis=0)
    se = statistics.stdev(pooled) / math.sqrt(200)  # 0.0274: two significant digits -> 3 decimals
    assert rf"\textbf{{0.810 $\pm$ 0.010}} {{\scriptsize (se {se:.3f})}}" in tex
    assert "n = 3 distinct runs per cell" in tex


def test_ci_prints_95_percent_intervals(tmp_path):
    write_run(tmp_path / "a", np.r_[np.ones(30), np.zeros(10)])
    report = report_of(str(tmp_path), "--cols", "model.name", "--ci")
    s = report.cells[("sst2", "tiny_glm")].summaries["acc"]
    half = scipy_stats.t.ppf(0.975, 39) * math.sqrt(0.75 * 0.25 / 39)
    assert s.ci95 == pytest.approx((0.75 - half, 0.75 + half))
    assert f"0.750 [{0.75 - half:.3f}, {0.75 + half:.3f}] (n=1)" in render_markdown(report, ci=True)


@pytest.mark.parametrize("b_only, significant", [(7, False), (8, True)])
def test_compare_interval_agrees_with_mcnemar_and_labels_runs_by_their_differences(tmp_path, b_only, significant):
    base = np.r_[np.ones(20), np.zeros(20)]
    other = base.copy()
    other[20 : 20 + b_only] = 1
    other[0] = 0  # a_only = 1: McNemar p = 0.070 with 7 b_only, 0.039 with 8
    write_run(tmp_path / "a", base, **{"trainer.max_epochs": 1}, seed=2)
    write_run(tmp_path / "b", other, **{"trainer.max_epochs": 3}, seed=2)
    proc = cli_ok(str(tmp_path / "a"), str(tmp_path / "b"), module="autoglm_bench.compare")
    p = float(re.search(r"exact McNemar .*, p = (\S+)", proc.stdout).group(1))
    lo, hi = map(float, re.search(r"95% CI \[(\S+), (\S+)\]", proc.stdout).groups())
    assert p == pytest.approx(mcnemar_by_hand(1, b_only), rel=1e-5)
    assert (p < 0.05) == significant == (lo > 0 or hi < 0)
    assert "A: " in proc.stdout and "(trainer.max_epochs=1)" in proc.stdout and "(trainer.max_epochs=3)" in proc.stdout
