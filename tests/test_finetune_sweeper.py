"""``hydra/sweeper=optuna`` (hydra_plugins/autoglm_optuna_sweeper): a Hydra multirun driven by an Optuna
study, whose fine-tuning jobs report their dev metric to the shared study so the pruner stops bad ones."""

from __future__ import annotations

import json

from .conftest import cli_ok, study_of


def test_optuna_sweeper_runs_trials_as_jobs_and_prunes(tmp_path):
    cli_ok(
        "-m",
        "hydra/sweeper=optuna",
        "+experiment=toy_tiny_glm_finetune",
        "limit=160",
        "dev_size=40",
        "trainer.max_epochs=4",
        "logger=none",
        "trainer.checkpoint=false",
        "method.save_model=false",
        "optim.lr=tag(log,interval(1e-4,3e-2))",
        "hydra.sweeper.n_trials=8",
        f"hydra.sweep.dir={tmp_path}",
        env={"OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    study = study_of(tmp_path)
    states = [t.state.name for t in study.trials]
    assert len(states) == 8 and "PRUNED" in states and "COMPLETE" in states, states
    for trial in study.trials:
        # each job reported its dev accuracy per epoch from its own run, and wrote its run directory
        assert trial.intermediate_values
        result = json.loads((tmp_path / f"{trial.number}_toy_sentiment_tiny_glm" / "results.json").read_text())
        assert result["config"]["hpo"]["trial_number"] == trial.number
        if trial.state.name == "COMPLETE":
            assert result["status"] == "completed"
            assert trial.value == result["dev_metrics"]["acc"] == result["objective"]  # dev, not eval
        else:
            assert result["status"] == "pruned"
    assert study.best_value > 0.6
