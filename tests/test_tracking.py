"""Tracking tools Lightning and Optuna users expect: logger=tensorboard records the numbers logger=csv
records, and optuna-dashboard opens a run's study file (its real WSGI app on a real 127.0.0.1 server)."""

from __future__ import annotations

import csv
import json
import threading
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from autoglm_bench.config import CONF_DIR

from .conftest import read_results

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def execute_run(overrides: list[str], run_dir: Path) -> dict:
    """The CLI's own path (compose, run, results.json, loggers) in this process."""
    from hydra import compose, initialize_config_dir

    from autoglm_bench.__main__ import execute

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "threads=1"])
    run_dir.mkdir(parents=True)  # Hydra would have made it
    return execute(cfg, run_dir)


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from the TensorBoard event files in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def csv_columns(path: Path) -> dict[str, dict[int, float]]:
    """column -> {step: value} from Lightning's metrics.csv (one row per step and logging call)."""
    columns: dict[str, dict[int, float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            for name, value in row.items():
                if name != "step" and value != "":
                    columns.setdefault(name, {})[int(row["step"])] = float(value)
    return columns


def test_tensorboard_logger_records_what_the_csv_logger_records(tmp_path):
    finetune = [
        "task=toy_sentiment",
        "model=tiny_glm",
        "method=finetune",
        "peft=full",
        "optim.lr=3e-3",
        "method.batch_size=8",
        "method.save_model=false",
        "dev_size=16",
        "limit=64",
        "trainer.max_steps=6",
        "trainer.val_every_n_steps=3",
        "trainer.log_every_n_steps=1",
        "trainer.checkpoint=false",
    ]
    runs = {name: execute_run([*finetune, f"logger={name}"], tmp_path / name) for name in ("csv", "tensorboard")}
    assert runs["csv"]["training"]["loss_curve"] == runs["tensorboard"]["training"]["loss_curve"]  # same training

    steps = csv_columns(tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv")
    events = scalars(tmp_path / "tensorboard" / "tensorboard" / "train")
    assert {"train/loss", "dev/acc", "dev/acc_norm"} <= set(steps) and set(events) == set(steps)
    assert len(steps["train/loss"]) == 6 and len(steps["dev/acc"]) == 2
    for tag, by_step in steps.items():
        assert events[tag] == pytest.approx(by_step, rel=1e-6), tag

    with (tmp_path / "csv" / "metrics.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    summary = scalars(tmp_path / "tensorboard" / "tensorboard" / "summary")
    numeric = {k for k, v in row.items() if k not in ("task", "model", "method", "seed")}
    assert set(summary) == numeric and "acc" in summary and "cost/examples_scored" in summary
    for name in numeric - {k for k in numeric if k.startswith("time/")}:  # timings differ between runs
        assert summary[name] == {0: pytest.approx(float(row[name]), rel=1e-6)}, name
    assert summary["acc"][0] == pytest.approx(read_results(tmp_path / "tensorboard")["metrics"]["acc"], rel=1e-6)


def test_optuna_dashboard_opens_a_runs_study_file(tmp_path):
    """The README's `optuna-dashboard sqlite:///<run dir>/study.db`: the dashboard's app over that file
    lists the run's study and serves its trials (and logger=tensorboard has each trial's dev value)."""
    from optuna_dashboard import wsgi

    run_dir = tmp_path / "run"
    record = execute_run(
        [
            "method=prompt_search",
            "search=random",
            "search.n_trials=3",
            "search.pruner=none",
            "dev_size=16",
            "limit=8",
            "search.space.instructions=[none]",
            "search.space.k_shot=[0]",
            "logger=tensorboard",
        ],
        run_dir,
    )
    per_trial = scalars(run_dir / "tensorboard" / "trials")["trial/dev_acc"]
    assert sorted(per_trial) == [0, 1, 2] and max(per_trial.values()) == pytest.approx(
        record["search"]["best"]["values"][0]
    )
    app = wsgi(f"sqlite:///{run_dir / 'study.db'}")

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):  # no access log on stderr
            pass

    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as response:
            studies = json.load(response)["study_summaries"]
        (study,) = studies
        assert study["study_name"] == record["search"]["study_name"]
        with urllib.request.urlopen(f"{base}/api/studies/{study['study_id']}", timeout=30) as response:
            detail = json.load(response)
    finally:
        server.shutdown()
        server.server_close()
    trials = detail["trials"]
    assert len(trials) == 3 and {t["state"] for t in trials} == {"Complete"}
    best = detail["best_trials"][0]
    assert best["values"] == record["search"]["best"]["values"]
