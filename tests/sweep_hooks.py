"""Hooks for sweeper tests: the shipped toy task, whose scoring misbehaves when asked to, and a Hydra
callback that kills the sweeper at the moment a job has finished but the study has not recorded it."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from autoglm_bench.data.synthetic import ToySentiment


class FlakyToy(ToySentiment):
    """``task.options.mode``: ``ok`` scores normally, ``not_a_number`` returns NaN metrics, ``crash`` raises."""

    def score(self, predictions: list[dict[str, Any]]) -> dict[str, float]:
        mode = self.cfg.options.get("mode", "ok")
        if mode == "crash":
            raise RuntimeError("scoring failed on purpose")
        metrics = super().score(predictions)
        return {k: float("nan") for k in metrics} if mode == "not_a_number" else metrics


class KillAfterJob(Callback):
    """A Hydra callback that SIGKILLs its own process when job ``job_num`` ends: the job has written its
    results.json and returned, the sweeper has not told the study yet. It fires once (it leaves ``flag``),
    so the same command run again finishes the sweep."""

    def __init__(self, job_num: int, flag: str) -> None:
        self.job_num, self.flag = int(job_num), Path(flag)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.job.num == self.job_num and not self.flag.exists():
            self.flag.touch()
            os.kill(os.getpid(), signal.SIGKILL)
