"""The prompt search space, built from ``search.space`` and the task, and one trial's prompt.

Every dimension is categorical. The space is conditional (define-by-run): a trial asks for the demo
selection only when ``k_shot > 0`` and for the demo order only when ``k_shot > 1`` (one demo has no
order), so TPE, random, GP and NSGA-II do not spend trials on settings that cannot change the prompt.
The grid sampler needs a fixed product, so under ``search.sampler=grid`` every trial asks for all six;
the equivalent prompts that creates are not scored again (see :mod:`autoglm_bench.methods.prompt_search.study`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from ...config import ConfigError, PromptConfig, SearchSpaceConfig, TaskConfig

NO_INSTRUCTION = "none"
SHAPE = ("instruction", "template", "verbalizer", "k_shot")  # asked in every trial; demo settings as needed
PROPOSED = "proposed"  # the instruction is written by the proposer model for this trial


@dataclass(frozen=True)
class Candidate:
    """One prompt: the values a trial picked. ``instruction`` is the text used ("" for none)."""

    instruction: str
    template: str
    verbalizer: str
    k_shot: int
    demo_selection: str
    demo_order: str

    def prompt_config(self, base: PromptConfig) -> PromptConfig:
        """``base`` (system prompt, chat template) with this candidate's choices."""
        return PromptConfig(
            template=self.template,
            instruction=self.instruction or None,
            system=base.system,
            k_shot=self.k_shot,
            demo_selection=self.demo_selection,
            demo_order=self.demo_order,
            chat_template=base.chat_template,
        )


@dataclass
class PromptSpace:
    """The categorical choices of each dimension, in a stable order.

    >>> from autoglm_bench.config import SearchSpaceConfig, TaskConfig
    >>> task = TaskConfig(name="t", templates={"a": "{{ x }}"}, target="{{ y }}", choices=["no", "yes"],
    ...                   instructions=["Answer."])
    >>> space = PromptSpace.from_config(SearchSpaceConfig(k_shot=[0, 2]), task)
    >>> space.instructions, space.verbalizers, space.size
    (['none', 'Answer.'], {'task': ['no', 'yes']}, 24)
    """

    instructions: list[str]
    templates: list[str]
    verbalizers: dict[str, list[str]]
    k_shot: list[int]
    demo_selection: list[str]
    demo_order: list[str]

    @classmethod
    def from_config(cls, cfg: SearchSpaceConfig, task: TaskConfig) -> PromptSpace:
        instructions: list[str] = []
        for item in cfg.instructions:
            instructions += list(task.instructions) if item == "task" else [item]
        return cls(
            instructions=list(dict.fromkeys(instructions)),
            templates=list(cfg.templates or task.templates),
            verbalizers={k: list(v) for k, v in (cfg.verbalizers or {"task": list(task.choices or [])}).items()},
            k_shot=list(dict.fromkeys(cfg.k_shot)),
            demo_selection=list(dict.fromkeys(cfg.demo_selection)),
            demo_order=list(dict.fromkeys(cfg.demo_order)),
        )

    def grid(self) -> dict[str, list[Any]]:
        """Parameter name -> choices, for ``optuna.samplers.GridSampler``."""
        return {
            "instruction": self.instructions,
            "template": self.templates,
            "verbalizer": list(self.verbalizers),
            "k_shot": self.k_shot,
            "demo_selection": self.demo_selection,
            "demo_order": self.demo_order,
        }

    @property
    def size(self) -> int:
        n = 1
        for choices in self.grid().values():
            n *= len(choices)
        return n

    def suggest(self, trial: Any, static: bool = False) -> dict[str, Any]:
        """Ask an Optuna trial for the values that shape its prompt: the demo selection only when
        ``k_shot > 0``, the demo order only when ``k_shot > 1``; every dimension when ``static`` (grid)."""
        grid = self.grid()
        params = {name: trial.suggest_categorical(name, grid[name]) for name in SHAPE}
        for name, needs in (("demo_selection", 1), ("demo_order", 2)):
            if static or int(params["k_shot"]) >= needs:
                params[name] = trial.suggest_categorical(name, grid[name])
        return params

    def check(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` unchanged if every value is one of its dimension's choices, else a :class:`ConfigError`."""
        grid = self.grid()
        for name, value in params.items():
            if value not in grid[name]:
                allowed = ", ".join(map(str, grid[name]))
                raise ConfigError(f"search.enqueue value {name}={value!r} is not in the space; allowed: {allowed}")
        return params

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def candidate_from_params(params: dict[str, Any], instruction_text: str | None = None) -> Candidate:
    """The :class:`Candidate` for a trial's params; ``instruction_text`` replaces ``proposed``. A demo
    setting the trial did not ask for (it cannot matter) takes :class:`PromptConfig`'s default."""
    instruction = params["instruction"]
    if instruction == PROPOSED:
        instruction = instruction_text or ""
    elif instruction == NO_INSTRUCTION:
        instruction = ""
    return Candidate(
        instruction=instruction,
        template=params["template"],
        verbalizer=params["verbalizer"],
        k_shot=int(params["k_shot"]),
        demo_selection=params.get("demo_selection", PromptConfig.demo_selection),
        demo_order=params.get("demo_order", PromptConfig.demo_order),
    )
