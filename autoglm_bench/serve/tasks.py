"""The tasks a server serves, all composed and loaded at start (with their demo pools when the prompt has
demos): no client request ever loads data or reaches a dataset hub."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import RunConfig, compose
from .specs import ModelSpec

TaskKey = tuple[str, str]  # (task name, the checkpoint whose own config it comes from, or "")


@dataclass
class TaskState:
    """A task as the server renders it: its run config (task + prompt) and the demo pool (train rows)."""

    key: TaskKey
    run: RunConfig
    task: Any  # autoglm_bench.data.tasks.Task; rows["train"] is the demo pool when prompt.k_shot > 0
    fields: list[str]  # the input fields the chosen template uses
    target_fields: list[str]  # the fields the gold target needs


@dataclass
class ServedTasks:
    """Every served task by key, and the sentence embedder of ``prompt.demo_selection=nearest`` (None when
    no task selects demos that way), its demo pools embedded at start."""

    states: dict[TaskKey, TaskState]
    embedder: Any = None

    @property
    def names(self) -> list[str]:
        return sorted({name for name, own in self.states if not own})


def load_tasks(run: RunConfig, overrides: list[str], specs: dict[str, ModelSpec]) -> ServedTasks:
    """The server's task and ``serve.tasks`` (composed with ``overrides``, which hold no task or serve keys),
    and each fine-tuned checkpoint's own task with the prompt it was trained with."""
    states: dict[TaskKey, TaskState] = {}
    for name in dict.fromkeys([run.task.name, *run.serve.tasks]):
        task_run = run if name == run.task.name else compose([*overrides, f"task={name}"])
        states[(name, "")] = _load(task_run, (name, ""))
    for spec in specs.values():
        if spec.checkpoint is not None:
            key = (spec.checkpoint.task.name, spec.name)
            states[key] = _load(spec.checkpoint, key)
    nearest = [s for s in states.values() if s.run.prompt.demo_selection == "nearest" and s.run.prompt.k_shot > 0]
    embedder = None
    if nearest:
        from ..lm.hf import minilm_embedder
        from ..prompts import nearest_demos

        embedder = minilm_embedder()
        for state in nearest:  # embeds the demo pool now, not on the first request
            nearest_demos(state.task, state.run.prompt, embedder, [])
    return ServedTasks(states, embedder)


def _load(run: RunConfig, key: TaskKey) -> TaskState:
    from ..data.prepare import prepare
    from ..data.tasks import Task, make_hook

    cfg = run.task
    if run.prompt.k_shot > 0:
        prep = prepare(run)
        task = Task(cfg=cfg, hook=prep.task.hook, rows={"train": prep.splits.train})
    else:
        task = Task(cfg=cfg, hook=make_hook(cfg), rows={"train": []})
    return TaskState(
        key=key,
        run=run,
        task=task,
        fields=template_fields(cfg.templates[run.prompt.template]),
        target_fields=template_fields(cfg.target),
    )


def template_fields(*sources: str) -> list[str]:
    """The row fields that Jinja2 templates read, sorted."""
    from jinja2 import Environment, meta

    env = Environment()
    names: set[str] = set()
    for source in sources:
        names |= meta.find_undeclared_variables(env.parse(source))
    return sorted(names)
