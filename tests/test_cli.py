"""The command line as a user meets it: quickstart, --help, --cfg job, real tasks, loggers."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from autoglm_bench.results import RESULT_FIELDS

from .conftest import cli_ok, read_results, run_cli, run_ok


def test_quickstart_writes_a_complete_result(tmp_path):
    run_dir = tmp_path / "run"
    proc = cli_ok("+experiment=quickstart", f"hydra.run.dir={run_dir}", f"method.cache_path={tmp_path / 'c.sqlite'}")
    assert "acc=" in proc.stdout and f"run dir: {run_dir}" in proc.stdout
    result = read_results(run_dir)
    assert set(RESULT_FIELDS) <= set(result)
    assert result["schema"] == 1 and result["status"] == "completed"
    assert result["task"] == "toy_sentiment" and result["model"] == "tiny_glm" and result["method"] == "evaluate"
    cost = result["cost"]  # a fresh cache: only rows repeating an earlier row's prompt are not scored
    assert len(result["predictions"]) == 200 == cost["examples_requested"]
    assert cost["examples_scored"] + cost["cache_hits"] == 200
    assert cost["examples_scored"] == len({(p["scores"][0], p["scores"][1]) for p in result["predictions"]}) > 100
    assert {"id", "prediction", "target", "scores"} <= set(result["predictions"][0])
    acc = sum(p["prediction"] == p["target"] for p in result["predictions"]) / 200
    assert result["metrics"]["acc"] == pytest.approx(acc)  # the metric is what the predictions say
    assert result["config"]["model"]["tiny"]["hidden_size"] == 64  # the resolved config
    assert result["config"]["task"]["generation"]["max_new_tokens"] == 64  # settings naming tokens are kept
    assert result["config"]["peft"]["num_virtual_tokens"] == 16
    assert result["timings"]["eval_s"] > 0 and result["timings"]["tokens_per_s"] > 0
    assert result["cost"]["tokens_processed"] > 0
    assert {"python", "torch", "transformers", "device", "git_commit"} <= set(result["env"])
    assert (run_dir / "metrics.csv").read_text().startswith("task,model,method,seed,acc,acc_norm")
    assert not list(run_dir.glob(".results.json*"))  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((run_dir / "results.json").stat().st_mode) == 0o666 & ~umask  # like the other files


def test_the_run_log_file_gets_the_run_lines_and_the_terminal_only_the_results(tmp_path):
    run_dir = tmp_path / "run"
    proc = cli_ok("+experiment=quickstart", "limit=10", f"hydra.run.dir={run_dir}")
    metrics_line = "toy_sentiment | tiny_glm | evaluate | test n=10 | scored "
    terminal = proc.stdout.splitlines()
    assert len(terminal) == 2 and terminal[0].startswith(metrics_line) and terminal[1] == f"run dir: {run_dir}"
    log = (run_dir / "toy_sentiment.log").read_text().splitlines()  # Hydra's job log file, named for the task
    stamp = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\]\[autoglm_bench[.\w]*\]\[[A-Z]+\] - "  # time, logger, level
    assert all(re.match(stamp, line) for line in log), log
    messages = [ln.split("] - ", 1)[1] for ln in log]
    assert messages[0].startswith("config: task=toy_sentiment model=tiny_glm") and "limit=10" in messages[0]
    assert any(m.startswith("evaluate: finished in") and "results.json" in m for m in messages)
    assert messages[-2:] == terminal  # the final metrics line and the run dir

    failed = run_cli("limit=-5", f"hydra.run.dir={tmp_path / 'bad'}")  # an error: one line on stderr, and logged
    assert failed.returncode == 2 and failed.stderr.strip().splitlines() == [
        "error: limit must be a positive number of examples (or null for all), got -5"
    ]
    assert "[ERROR] - limit must be a positive number" in (tmp_path / "bad" / "toy_sentiment.log").read_text()


def test_cfg_job_and_help_do_not_import_torch(tmp_path):
    import subprocess
    import sys

    from .conftest import REPO

    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "autoglm_bench", "--cfg", "job", "task=sst2", "prompt.k_shot=3"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "k_shot: 3" in proc.stdout and "name: sst2" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and "omegaconf" in imported  # the probe does see imports
    assert not {m for m in imported if m.split(".")[0] in ("torch", "transformers", "datasets")}

    helped = cli_ok("--help")
    for group in ("task:", "model:", "prompt:", "method:", "search:", "trainer:", "logger:", "experiment:"):
        assert group in helped.stdout.replace("task/", "task:")
    for option in ("sst2", "gsm8k", "bbh_navigate", "tiny_glm", "glm4_9b", "quickstart", "wandb"):
        assert option in helped.stdout
    assert "_bbh" not in helped.stdout  # a base file that BBH tasks extend, not a task
    assert "task: ag_news, bbh_boolean_expressions," in helped.stdout


def test_sst2_full_validation_split(tmp_path, data_dir):
    run_dir = tmp_path / "sst2"
    result = run_ok(run_dir, "+experiment=sst2_zeroshot", f"data_dir={data_dir}")
    assert len(result["predictions"]) == 872
    assert len({p["id"] for p in result["predictions"]}) == 872
    assert result["predictions"][0]["choices"] == ["negative", "positive"]


def test_few_shot_chat_prompt_through_the_cli(tmp_path, data_dir):
    run_dir = tmp_path / "rte"
    result = run_ok(
        run_dir,
        "task=rte",
        "prompt=chat",
        "prompt.k_shot=2",
        f"data_dir={data_dir}",
        "limit=5",
        "prompt.instruction=Decide.",
    )
    prompt = result["prompt_example"]
    assert prompt.startswith("[gMASK]<sop><|system|>") and prompt.endswith("<|assistant|>\n")
    assert prompt.count("<|user|>") == 3 and "Decide." in prompt
    assert len(result["predictions"]) == 5


def test_wandb_offline_logs_without_secrets(tmp_path):
    run_dir = tmp_path / "wb"
    secret = "hf_SuperSecretToken123"
    cli_ok(
        "+experiment=quickstart",
        "logger=wandb",
        "limit=10",
        f"hydra.run.dir={run_dir}",
        env={"HF_TOKEN": secret, "WANDB_API_KEY": "wandbsecret" * 4},
    )
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and b"wandbsecret" not in data, path


def test_multirun_over_seeds(tmp_path):
    cli_ok("-m", "+experiment=quickstart", "limit=8", "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/results.json"))]
    assert [r["seed"] for r in results] == [0, 1]


def test_a_failed_job_does_not_stop_the_sweep(tmp_path):
    proc = run_cli(
        "-m",
        "task=sst2,toy_sentiment",
        f"data_dir={tmp_path / 'nodata'}",
        "limit=4",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data file not found")
    assert not list((tmp_path / "sweep").glob("0_*/results.json"))  # the bad job wrote nothing
    assert read_results(next((tmp_path / "sweep").glob("1_*")))["status"] == "completed"  # the next one ran
