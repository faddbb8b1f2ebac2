"""``hydra/sweeper=optuna`` over the real command: the sweep's pruner and direction reach the jobs, reruns
resume instead of adding trials, a killed sweeper loses nothing, failed jobs are recorded and the sweep goes
on, a sweeper killed between a job's results.json and the study's record of it leaves one counted result
per trial, parallel jobs share the cores, and two sweepers share one study on a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna

from autoglm_bench.config import compose, objective_of

from .conftest import cli_ok, run_cli, start_cli, study_of
from .postgres import postgres_url  # noqa: F401 - a pytest fixture

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# Fast jobs: evaluate tiny_glm on 40 dev and 40 test rows; the objective is the dev accuracy.
EVAL_JOB = ["-m", "hydra/sweeper=optuna", "+experiment=quickstart", "limit=40", "dev_size=40", "logger=none"]
# Fine-tuning jobs that report a dev accuracy after each of 2 epochs (the pruner and direction reach them).
TRAIN_JOB = [
    "-m",
    "hydra/sweeper=optuna",
    "+experiment=toy_tiny_glm_finetune",
    "limit=32",
    "dev_size=16",
    "trainer.max_epochs=2",
    "logger=none",
    "trainer.checkpoint=false",
    "method.save_model=false",
]


def results_of(sweep_dir: Path) -> dict[int, dict]:
    """Trial number -> results.json of its job directory (named by the trial number)."""
    out = {}
    for path in sweep_dir.glob("*_toy_sentiment_tiny_glm/results.json"):
        out[int(path.parent.name.split("_")[0])] = json.loads(path.read_text())
    return out


def test_objective_direction_follows_the_objective():
    assert objective_of(compose(["method=finetune", "task=gsm8k"])) == ("loss", "minimize")
    assert objective_of(compose(["method=finetune"])) == ("acc", "maximize")
    assert objective_of(compose(["task=cb"])) == ("acc", "maximize")


def test_jobs_use_the_sweeps_pruner_and_direction_and_a_rerun_adds_no_trial(tmp_path):
    args = [
        *TRAIN_JOB,
        "optim.lr=tag(log,interval(1e-4,3e-2))",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.pruner=hyperband",
        "hydra.sweeper.direction=minimize",
        f"hydra.sweep.dir={tmp_path}",
    ]
    cli_ok(*args, env=ONE_THREAD)
    study = study_of(tmp_path)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    results = results_of(tmp_path)
    assert sorted(results) == [0, 1, 2]
    for number, result in results.items():
        used = result["hpo_trial"]  # what the job itself rejoined its trial with
        assert used == {
            "study": study.study_name,
            "number": number,
            "pruner": "HyperbandPruner",
            "direction": "minimize",
        }
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/results.json")}

    cli_ok(*args, env=ONE_THREAD)  # the same command again: the study is complete
    assert len(study_of(tmp_path).trials) == 3
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/results.json")} == stamps

    cli_ok(*args[:-4], "hydra.sweeper.n_trials=4", *args[-3:], env=ONE_THREAD)  # a bigger budget
    assert len(study_of(tmp_path).trials) == 4 and sorted(results_of(tmp_path)) == [0, 1, 2, 3]


def running_trial(db: Path, n_params: int) -> int | None:
    """A trial being run: asked and given all ``n_params`` of its parameters (Optuna stores them one at a
    time, so a trial with fewer is still being sampled and its job has not started)."""
    if not db.is_file():
        return None
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            row = conn.execute(
                "SELECT number FROM trials t WHERE state = 'RUNNING' "
                "AND (SELECT COUNT(*) FROM trial_params p WHERE p.trial_id = t.trial_id) = ?",
                (n_params,),
            ).fetchone()
    except sqlite3.OperationalError:  # tables not created yet
        return None
    return row[0] if row else None


def test_sigkill_of_the_sweeper_then_the_same_command_finishes_exactly_n_trials(tmp_path):
    args = [
        *EVAL_JOB,
        "prompt.template=choice(default,question)",
        "model.seed=range(0,1000)",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.heartbeat_s=1",
        f"hydra.sweep.dir={tmp_path}",
    ]
    proc = start_cli(
        *args,
        env=ONE_THREAD,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline, killed = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:
        number = running_trial(tmp_path / "optuna.db", n_params=2)
        if number is not None and number >= 1:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = number
            break
        time.sleep(0.05)
    proc.wait()
    assert killed is not None, "the sweep ended before a second trial was running"
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/results.json")}
    dead_params = study_of(tmp_path).trials[killed].params

    time.sleep(2.5)  # past the heartbeat grace period (2 x heartbeat_s), as any real rerun would be
    cli_ok(*args, env=ONE_THREAD)
    trials = study_of(tmp_path).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    assert trials[killed].state.name == "FAIL"  # the dead trial, re-run once with the same parameters:
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].params == dead_params and retries[0].state.name == "COMPLETE"
    assert [t.params for t in complete].count(dead_params) == 1
    # finished jobs were not overwritten, and every complete trial has its own job directory
    assert all(p.stat().st_mtime_ns == m for p, m in stamps.items())
    results = results_of(tmp_path)
    for t in complete:
        assert results[t.number]["config"]["hpo"]["trial_number"] == t.number
        assert results[t.number]["objective"] == t.value


def test_sigkill_after_a_job_wrote_its_results_leaves_one_counted_result_per_trial(tmp_path):
    """The kill window: job 1 has written results.json, the sweeper dies (a real SIGKILL, from a Hydra
    callback at the job's end) before telling the study. The same command again re-runs trial 1 as a new
    trial with its parameters and marks job 1's results.json superseded: one result per trial."""
    from autoglm_bench.report.runs import find_result_files, load_runs

    sweep, flag = tmp_path / "sweep", tmp_path / "killed"
    args = [
        *EVAL_JOB,
        "model.seed=range(0,1000)",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.heartbeat_s=1",
        f"hydra.sweep.dir={sweep}",
        "+hydra.callbacks.kill._target_=tests.sweep_hooks.KillAfterJob",
        "+hydra.callbacks.kill.job_num=1",
        f"+hydra.callbacks.kill.flag={flag}",
    ]
    first = run_cli(*args, env=ONE_THREAD)
    assert first.returncode == -signal.SIGKILL and flag.exists(), first.stderr[-3000:]
    assert results_of(sweep)[1]["status"] == "completed"  # job 1 finished ...
    assert study_of(sweep).trials[1].state.name == "RUNNING"  # ... but the study never heard of it
    dead_params = study_of(sweep).trials[1].params

    time.sleep(2.5)  # past the heartbeat grace period (2 x heartbeat_s)
    cli_ok(*args, env=ONE_THREAD)
    trials = study_of(sweep).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(complete) == 3 and retry in complete and retry.params == dead_params
    results = results_of(sweep)
    assert results[1]["status"] == "superseded"
    assert results[1]["superseded"] == {
        "by_trial": retry.number,
        "study": study_of(sweep).study_name,
        "status": "completed",
    }
    counted = sorted(n for n, r in results.items() if r["status"] == "completed")
    assert counted == sorted(t.number for t in complete)
    runs, skipped = load_runs(find_result_files([sweep]))  # what the report reads
    assert sorted(r.result["config"]["hpo"]["trial_number"] for r in runs) == counted
    assert skipped == {"superseded": 1}


def test_a_raising_job_and_a_nan_job_are_failed_and_the_sweep_completes(tmp_path):
    cli_ok(
        *EVAL_JOB,
        "task.hook=tests.sweep_hooks:FlakyToy",
        "+task.options.mode=choice(ok,not_a_number,crash)",
        "hydra.sweeper.sampler=grid",
        "hydra.sweeper.n_trials=3",
        f"hydra.sweep.dir={tmp_path}",
        env=ONE_THREAD,
    )
    by_mode = {t.params["+task.options.mode"]: t for t in study_of(tmp_path).trials}
    states = {m: t.state.name for m, t in by_mode.items()}
    assert states == {"ok": "COMPLETE", "not_a_number": "FAIL", "crash": "FAIL"}
    assert "not a finite number" in by_mode["not_a_number"].system_attrs["fail_reason"]
    assert "scoring failed on purpose" in by_mode["crash"].system_attrs["fail_reason"]
    results = results_of(tmp_path)
    assert results[by_mode["crash"].number]["status"] == "failed"


def test_an_evaluate_sweep_selects_on_dev_rows_only(tmp_path):
    cli_ok(
        *EVAL_JOB,
        "prompt.template=choice(default,question)",
        "hydra.sweeper.sampler=grid",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={tmp_path}",
        env=ONE_THREAD,
    )
    study = study_of(tmp_path)
    for number, result in results_of(tmp_path).items():
        splits = result["splits"]
        dev, test = set(splits["dev_ids"]), set(splits["test_ids"])
        assert dev and test and not dev & test
        assert {p["id"] for p in result["dev_predictions"]} == dev  # the objective's rows
        assert {p["id"] for p in result["predictions"]} == test  # the reported rows
        dev_acc = sum(p["prediction"] == p["target"] for p in result["dev_predictions"]) / len(dev)
        assert study.trials[number].value == result["objective"] == result["dev_metrics"]["acc"] == dev_acc


def test_parallel_launcher_runs_two_jobs_with_one_share_of_the_cores_each(tmp_path):
    cli_ok(
        *EVAL_JOB,
        "hydra/launcher=parallel",
        "hydra.sweeper.n_jobs=2",
        "model.seed=range(0,1000)",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.n_trials=4",
        f"hydra.sweep.dir={tmp_path}",
        env={"OMP_NUM_THREADS": None},  # threads chosen from the cores, not set by the caller
    )
    assert [t.state.name for t in study_of(tmp_path).trials] == ["COMPLETE"] * 4
    results = results_of(tmp_path)
    cores = len(os.sched_getaffinity(0))
    assert sorted(results) == [0, 1, 2, 3]
    assert {r["env"]["threads"] for r in results.values()} == {max(1, cores // 2)}


def test_two_sweepers_share_one_study_on_postgresql(tmp_path, postgres_url):  # noqa: F811
    args = [
        *EVAL_JOB,
        "model.seed=range(0,1000)",
        "hydra.sweeper.sampler=random",
        "hydra.sweeper.n_trials=6",
        f"hydra.sweeper.storage={postgres_url}",
    ]
    procs = [
        start_cli(
            *args,
            f"hydra.sweep.dir={tmp_path / w}",
            env=ONE_THREAD,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in ("a", "b")
    ]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-3000:]
    (name,) = optuna.get_all_study_names(postgres_url)
    trials = optuna.load_study(study_name=name, storage=postgres_url).trials
    ran = [t for t in trials if not t.user_attrs.get("surplus")]
    assert [t.state.name for t in ran].count("COMPLETE") == 6 and len(ran) == 6
    jobs = [int(p.parent.name.split("_")[0]) for w in ("a", "b") for p in (tmp_path / w).glob("*/results.json")]
    assert sorted(jobs) == sorted(t.number for t in ran)  # each trial ran once, in one worker
