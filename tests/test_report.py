"""autoglm_bench.report and autoglm_bench.compare on three real quickstart runs (seeds of tiny_glm),
checked against mean, std, example-level stderr, McNemar p-values and Holm's correction computed here by
hand from their results.json files. (Constructed runs with known answers: test_report_cells.py.)"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from .conftest import built_once, cli_ok, run_cli
from .constructed_runs import mcnemar_by_hand

SEEDS = (0, 1, 2)
ENV = {"OMP_NUM_THREADS": "1"}
# The runs differ in model.seed (the tiny model's init), and are made in this checkout, which may have
# uncommitted changes while someone works on it: the report is told both.
REPORT = ["--replicate", "model.seed", "--allow-dirty"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Three quickstart runs (one multirun) differing in the tiny model's random init, made once for all
    xdist workers. The verbalizer is overridden with two words the tokenizer keeps whole: with the default one
    a random model always says "positive", and three runs at exactly 0.5 would leave std and McNemar untested."""

    def build(root: Path) -> None:
        cli_ok(
            "-m",
            "+experiment=quickstart",
            f"model.seed={','.join(map(str, SEEDS))}",
            "task.choices=[terrible,wonderful]",
            f"hydra.sweep.dir={root}",
            "hydra.sweep.subdir=run_${model.seed}",
            "logger=none",
            env=ENV,
        )

    return built_once(tmp_path_factory, "report_runs", build)


def results(runs: Path, seed: int) -> dict:
    return json.loads((runs / f"run_{seed}" / "results.json").read_text())


def hand_correct(result: dict) -> dict[str, bool]:
    """Each example's acc correctness: argmax of the summed log-likelihoods equals the gold index."""
    return {
        p["id"]: max(range(len(p["scores"])), key=p["scores"].__getitem__) == p["target"] for p in result["predictions"]
    }


def hand_mcnemar(a: dict, b: dict) -> float:
    ca, cb = hand_correct(a), hand_correct(b)
    a_only = sum(ca[i] and not cb[i] for i in ca if i in cb)
    b_only = sum(cb[i] and not ca[i] for i in ca if i in cb)
    return mcnemar_by_hand(a_only, b_only)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_report_cell_is_mean_std_stderr_n_of_the_runs(runs, tmp_path):
    accs = [results(runs, s)["metrics"]["acc"] for s in SEEDS]
    mean, std = statistics.mean(accs), statistics.stdev(accs)
    correct = [hand_correct(results(runs, s)) for s in SEEDS]
    pooled = [statistics.mean(c[i] for c in correct) for i in correct[0]]  # each example, seed-averaged
    stderr = statistics.stdev(pooled) / math.sqrt(len(pooled))  # lm-eval's mean_stderr of those
    sem = math.sqrt(std**2 / 3 + stderr**2)
    prefix = tmp_path / "table"
    proc = cli_ok(
        str(runs),
        "--rows",
        "task.name",
        "--cols",
        "model.name",
        *REPORT,
        "--out",
        str(prefix),
        module="autoglm_bench.report",
        env=ENV,
    )

    (row,) = read_csv(prefix.with_suffix(".csv"))
    assert (row["row"], row["col"], row["metric"], row["n"]) == ("toy_sentiment", "tiny_glm", "acc", "3")
    assert float(row["mean"]) == pytest.approx(mean, abs=1e-12)
    assert float(row["std"]) == pytest.approx(std, abs=1e-12)
    assert float(row["stderr"]) == pytest.approx(stderr, abs=1e-12)
    assert float(row["sem"]) == pytest.approx(sem, abs=1e-12)
    assert row["p_vs_baseline"] == ""

    places = 1 - math.floor(math.log10(sem))  # two significant digits of the standard error
    shown = f"{mean:.{places}f} ± {std:.{places}f} (se {stderr:.{places}f}, n=3)"
    assert shown in proc.stdout
    assert shown in prefix.with_suffix(".md").read_text()
    assert "Runs: 3 distinct in 1 cell; none skipped." in proc.stdout
    tex = prefix.with_suffix(".tex").read_text()
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{", r"\label{tab:table}"))
    assert rf"{mean:.{places}f} $\pm$ {std:.{places}f}" in tex and r"tiny\_glm" in tex
    png = prefix.with_name("table_cost.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_baseline_p_values_are_mcnemar_with_holm(runs, tmp_path):
    prefix = tmp_path / "seeds"
    cli_ok(
        str(runs),
        "--cols",
        "model.seed",
        "--baseline",
        "0",
        "--allow-dirty",
        "--out",
        str(prefix),
        module="autoglm_bench.report",
        env=ENV,
    )
    rows = {r["col"]: r for r in read_csv(prefix.with_suffix(".csv"))}
    assert set(rows) == {"0", "1", "2"} and rows["0"]["p_vs_baseline"] == ""
    md = prefix.with_suffix(".md").read_text()
    base = results(runs, 0)
    raw = {seed: hand_mcnemar(base, results(runs, seed)) for seed in (1, 2)}
    low, high = sorted(raw, key=raw.get)
    holm = {low: min(1.0, 2 * raw[low])}
    holm[high] = max(holm[low], raw[high])
    for seed in (1, 2):
        row = rows[str(seed)]
        assert row["test"] == "mcnemar_exact" and row["correction"] == "holm"
        assert float(row["p_vs_baseline"]) == pytest.approx(raw[seed], rel=1e-12)
        assert float(row["p_adjusted"]) == pytest.approx(holm[seed], rel=1e-12)
        line = next(x for x in md.splitlines() if x.startswith("| toy_sentiment |"))
        assert line.split(" | ")[1 + seed].endswith("†") == (holm[seed] < 0.05)


def test_compare_prints_the_mcnemar_p_value(runs):
    a, b = results(runs, 0), results(runs, 1)
    proc = cli_ok(
        str(runs / "run_0"),
        str(runs / "run_1" / "results.json"),
        "--metric",
        "acc",
        module="autoglm_bench.compare",
        env=ENV,
    )
    printed = float(re.search(r"exact McNemar .*, p = (\S+)", proc.stdout).group(1))
    assert printed == pytest.approx(hand_mcnemar(a, b), rel=1e-5)
    assert f"paired examples: {len(a['predictions'])}" in proc.stdout
    diff = b["metrics"]["acc"] - a["metrics"]["acc"]
    assert f"B - A: {diff:+.4f}" in proc.stdout
    assert "(model.seed=0)" in proc.stdout and "(model.seed=1)" in proc.stdout  # what differs between the runs


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rows", "task.nme"], "error: unknown config key 'task.nme': 'task' has no 'nme'"),
        (["--cols", "model.seed", "--baseline", "7"], "error: --baseline '7' is not a column value"),
        (["--metric", "f1"], "error: metric 'f1' is in none of the 3 completed runs"),
        (["--labels", "task.name"], "error: --labels 'task.name' is not KEY=Name"),
        (["--pool", "prompt.k_shots"], "error: --pool key 'prompt.k_shots' is in no run's config"),
    ],
)
def test_report_bad_input_is_one_line_exit_2(runs, args, message):
    proc = run_cli(str(runs), *args, *REPORT, module="autoglm_bench.report", env=ENV)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    if "config key" in message:
        assert "top-level config keys: backend, data_dir, dev_size," in proc.stderr


def test_compare_bad_input_is_one_line_exit_2(runs, tmp_path):
    missing = run_cli(str(runs / "run_0"), str(tmp_path / "nope"), module="autoglm_bench.compare", env=ENV)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no such file:")
    metric = run_cli(
        str(runs / "run_0"), str(runs / "run_1"), "--metric", "f1", module="autoglm_bench.compare", env=ENV
    )
    assert metric.returncode == 2 and metric.stderr.count("\n") == 1
    assert metric.stderr.startswith("error: metric 'f1' is not in both runs")
    assert "allowed: acc, acc_norm" in metric.stderr
