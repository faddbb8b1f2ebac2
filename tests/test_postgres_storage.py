"""The postgres_url fixture gives a real server that Optuna's RDBStorage can share between processes."""

from __future__ import annotations

import subprocess
import sys

import optuna

from .postgres import postgres_url  # noqa: F401  (pytest fixture)

WORKER = """
import sys
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=sys.argv[1], storage=sys.argv[2])
study.optimize(lambda trial: (trial.suggest_float("x", -10, 10) - 2) ** 2, n_trials=5)
"""


def test_two_processes_share_a_postgres_study(postgres_url):  # noqa: F811
    storage = optuna.storages.RDBStorage(postgres_url)
    study = optuna.create_study(study_name="shared", storage=storage, direction="minimize")
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, "shared", postgres_url], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    for proc in workers:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"worker failed (exit {proc.returncode}):\n{out}\n{err}"

    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 10
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(10))
    assert study.best_value >= 0
