"""``hydra/sweeper=optuna``: a Hydra sweeper that runs an Optuna (4/5) study, one Hydra job per trial.

Registered with Hydra's ConfigStore on import (Hydra imports every module under ``hydra_plugins``).
"""
