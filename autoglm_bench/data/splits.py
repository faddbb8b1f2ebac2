"""The split protocol every method follows: train, dev and test rows, fixed by ``split_seed``.

- **test**: the rows that are reported: the task's eval split (``limit=`` keeps its first N rows). Nothing
  selects on them: not prompt search, not early stopping, not HPO, not a sweeper's objective.
- **dev**: ``dev_size`` rows drawn with ``split_seed`` from the task's train split; every selection reads
  these. A task without a train split (BoolQ, AG News and BBH in the offline data) draws its dev rows from
  the eval split instead (at most half of it), and its test rows are the rest of that split.
- **train**: the train split less the dev rows, in a ``split_seed`` order: few-shot demos
  (``prompt.fewshot_mode=fixed``) and training. ``first_n`` and ``per_doc`` demos come from the whole train
  split in file order, as lm-evaluation-harness draws them (a dev row never sees itself as a demo).

``seed`` varies sampling (demos, initialisation, data order), never which rows are dev or test: changing
``seed`` keeps the test rows; changing ``split_seed`` changes the dev rows (and, without a train split, the
test rows). :meth:`Splits.record` is what results.json stores under ``splits``.

>>> # python -m autoglm_bench task=sst2 split_seed=1 dev_size=100
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError
from .tasks import Task


@dataclass
class Splits:
    train: list[dict[str, Any]]
    dev: list[dict[str, Any]]
    test: list[dict[str, Any]]
    split_seed: int
    dev_source: str
    test_source: str
    fewshot: list[dict[str, Any]]  # the task's train split in file order (lm-eval's few-shot split)

    def view(self, task: Task, rows: list[dict[str, Any]]) -> Task:
        """``task`` with ``rows`` as the rows to render and the train part (and whole split) as demo pools."""
        return Task(cfg=task.cfg, hook=task.hook, rows={"eval": rows, "train": self.train, "fewshot": self.fewshot})

    def record(self) -> dict[str, Any]:
        """The provenance results.json keeps: seed, sources and the ids of the dev and test rows."""
        return {
            "split_seed": self.split_seed,
            "dev_source": self.dev_source,
            "test_source": self.test_source,
            "train_rows": len(self.train),
            "dev_ids": [r["_id"] for r in self.dev],
            "test_ids": [r["_id"] for r in self.test],
        }


def split_task(task: Task, split_seed: int, dev_size: int, limit: int | None = None) -> Splits:
    """Train, dev and test rows of ``task`` (loaded without a limit) as the module docstring says.

    ``limit`` caps the test rows (the first N of the eval split) and the dev rows.
    """
    rng = random.Random(split_seed)
    evals = list(task.rows["eval"])
    eval_name = task.cfg.splits["eval"]
    if "train" in task.rows:
        train = rng.sample(task.rows["train"], len(task.rows["train"]))
        dev, train = train[:dev_size], train[dev_size:]
        test = evals
        dev_source = f"{len(dev)} rows of split {task.cfg.splits['train']!r} drawn with split_seed {split_seed}"
        test_source = f"split {eval_name!r}"
    else:
        n_dev = min(dev_size, len(evals) // 2)  # a small split keeps at least half of its rows for test
        chosen = rng.sample(range(len(evals)), n_dev)
        dev, held = [evals[i] for i in chosen], set(chosen)
        test, train = [r for i, r in enumerate(evals) if i not in held], []
        capped = f", dev_size {dev_size} capped at half the split" if n_dev < dev_size else ""
        dev_source = (
            f"{len(dev)} rows of split {eval_name!r} drawn with split_seed {split_seed} (no train split{capped})"
        )
        test_source = f"split {eval_name!r} less the dev rows"
    if limit is not None:
        dev, test = dev[:limit], test[:limit]
    if not test:
        raise ConfigError(f"task {task.name!r}: no test rows left (split {eval_name!r})")
    return Splits(
        train=train,
        dev=dev,
        test=test,
        split_seed=split_seed,
        dev_source=dev_source,
        test_source=test_source,
        fewshot=list(task.rows.get("train", [])),
    )
