"""method=finetune: Lightning training of a Hugging Face model (full or PEFT) on a task, then evaluation
with the core scorer.

- :mod:`.data`: the LightningDataModule (rows -> prompts -> token ids, cached; padding, batching);
- :mod:`.module`: the LightningModule (loss on answer tokens or a classification head, optimiser);
- :mod:`.callbacks`: training statistics for results.json (loss curve, tokens/s, peak memory, MFU);
- :mod:`.training`: one fine-tuning run end to end; :mod:`.hpo`: an Optuna study of such runs with pruning;
- :func:`run`: the method (one run, a study of them, or one trial of a sweeper's study).

Everything here imports torch and Lightning, so only ``method=finetune`` loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run(run_cfg: Any, run_dir: Path) -> dict[str, Any]:
    """method=finetune: one training run, or an Optuna search of them when ``hpo.n_trials > 0``, or one
    trial of a study that ``hydra/sweeper=optuna`` drives (``hpo.trial_number`` set)."""
    from .training import finetune

    if run_cfg.hpo.n_trials > 0:
        from .hpo import run_search

        return run_search(run_cfg, run_dir)
    if run_cfg.hpo.trial_number is not None:
        from .hpo import sweeper_trial

        callback, used = sweeper_trial(run_cfg)
        return {**finetune(run_cfg, run_dir, callbacks=[callback]), "hpo_trial": used}
    return finetune(run_cfg, run_dir)
