"""Scoring one prompt candidate: the demo pool, rendering, and log-likelihoods through the cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from ...config import PromptConfig
from ...data.images import json_default
from ...data.tasks import Task
from ...lm import LM
from ...metrics import choice_prediction
from ...prompts import Embedder, Example, choice_requests, example_inputs, render_examples
from .space import Candidate


def demo_pool(train: list[dict[str, Any]], size: int, seed: int) -> list[dict[str, Any]]:
    """The rows demos are drawn from: the train part, or a ``seed``-ed sample of ``size`` of its rows."""
    return random.Random(seed + 1).sample(train, size) if len(train) > size else list(train)


@dataclass
class Evaluator:
    """Renders candidates for a task and scores them with ``lm`` (behind the request cache), counting the cost.

    ``scored`` counts examples actually run through the model, ``hits`` those answered by the cache.
    """

    task: Task
    lm: LM
    base_prompt: PromptConfig
    verbalizers: dict[str, list[str]]
    pool: list[dict[str, Any]]
    seed: int
    batch_size: int = 16
    embed: Embedder | None = None
    scored: int = 0
    hits: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def render(self, cand: Candidate, rows: list[dict[str, Any]]) -> list[Example]:
        """``rows`` rendered with the candidate's template, instruction, label words and demos."""
        cfg = dataclasses.replace(self.task.cfg, choices=self.verbalizers[cand.verbalizer])
        view = Task(cfg=cfg, hook=self.task.hook, rows={"train": self.pool, "eval": rows})
        return render_examples(view, cand.prompt_config(self.base_prompt), self.seed, embed=self.embed)

    def contexts(self, examples: list[Example]) -> list[str]:
        chat = self.lm.tokenizer if self.base_prompt.chat_template else None
        return example_inputs(self.task.cfg, examples, chat)

    def prompt_tokens(self, examples: list[Example]) -> float:
        """Mean length in tokens of the model input (the second objective for nsga2)."""
        texts = [getattr(c, "text", c) for c in self.contexts(examples)]  # an image prompt: its text
        ids = self.lm.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return sum(map(len, ids)) / max(1, len(ids))

    def prompt_set_key(self, examples: list[Example]) -> str:
        """A digest of exactly what scoring ``examples`` asks of the model (each example's id, context and
        continuations): candidates with the same digest get the same scores."""
        requests = choice_requests(self.task.cfg, self.contexts(examples), examples, self.base_prompt.chat_template)
        payload = json.dumps(
            [[ex.id, ctx, conts] for (ctx, conts), ex in zip(requests, examples)], default=json_default
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def score(self, examples: list[Example]) -> list[list[float]]:
        """Choice log-likelihoods of each example, from the cache where possible."""
        requests = choice_requests(self.task.cfg, self.contexts(examples), examples, self.base_prompt.chat_template)
        lls, stats = self.lm.loglikelihood(requests, batch_size=self.batch_size, progress=False)
        self.scored += stats.examples
        self.hits += len(examples) - stats.examples
        self.tokens += stats.tokens
        self.seconds += stats.seconds
        return lls


def is_correct(metric: str, lls: list[float], example: Example) -> float:
    """1.0 when the example's prediction under ``metric`` (the task's definition of acc or acc_norm) is the
    gold choice, else 0.0."""
    return float(choice_prediction(metric, lls, example.choices) == example.target)


def minibatch_ends(n: int, first: int) -> list[int]:
    """Cumulative minibatch ends: ``first``, doubling, always ending with all ``n`` dev examples.

    >>> minibatch_ends(300, 32)
    [32, 64, 128, 256, 300]
    """
    ends, size = [], first
    while size < n:
        ends.append(size)
        size *= 2
    return ends + [n]
