"""Hyperparameter search around method=finetune: a real Optuna study of real training runs, with bad
trials pruned after a dev validation through optuna-integration's PyTorchLightningPruningCallback."""

from __future__ import annotations

import optuna

from .conftest import run_ok


def test_eight_trial_search_with_pruning(tmp_path):
    result = run_ok(
        tmp_path, "+experiment=toy_tiny_glm_finetune_hpo", "logger=none", timeout=900, env={"OMP_NUM_THREADS": "1"}
    )
    hpo = result["hpo"]
    study = optuna.load_study(study_name=hpo["study_name"], storage=f"sqlite:///{tmp_path / 'study.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 8
    assert optuna.trial.TrialState.PRUNED in states, [(t.state.name, t.intermediate_values) for t in study.trials]
    assert optuna.trial.TrialState.COMPLETE in states
    for trial in study.trials:  # every trial reported its dev accuracy after a validation epoch
        assert trial.intermediate_values
    assert hpo["best_value"] == study.best_value and hpo["best_params"] == study.best_params
    assert {t["state"] for t in hpo["trials"]} == {t.state.name for t in study.trials}
    assert result["status"] == "completed" and 0.0 <= result["metrics"]["acc"] <= 1.0
