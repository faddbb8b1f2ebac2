"""``python -m autoglm_bench.bench lmeval`` on the tiny GLM: both sides run end to end on the same rows and
the table, the ratio and the agreement line come out."""

from __future__ import annotations

import re

import pytest

from .conftest import cli_ok, run_cli


def test_lmeval_benchmark_runs_both_sides_on_the_same_rows(tmp_path, data_dir):
    pytest.importorskip("lm_eval")
    from autoglm_bench.config import ModelConfig
    from autoglm_bench.lm.tiny_glm import build_tiny_glm

    folder = build_tiny_glm(ModelConfig(name="tiny_glm", kind="tiny_glm"))
    proc = cli_ok(
        "lmeval",
        *("--model-dir", str(folder), "--data-dir", str(data_dir), "--limit", "6", "--pairs", "1", "--threads", "1"),
        module="autoglm_bench.bench",
        cwd=tmp_path,
    )
    assert re.search(r"^lmeval benchmark: task=sst2 shots=0 examples=6 .* threads=1 pairs=1", proc.stdout, re.M)
    for side in ("ours", "lm-eval"):
        wall, score, cpu = re.search(rf"^{side}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", proc.stdout, re.M).groups()
        assert float(wall) > 0 and float(cpu) > 0, proc.stdout
    assert re.search(r"end to end \d+\.\d\dx, scoring \d+\.\d\dx, CPU seconds \d+\.\d\dx", proc.stdout), proc.stdout
    same = int(re.search(r"identical predictions (\d+)/6;", proc.stdout).group(1))
    assert 0 <= same <= 6


def test_lmeval_benchmark_refuses_a_task_without_an_lm_eval_counterpart(tmp_path, data_dir):
    pytest.importorskip("lm_eval")
    from autoglm_bench.config import ModelConfig
    from autoglm_bench.lm.tiny_glm import build_tiny_glm

    folder = build_tiny_glm(ModelConfig(name="tiny_glm", kind="tiny_glm"))
    args = ("lmeval", "--model-dir", str(folder), "--data-dir", str(data_dir))
    proc = run_cli(*args, "--task", "gsm8k", module="autoglm_bench.bench")
    assert proc.returncode != 0 and "task 'gsm8k' has no lm-eval counterpart" in proc.stderr, proc.stderr
    proc = run_cli(*args, "--pairs", "0", module="autoglm_bench.bench")
    assert proc.returncode != 0 and "--pairs >= 1" in proc.stderr and "got 0" in proc.stderr
