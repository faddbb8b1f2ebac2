"""Hydra glue: the schema registered as ``base_config``, the options of each config group, and the one-line
messages for what composition refuses (an unknown option, key or name). Nothing here imports torch."""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, one_line
from .schema import CONF_DIR, TASKS_DIR, RunConfig, TaskConfig  # noqa: F401 (TaskConfig: objective_of's example)

GROUPS = ("task", "model", "prompt", "method", "search", "trainer", "logger", "experiment", "peft", "optim")


def register_schemas() -> None:
    """Register :class:`RunConfig` as ``base_config`` so conf/config.yaml can extend it, and the
    ``${config_groups:}`` resolver that ``--help`` lists the groups with."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=RunConfig)
    OmegaConf.register_new_resolver("config_groups", config_groups_help, replace=True)


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files in conf/<group>/ (task options live in tasks/). Files
    starting with "_" are base files that options extend (tasks/_bbh.yaml), not options."""
    folder = TASKS_DIR if group == "task" else CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_"))


def config_groups_help() -> str:
    """``--help``'s list of groups and options (Hydra's own list would show base files as options)."""
    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    return "\n".join(f"{group}: {', '.join(group_options(group))}" for group in groups)


def unknown_option_message(group: str, name: str) -> str:
    """The one line for an option a config group does not have."""
    return f"unknown {group} {name!r}; available: {', '.join(group_options(group))}"


def check_task_choice(choice: str | None, cfg: DictConfig) -> None:
    """``task=<choice>`` must pick a task file, not a base file, and the task's ``name`` must be its file
    name (results, run directories and reports name a run by it)."""
    if choice is None:
        return
    stem = choice.rpartition("/")[2]
    if stem.startswith("_"):
        raise ConfigError(unknown_option_message("task", choice))
    name = OmegaConf.select(cfg, "task.name", throw_on_missing=False)  # None when the file sets none
    if name is None:
        raise ConfigError(f"task file {stem}.yaml sets no task name; add 'name: {stem}'")
    if name != stem:
        raise ConfigError(
            f"task file {stem}.yaml names its task {name!r}; a task's name must be its file name: "
            f"set 'name: {stem}' or rename the file to {name}.yaml"
        )


def unknown_key_message(full_key: str, allowed: list[str]) -> str:
    """The one line for a config key the schema does not define, with the closest allowed key if any."""
    allowed = [k for k in allowed if k != "hydra"]
    close = difflib.get_close_matches(full_key.rpartition(".")[2], allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown config key {full_key!r}{hint}; allowed here: {', '.join(allowed)}"


def check_known_keys(cfg: DictConfig, prefix: str = "") -> None:
    """Refuse a key the schema does not define. Hydra's ``+key=value`` (and ``++``) adds keys even to a
    structured config, so a typo like ``+limt=5`` would otherwise be ignored; a typo in an experiment or
    task file already fails at composition. Mappings the schema leaves free (``task.options``,
    ``search.space.verbalizers``, ``hpo.space``) take any key."""
    schema = OmegaConf.get_type(cfg)
    if dataclasses.is_dataclass(schema):
        allowed = [f.name for f in dataclasses.fields(schema)]
        for key in cfg.keys():
            if key not in allowed and not (key == "hydra" and not prefix):
                raise ConfigError(unknown_key_message(f"{prefix}{key}", allowed))
    for key in cfg.keys():
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            check_known_keys(child, f"{prefix}{key}.")


def resolve_data_dir(data_dir: str | None) -> Path | None:
    """``data_dir=`` wins, then $AUTOGLM_DATA_DIR; None means "use the hub"."""
    raw = data_dir if data_dir not in (None, "") else os.environ.get("AUTOGLM_DATA_DIR") or None
    return Path(raw).expanduser().resolve() if raw else None


def objective_of(run: Any) -> tuple[str, str]:
    """The dev quantity a run returns as its objective (what a sweeper optimises) and its natural direction:
    fine-tuning on a generation task minimises the dev loss; everything else maximises the dev value of the
    first task metric (prompt search: of its first objective). ``run`` is a RunConfig or a DictConfig.

    >>> objective_of(RunConfig(task=TaskConfig(name="t", target="x", metrics=["acc"])))
    ('acc', 'maximize')
    """
    if run.method.name == "finetune" and run.task.type == "generation":
        return "loss", "minimize"
    if run.method.name == "prompt_search":
        return run.search.objectives[0], "maximize"
    return run.task.metrics[0], "maximize"


def enum_message(exc: BaseException) -> str | None:
    """The one line for a name an Enum field of the schema does not allow (OmegaConf's ``Invalid value 'x',
    expected one of [a, b]``), worded as every unknown name is; None for any other error."""
    from omegaconf.errors import ValidationError

    msg = str(getattr(exc, "msg", "")).strip().splitlines()[0] if getattr(exc, "msg", "") else ""
    if not isinstance(exc, ValidationError) or not msg.startswith("Invalid value") or "expected one of [" not in msg:
        return None
    allowed = msg.rpartition("expected one of [")[2].partition("]")[0].strip()
    return f"unknown {exc.full_key} {exc.value!r}; allowed: {allowed}"


def describe_composition_error(exc: BaseException) -> str:
    """One line for a Hydra/OmegaConf composition error, naming the bad value and what is allowed."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, ConfigError):  # already our one line (its context is the Hydra error it rewords)
        return str(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        if group in GROUPS:
            return unknown_option_message(group, name)
    cause = exc.__cause__ or exc.__context__  # a bad key or name in a file or an override arrives as the cause
    for err in (exc, cause):
        if err is not None and (message := enum_message(err)):
            return message
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key and cause.parent_node is not None:
        return unknown_key_message(cause.full_key, [str(k) for k in cause.parent_node.keys()])
    message = one_line(exc)
    if cause is not None and one_line(cause) not in message:
        message = f"{message}: {one_line(cause)}"
    return message
