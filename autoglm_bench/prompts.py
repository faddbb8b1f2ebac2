"""Prompt rendering: sandboxed Jinja2 templates, instruction, system prompt, k-shot demos, chat template.

A prompt is built in two steps so that every template error surfaces before a model is loaded:
:func:`render_examples` renders each eval row into an :class:`Example` whose ``messages`` hold the
system prompt, the demos as user/assistant turns and the query; :func:`prompt_text` then turns the
messages into the model's input, either as plain text (lm-evaluation-harness layout) or through the
tokenizer's chat template.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .config import ConfigError, PromptConfig, TaskConfig
from .tasks import Task, normalise_answer

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)


@lru_cache(maxsize=512)
def _compile(source: str):
    try:
        return _ENV.from_string(source)
    except TemplateError as exc:
        raise ConfigError(f"template {source!r} does not parse: {exc}") from exc


def render(source: str, row: dict[str, Any]) -> str:
    """Render one Jinja2 template on one row; a field the row lacks is a one-line :class:`ConfigError`."""
    try:
        return _compile(source).render(**row)
    except UndefinedError as exc:
        fields = ", ".join(k for k in row if not k.startswith("_"))
        raise ConfigError(f"template {source!r} uses a missing field ({exc.message}); rows have: {fields}") from exc
    except TemplateError as exc:
        raise ConfigError(f"template {source!r} failed on row {row.get('_id')}: {exc}") from exc


@dataclass
class Example:
    """One eval example, rendered: chat-style messages, answer choices and the gold target."""

    id: str
    messages: list[dict[str, str]]
    target: int | str  # gold choice index (multiple choice) or normalised answer text (generation)
    choices: list[str] = field(default_factory=list)  # answer strings, without the target delimiter


def render_choices(task: TaskConfig, row: dict[str, Any]) -> list[str]:
    return [render(c, row) for c in task.choices or []]


def render_target(task: TaskConfig, row: dict[str, Any], n_choices: int) -> int | str:
    text = render(task.target, row).strip()
    if task.type == "generation":
        return normalise_answer(task, text)
    try:
        index = int(text)
    except ValueError:
        raise ConfigError(f"task {task.name!r}: target {task.target!r} gave {text!r}, not a choice index") from None
    if not 0 <= index < n_choices:
        raise ConfigError(f"task {task.name!r}: target index {index} is outside the {n_choices} choices")
    return index


def demo_answer(task: TaskConfig, row: dict[str, Any]) -> str:
    if task.fewshot_target is not None:
        return render(task.fewshot_target, row)
    choices = render_choices(task, row)
    target = render_target(task, row, len(choices))
    return choices[target] if task.type == "multiple_choice" else render(task.target, row).strip()


def select_demos(task: Task, prompt: PromptConfig, seed: int) -> list[dict[str, Any]]:
    """Pick ``prompt.k_shot`` demos from the train split, seeded; one fixed set for the whole run.

    ``random`` samples uniformly; ``balanced`` cycles through the classes (gold choice index) so each
    label appears as evenly as k allows, then shuffles their order.
    """
    k = prompt.k_shot
    if k == 0:
        return []
    pool = task.rows["train"]
    if k > len(pool):
        raise ConfigError(f"prompt.k_shot={k} exceeds the {len(pool)} rows of the train split")
    rng = random.Random(seed)
    if prompt.demo_selection == "random":
        return rng.sample(pool, k)
    if task.cfg.type != "multiple_choice":
        raise ConfigError("prompt.demo_selection=balanced needs a multiple_choice task; use random")
    by_class: dict[int, list[dict[str, Any]]] = {}
    for row in pool:
        by_class.setdefault(int(render(task.cfg.target, row)), []).append(row)
    queues = [rng.sample(rows, len(rows)) for _, rows in sorted(by_class.items())]
    demos: list[dict[str, Any]] = []
    while len(demos) < k:
        for queue in queues:
            if queue and len(demos) < k:
                demos.append(queue.pop())
    rng.shuffle(demos)
    return demos


def render_examples(task: Task, prompt: PromptConfig, seed: int) -> list[Example]:
    """Render every eval row of ``task`` with the chosen template, instruction, system prompt and demos."""
    cfg = task.cfg
    template = cfg.templates[prompt.template]
    demo_turns: list[dict[str, str]] = []
    for row in select_demos(task, prompt, seed):
        demo_turns += [
            {"role": "user", "content": render(template, row)},
            {"role": "assistant", "content": demo_answer(cfg, row)},
        ]
    examples = []
    for row in task.rows["eval"]:
        choices = render_choices(cfg, row)
        turns = demo_turns + [{"role": "user", "content": render(template, row)}]
        if prompt.instruction:
            turns[0] = {"role": "user", "content": f"{prompt.instruction}\n\n{turns[0]['content']}"}
        if prompt.system:
            turns = [{"role": "system", "content": prompt.system}] + turns
        target = render_target(cfg, row, len(choices))
        examples.append(Example(id=row["_id"], messages=turns, target=target, choices=choices))
    return examples


def prompt_text(task: TaskConfig, messages: list[dict[str, str]], tokenizer: Any = None) -> str:
    """The model input for ``messages``: the tokenizer's chat template when one is given, else the plain
    lm-evaluation-harness layout ``system\\n\\n instruction\\n\\n demo target fewshot_delim ... query``."""
    if tokenizer is not None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = []
    for msg in messages:
        if msg["role"] == "system":
            parts.append(msg["content"] + "\n\n")
        elif msg["role"] == "user":
            parts.append(msg["content"])
        else:
            parts.append(task.target_delimiter + msg["content"] + task.fewshot_delimiter)
    return "".join(parts)
