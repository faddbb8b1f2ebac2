"""results.json files built from chosen per-example correctness, for report tests whose answers are known
before the report runs (the p-values, counts and refusals are computed here by hand)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

CLEAN = "c0ffee" + "0" * 34  # a 40-hex commit


def base_config(**overrides: Any) -> dict[str, Any]:
    """A resolved config as results.json stores it (the keys the report reads, and a few it must compare)."""
    config: dict[str, Any] = {
        "task": {"name": "sst2", "choices": ["negative", "positive"], "metrics": ["acc", "f1"]},
        "model": {"name": "tiny_glm", "seed": 0},
        "method": {"name": "evaluate"},
        "prompt": {"template": "default", "k_shot": 0},
        "seed": 0,
        "split_seed": 0,
        "dev_size": 100,
        "limit": None,
        "tag": None,
    }
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def predictions(correct: np.ndarray | list, n_choices: int = 2, ids: list[str] | None = None) -> list[dict]:
    """One prediction per example: gold ``i % n_choices``; the prediction is gold where ``correct``, else the
    next label; scores put 0 on the prediction and -1 elsewhere (so ``acc`` recomputes the same)."""
    out = []
    for i, ok in enumerate(np.asarray(correct, dtype=bool)):
        target = i % n_choices
        pred = target if ok else (target + 1) % n_choices
        out.append(
            {
                "id": ids[i] if ids else f"validation-{i}",
                "target": target,
                "prediction": pred,
                "choices": [f"c{j}" for j in range(n_choices)],
                "scores": [0.0 if j == pred else -1.0 for j in range(n_choices)],
            }
        )
    return out


def write_run(
    folder: Path,
    correct: np.ndarray | list,
    *,
    commit: str = CLEAN,
    n_choices: int = 2,
    ids: list[str] | None = None,
    **config: Any,
) -> Path:
    """``folder/results.json`` of a completed run with this per-example correctness and config overrides."""
    cfg = base_config(**config)
    preds = predictions(correct, n_choices, ids)
    result = {
        "schema": 1,
        "task": cfg["task"]["name"],
        "model": cfg["model"]["name"],
        "method": cfg["method"]["name"],
        "status": "completed",
        "seed": cfg["seed"],
        "config": copy.deepcopy(cfg),
        "metrics": {"acc": float(np.mean(np.asarray(correct, dtype=float)))},
        "predictions": preds,
        "timings": {},
        "cost": {"examples_scored": len(preds)},
        "env": {"git_commit": commit, "git_dirty": commit.endswith("-dirty")},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    path.write_text(json.dumps(result), encoding="utf-8")
    return path


def seed_runs(base: np.ndarray, accs: list[float], noise: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Runs around ``base`` correctness: each flips ``noise`` of the examples each way (seed-to-seed churn),
    then just enough more to reach exactly its accuracy in ``accs``."""
    out = []
    n = len(base)
    for acc in accs:
        r = base.copy()
        m = int(noise * n)
        right, wrong = np.flatnonzero(r), np.flatnonzero(~r)
        r[rng.choice(right, m, replace=False)] = False
        r[rng.choice(wrong, m, replace=False)] = True
        k = int(round(acc * n)) - int(r.sum())
        pick = rng.choice(np.flatnonzero(~r if k > 0 else r), abs(k), replace=False)
        r[pick] = ~r[pick]
        out.append(r.astype(float))
    return out


def mcnemar_by_hand(a_only: int, b_only: int) -> float:
    """The exact two-sided McNemar p-value from the discordant counts, written out from its definition."""
    d = a_only + b_only
    return min(1.0, 2 * sum(math.comb(d, k) for k in range(min(a_only, b_only) + 1)) / 2**d)
