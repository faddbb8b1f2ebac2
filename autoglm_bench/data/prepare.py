"""The first step of every method, of serve and of the benchmarks: load the task, split it by the one
protocol (:mod:`.splits`), and render the prompts of a part of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import resolve_data_dir
from .splits import Splits, split_task
from .tasks import Task, load_task

UNSET: Any = object()


@dataclass
class Prepared:
    """A loaded task and its train/dev/test rows."""

    task: Task
    splits: Splits

    def rows(self, part: str) -> list[dict[str, Any]]:
        """The rows of ``part`` (train, dev or test), with their ids."""
        return self.splits.view(self.task, getattr(self.splits, part))

    def examples(self, part: str, prompt: Any, seed: int, embed: Any = None) -> list[Any]:
        """The rendered prompts of ``part`` (:func:`autoglm_bench.prompts.render_examples`); every template
        error surfaces here, before a model loads."""
        from ..prompts import render_examples

        return render_examples(self.rows(part), prompt, seed, embed)


def prepare(run: Any, data_dir: Path | None = UNSET, limit: int | None = UNSET) -> Prepared:
    """Load ``run.task`` (from ``data_dir``, default: the run's ``data_dir=`` or $AUTOGLM_DATA_DIR) and split it
    with ``run.split_seed`` and ``run.dev_size``, capping the test rows at ``limit`` (default ``run.limit``)."""
    folder = resolve_data_dir(run.data_dir) if data_dir is UNSET else data_dir
    task = load_task(run.task, folder)
    return Prepared(task, split_task(task, run.split_seed, run.dev_size, run.limit if limit is UNSET else limit))
