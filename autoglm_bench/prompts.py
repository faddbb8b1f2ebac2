"""Prompt rendering: sandboxed Jinja2 templates, instruction, system prompt, k-shot demos, chat template.

A prompt is built in two steps so that every template error surfaces before a model is loaded:
:func:`render_examples` renders each eval row into an :class:`Example` whose ``messages`` hold the
system prompt, the demos as user/assistant turns and the query; :func:`prompt_text` then turns the
messages into the model's input, either as plain text (lm-evaluation-harness layout) or through the
tokenizer's chat template.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .config import ConfigError, PromptConfig, TaskConfig
from .data.tasks import Task
from .metrics import normalise_answer

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
    images: list[Any] = field(default_factory=list)  # the demos' images, then the query's, as its <image> markers


def render_choices(task: TaskConfig, row: dict[str, Any]) -> list[str]:
    return [render(c, row) for c in task.choices or []]


def render_target(task: TaskConfig, row: dict[str, Any], n_choices: int) -> int | str:
    text = render(task.target, row)
    if task.type == "generation":
        return normalise_answer(task, text)
    text = text.strip()
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
    return choices[target] if task.type == "multiple_choice" else render(task.target, row)


def select_demos(task: Task, prompt: PromptConfig, seed: int) -> list[dict[str, Any]]:
    """Pick ``prompt.k_shot`` demos from the train split, seeded; one fixed set for the whole run
    (``prompt.fewshot_mode=fixed``).

    ``random`` samples uniformly; ``balanced`` cycles through the classes (gold choice index) so each
    label appears as evenly as k allows, then shuffles their order.
    """
    k = prompt.k_shot
    if k == 0:
        return []
    pool = task.rows["train"]
    if k > len(pool):
        raise ConfigError(
            f"prompt.k_shot={k} exceeds the {len(pool)} train rows left for demos (the train split "
            "less its dev_size dev rows)"
        )
    if prompt.demo_selection == "nearest":
        raise ConfigError("prompt.demo_selection=nearest picks demos per query; use render_examples")
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


Embedder = Callable[[list[str]], Any]  # texts -> (n, d) array of L2-normalised sentence embeddings


def nearest_demos(
    task: Task, prompt: PromptConfig, embed: Embedder, rows: list[dict[str, Any]]
) -> list[list[dict[str, Any]]]:
    """For each row, the ``prompt.k_shot`` train rows most similar to it (cosine of the sentence embeddings
    of the rendered template), most similar first.

    >>> from autoglm_bench.lm.hf import minilm_embedder  # doctest: +SKIP
    >>> demos = nearest_demos(task, prompt, minilm_embedder(), task.rows["eval"])  # doctest: +SKIP
    """
    import numpy as np

    pool = task.rows["train"]
    if prompt.k_shot > len(pool):
        raise ConfigError(f"prompt.k_shot={prompt.k_shot} exceeds the {len(pool)} rows of the train split")
    template = task.cfg.templates[prompt.template]
    pool_vecs = np.asarray(embed([render(template, r) for r in pool]))
    query_vecs = np.asarray(embed([render(template, r) for r in rows]))
    sims = query_vecs @ pool_vecs.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, : prompt.k_shot]
    return [[pool[j] for j in row] for row in top]


def needs_embedder(prompt: PromptConfig) -> bool:
    """Whether rendering with ``prompt`` picks demos per row by sentence embeddings (demo_selection=nearest),
    so :func:`render_examples` needs an ``embed`` (:func:`autoglm_bench.lm.hf.minilm_embedder`)."""
    return prompt.demo_selection == "nearest" and prompt.k_shot > 0 and prompt.fewshot_mode == "fixed"


def lmeval_demos(task: Task, prompt: PromptConfig, seed: int, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The demos of each row under ``prompt.fewshot_mode`` ``first_n`` or ``per_doc``, drawn as
    lm-evaluation-harness 0.4's ``FirstNSampler`` and ``ContextSampler`` draw them from the train split in
    file order (``task.rows["fewshot"]``): ``per_doc`` takes ``rng.sample(pool, k)`` for each row in turn
    from one ``random.Random(prompt.fewshot_seed)`` (``seed`` when null).

    With ``task.fewshot_drop_query`` (lm-eval passes the query as ``eval_doc`` whenever a task's few-shot
    split equals its test split, which includes every task that names neither) the query row is dropped:
    from the pool (first_n), or from ``k + 1`` samples (per_doc). A row of the train split itself (a dev
    row) is always dropped, so it never sees itself.
    """
    k = prompt.k_shot
    pool = task.rows.get("fewshot") or task.rows["train"]
    if k > len(pool):
        raise ConfigError(f"prompt.k_shot={k} exceeds the {len(pool)} rows of the train split")
    in_pool = {r["_id"] for r in pool}
    rng = random.Random(seed if prompt.fewshot_seed is None else prompt.fewshot_seed)
    demos = []
    for row in rows:
        drop = task.cfg.fewshot_drop_query or row["_id"] in in_pool
        if prompt.fewshot_mode == "first_n":
            demos.append([d for d in pool if not (drop and _same_doc(d, row))][:k])
        elif not drop:
            demos.append(rng.sample(pool, k))
        else:
            drawn = [d for d in rng.sample(pool, k + 1) if not _same_doc(d, row)][:k]
            if len(drawn) < k:  # the row had duplicates in the pool
                drawn = rng.sample([d for d in pool if not _same_doc(d, row)], k)
            demos.append(drawn)
    return demos


def _same_doc(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal as dataset rows (lm-eval compares docs with ``==``), whatever their ``_id``."""
    return {**a, "_id": None} == {**b, "_id": None}


def render_examples(task: Task, prompt: PromptConfig, seed: int, embed: Embedder | None = None) -> list[Example]:
    """Render every eval row of ``task`` with the chosen template, instruction, system prompt and demos.

    Demos follow ``prompt.fewshot_mode``: ``fixed`` uses one set for all rows (``random``/``balanced``) or,
    with ``demo_selection=nearest``, picks them per row with ``embed`` (see :func:`needs_embedder`);
    ``first_n`` and ``per_doc`` are :func:`lmeval_demos`.
    ``prompt.demo_order=reversed`` reverses each demo list (for nearest: the most similar demo comes last,
    next to the query). The system message is the system prompt and the task's description joined as
    lm-eval joins them.
    """
    cfg = task.cfg
    template = cfg.templates[prompt.template]
    rows = task.rows["eval"]
    if prompt.k_shot > 0 and prompt.fewshot_mode != "fixed":
        demo_rows = lmeval_demos(task, prompt, seed, rows)
    elif needs_embedder(prompt):
        if embed is None:
            raise ValueError("prompt.demo_selection=nearest renders with an embedder; pass embed=")
        demo_rows = nearest_demos(task, prompt, embed, rows)
    else:
        demo_rows = [select_demos(task, prompt, seed)] * len(rows)
    turns_cache: dict[tuple[str, ...], tuple[list[dict[str, str]], list[Any]]] = {}
    examples = []
    for row, demos in zip(rows, demo_rows):
        if prompt.demo_order == "reversed":
            demos = demos[::-1]
        key = tuple(d["_id"] for d in demos)
        if key not in turns_cache:
            turns, images = [], []
            for d in demos:
                text, demo_images = _user_turn(cfg, template, d)
                turns += [{"role": "user", "content": text}, {"role": "assistant", "content": demo_answer(cfg, d)}]
                images += demo_images
            turns_cache[key] = (turns, images)
        choices = render_choices(cfg, row)
        text, row_images = _user_turn(cfg, template, row)
        turns = turns_cache[key][0] + [{"role": "user", "content": text}]
        images = turns_cache[key][1] + row_images
        if prompt.instruction:
            turns[0] = {"role": "user", "content": f"{prompt.instruction}\n\n{turns[0]['content']}"}
        description = render(cfg.description, row) if cfg.description else None
        system = _maybe_delimit(prompt.system, description, cfg.fewshot_delimiter)
        if system:
            turns = [{"role": "system", "content": system}] + turns
        target = render_target(cfg, row, len(choices))
        examples.append(Example(id=row["_id"], messages=turns, target=target, choices=choices, images=images))
    return examples


def _user_turn(cfg: TaskConfig, template: str, row: dict[str, Any]) -> tuple[str, list[Any]]:
    """A row's rendered template and its images (an image task's text holds one ``<image>`` per image)."""
    text = render(template, row)
    if not cfg.images:
        return text, []
    from .prompt_images import row_images, with_markers

    images = row_images(cfg, row)
    return with_markers(cfg, text, len(images)), images


def _maybe_delimit(prefix: str | None, suffix: str | None, delimiter: str) -> str:
    """lm-eval's ``maybe_delimit``: join with ``delimiter`` unless either side has whitespace at the seam."""
    if not prefix or not suffix:
        return prefix or suffix or ""
    return prefix + suffix if prefix[-1].isspace() or suffix[0].isspace() else prefix + delimiter + suffix


def prompt_text(task: TaskConfig, messages: list[dict[str, str]], tokenizer: Any = None) -> str:
    """The model input for ``messages``: the tokenizer's chat template when one is given (demos as earlier
    user/assistant turns, as lm-eval's ``fewshot_as_multiturn``), else lm-evaluation-harness's plain layout
    ``system demo target_delimiter answer fewshot_delimiter ... query``. As in lm-eval, nothing separates
    the system text (a system prompt and/or the task's description) from what follows it."""
    if tokenizer is not None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = []
    for msg in messages:
        if msg["role"] == "system":
            parts.append(msg["content"])
        elif msg["role"] == "user":
            parts.append(msg["content"])
        else:
            parts.append(task.target_delimiter + msg["content"] + task.fewshot_delimiter)
    return "".join(parts)


def chat_tokenizer(prompt: PromptConfig, tokenizer: Any) -> Any:
    """The tokenizer whose chat template formats prompts, or None for plain text.

    A model without a chat template under ``prompt.chat_template=true`` is a :class:`ConfigError`.
    """
    if not prompt.chat_template:
        return None
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("prompt.chat_template=true but the model's tokenizer has no chat template")
    return tokenizer


def example_inputs(task: TaskConfig, examples: list[Example], tokenizer: Any = None) -> list[Any]:
    """The model input of each example (:func:`prompt_text`), with its images when it has any (an
    :class:`~autoglm_bench.data.images.ImageText`)."""
    from .prompt_images import model_input

    return [model_input(prompt_text(task, ex.messages, tokenizer), ex.images) for ex in examples]


def choice_requests(
    task: TaskConfig, contexts: list[str], examples: list[Example], chat: bool
) -> list[tuple[str, list[str]]]:
    """(context, continuations) scoring requests: each choice after the task's target delimiter, or
    right after the context under a chat template (the assistant header already starts the answer)."""
    delimiter = "" if chat else task.target_delimiter
    return [(ctx, [delimiter + c for c in ex.choices]) for ctx, ex in zip(contexts, examples)]
