"""The resume policy of :mod:`autoglm_bench.studies`, in process on a real SQLite study."""

from __future__ import annotations

import time

import optuna

from autoglm_bench.studies import Outcome, open_study, run_trials


def test_a_trial_whose_process_died_before_its_first_heartbeat_is_retried(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = {"x": optuna.distributions.IntDistribution(0, 1000)}
    study = open_study(url, "s", ["maximize"], heartbeat_s=1)
    orphan = study.ask(space)  # RUNNING, and its process "dies" here: no heartbeat is ever recorded
    time.sleep(2.2)  # past the grace period (2 x heartbeat_s)

    seen = []

    def run_batch(batch):
        seen.extend(t.params["x"] for t in batch)
        return [Outcome(values=float(t.params["x"])) for t in batch]

    again = open_study(url, "s", ["maximize"], heartbeat_s=1)
    ran = run_trials(again, 2, run_batch, space=space, wait_s=0.2)
    trials = again.get_trials()
    assert trials[orphan.number].state.name == "FAIL"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].params == orphan.params and retry[0].state.name == "COMPLETE"
    assert ran == 2 and sum(t.state.name == "COMPLETE" for t in trials) == 2
    assert orphan.params["x"] in seen
