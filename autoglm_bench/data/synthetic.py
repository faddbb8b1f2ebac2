"""The shipped task: synthetic movie-review sentiment, generated from word lists and a seed.

It needs no data directory, so the quickstart runs on a fresh clone. Each review pairs one sentiment
word with neutral filler; a model that learns the sentiment words can reach 100%, a random one sits
at chance, which makes it a useful smoke test for prompting and fine-tuning alike.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from ..config import ConfigError
from .tasks import TaskHook

POSITIVE = (
    "wonderful",
    "great",
    "charming",
    "delightful",
    "brilliant",
    "moving",
    "superb",
    "funny",
    "excellent",
    "beautiful",
    "gripping",
    "fresh",
)
NEGATIVE = (
    "terrible",
    "boring",
    "awful",
    "dull",
    "clumsy",
    "tedious",
    "bland",
    "painful",
    "weak",
    "messy",
    "forgettable",
    "lifeless",
)
SUBJECTS = (
    "the film",
    "this movie",
    "the story",
    "the acting",
    "the script",
    "the ending",
    "the cast",
    "the soundtrack",
    "the direction",
    "the whole thing",
)
FRAMES = (
    "{s} was {w} .",
    "{s} is {w} , really .",
    "honestly , {s} felt {w} .",
    "i thought {s} was {w} .",
    "{s} turned out {w} .",
    "overall {s} seemed {w} to me .",
)
SPLIT_SEEDS = {"train": 1, "validation": 2, "test": 3}


class ToySentiment(TaskHook):
    """Rows ``{"text": str, "label": 0|1}``; sizes per split from ``task.options`` (train_size, eval_size)."""

    name = "toy_sentiment"

    def validate(self, data_dir: Path | None) -> None:
        for split in self.cfg.splits.values():
            if split not in SPLIT_SEEDS:
                raise ConfigError(f"toy_sentiment has splits {', '.join(SPLIT_SEEDS)}, not {split!r}")

    def load(self, split: str, data_dir: Path | None) -> list[dict[str, Any]]:
        size = int(self.cfg.options.get("train_size" if split == "train" else "eval_size", 200))
        rng = random.Random(int(self.cfg.options.get("seed", 0)) * 1000 + SPLIT_SEEDS[split])
        rows = []
        for i in range(size):
            label = i % 2
            word = rng.choice(POSITIVE if label else NEGATIVE)
            rows.append({"text": rng.choice(FRAMES).format(s=rng.choice(SUBJECTS), w=word), "label": label})
        rng.shuffle(rows)
        return rows
