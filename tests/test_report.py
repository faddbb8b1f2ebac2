"""autoglm_bench.report and autoglm_bench.compare on three real quickstart runs (seeds of tiny_glm),
checked against mean, std and McNemar p-values computed here by hand from their results.json files."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path

import pytest

from .conftest import run_cli

SEEDS = (0, 1, 2)
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Three quickstart runs differing in the tiny model's random init. The verbalizer is overridden with two
    words the tokenizer keeps whole: with the default one a random model always says "positive", and three
    runs at exactly 0.5 would leave std and McNemar untested."""
    root = tmp_path_factory.mktemp("report_runs")
    for seed in SEEDS:
        proc = run_cli(
            "+experiment=quickstart",
            f"model.seed={seed}",
            "task.choices=[terrible,wonderful]",
            f"hydra.run.dir={root}/run_{seed}",
            "logger=none",
            env=ENV,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    return root


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
    d = a_only + b_only
    return 1.0 if d == 0 else min(1.0, 2 * sum(math.comb(d, k) for k in range(min(a_only, b_only) + 1)) / 2**d)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_report_cell_is_mean_std_n_of_the_runs(runs, tmp_path):
    accs = [results(runs, s)["metrics"]["acc"] for s in SEEDS]
    mean, std = statistics.mean(accs), statistics.stdev(accs)
    prefix = tmp_path / "table"
    proc = run_cli(
        str(runs),
        "--rows",
        "task.name",
        "--cols",
        "model.name",
        "--out",
        str(prefix),
        module="autoglm_bench.report",
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr

    (row,) = read_csv(prefix.with_suffix(".csv"))
    assert (row["row"], row["col"], row["n"]) == ("toy_sentiment", "tiny_glm", "3")
    assert float(row["mean"]) == pytest.approx(mean, abs=1e-12)
    assert float(row["std"]) == pytest.approx(std, abs=1e-12)
    assert float(row["stderr"]) == pytest.approx(std / math.sqrt(3), abs=1e-12)
    assert row["p_vs_baseline"] == ""

    shown = f"{mean:.4f} ± {std:.4f} (n=3)"
    assert shown in proc.stdout
    assert shown in prefix.with_suffix(".md").read_text()
    assert "Runs: 3 completed in 1 cell; none skipped." in proc.stdout
    tex = prefix.with_suffix(".tex").read_text()
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    assert rf"{mean:.4f} $\pm$ {std:.4f}" in tex and r"tiny\_glm" in tex
    png = prefix.with_name("table_cost.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_baseline_p_values_are_mcnemar(runs, tmp_path):
    prefix = tmp_path / "seeds"
    proc = run_cli(
        str(runs),
        "--cols",
        "model.seed",
        "--baseline",
        "0",
        "--out",
        str(prefix),
        module="autoglm_bench.report",
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["col"]: r for r in read_csv(prefix.with_suffix(".csv"))}
    assert set(rows) == {"0", "1", "2"} and rows["0"]["p_vs_baseline"] == ""
    md = prefix.with_suffix(".md").read_text()
    base = results(runs, 0)
    for seed in (1, 2):
        p = hand_mcnemar(base, results(runs, seed))
        assert float(rows[str(seed)]["p_vs_baseline"]) == pytest.approx(p, rel=1e-12)
        acc = results(runs, seed)["metrics"]["acc"]
        assert (f"{acc:.4f} ± 0.0000 (n=1)†" in md) == (p < 0.05)


def test_compare_prints_the_mcnemar_p_value(runs):
    a, b = results(runs, 0), results(runs, 1)
    proc = run_cli(
        str(runs / "run_0"),
        str(runs / "run_1" / "results.json"),
        "--metric",
        "acc",
        module="autoglm_bench.compare",
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr
    printed = float(re.search(r"exact McNemar .*, p = (\S+)", proc.stdout).group(1))
    assert printed == pytest.approx(hand_mcnemar(a, b), rel=1e-5)
    assert f"paired examples: {len(a['predictions'])}" in proc.stdout
    diff = b["metrics"]["acc"] - a["metrics"]["acc"]
    assert f"B - A: {diff:+.4f}" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rows", "task.nme"], "error: unknown config key 'task.nme': 'task' has no 'nme'"),
        (["--cols", "model.seed", "--baseline", "7"], "error: --baseline '7' is not a column value"),
        (["--metric", "f1"], "error: metric 'f1' is in none of the 3 completed runs"),
    ],
)
def test_report_bad_input_is_one_line_exit_2(runs, args, message):
    proc = run_cli(str(runs), *args, module="autoglm_bench.report", env=ENV)
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
