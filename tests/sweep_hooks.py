"""A task hook for sweeper tests: the shipped toy task, whose scoring misbehaves when asked to."""

from __future__ import annotations

from typing import Any

from autoglm_bench.synthetic import ToySentiment


class FlakyToy(ToySentiment):
    """``task.options.mode``: ``ok`` scores normally, ``not_a_number`` returns NaN metrics, ``crash`` raises."""

    def score(self, predictions: list[dict[str, Any]]) -> dict[str, float]:
        mode = self.cfg.options.get("mode", "ok")
        if mode == "crash":
            raise RuntimeError("scoring failed on purpose")
        metrics = super().score(predictions)
        return {k: float("nan") for k in metrics} if mode == "not_a_number" else metrics
