"""The run configuration: its schema (:mod:`.schema`: dataclasses, allowed names as string Enums), the
checks a type cannot express (:mod:`.checks`) and the Hydra glue (:mod:`.composition`). :func:`compose` is the
one way to build a validated run config from command-line overrides outside ``python -m autoglm_bench``
(which composes through ``@hydra.main`` and validates with the same :func:`validate`); :func:`with_overrides`
changes keys of one, :func:`from_saved` rebuilds a finished run's. Every failure is a
one-line :class:`ConfigError`. Nothing here imports torch or transformers: ``--cfg job`` and ``--help``
stay fast.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf, open_dict

from ..errors import ConfigError, one_line
from .checks import (
    categorical_space,
    is_loopback,
    validate,
    validate_finetune,
    validate_openai,
    validate_prompt_search,
    validate_serve,
)
from .composition import (
    check_known_keys,
    check_task_choice,
    config_groups_help,
    describe_composition_error,
    enum_message,
    group_options,
    objective_of,
    register_schemas,
    resolve_data_dir,
    unknown_key_message,
    unknown_option_message,
)
from .schema import *  # noqa: F403 (the dataclasses, Enum types and paths are the package's API)
from .schema import CONF_DIR, RunConfig


def compose(overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose and validate a run config from command-line style overrides, without running it; a bad
    override is the same one-line :class:`ConfigError` the command line prints.

    >>> run = compose(["task=sst2", "prompt.k_shot=2"])
    >>> run.task.name, run.prompt.k_shot
    ('sst2', 2)
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_schemas()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(describe_composition_error(exc)) from None
    check_task_choice(cfg.hydra.runtime.choices.get("task"), cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return validate(cfg)


def with_overrides(run: RunConfig, what: str, values: dict[str, Any]) -> RunConfig:
    """A validated copy of ``run`` with dotted ``values`` set (fine-tuning HPO's trial parameters); a key the
    schema lacks or a bad name is a one-line :class:`ConfigError`."""
    cfg = OmegaConf.structured(run)
    for key, value in values.items():
        if OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
            raise ConfigError(f"{what} key {key!r} is not a config key")
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except Exception as exc:
            raise ConfigError(enum_message(exc) or one_line(exc)) from None
    return validate(cfg)


def from_saved(saved: Any, what: str) -> RunConfig:
    """A validated run config from a saved one (a run's ``.hydra/config.yaml`` or results.json ``config``),
    merged onto the schema so keys it lacks take today's defaults; a key the schema lacks or a bad name is a
    one-line :class:`ConfigError` naming ``what``."""
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), saved)
    except Exception as exc:
        raise ConfigError(f"{what}: {enum_message(exc) or one_line(exc)}") from None
    return validate(cfg)


__all__ = [  # noqa: F405
    "ConfigError",
    "categorical_space",
    "check_known_keys",
    "check_task_choice",
    "compose",
    "config_groups_help",
    "describe_composition_error",
    "enum_message",
    "from_saved",
    "group_options",
    "is_loopback",
    "objective_of",
    "one_line",
    "register_schemas",
    "resolve_data_dir",
    "unknown_key_message",
    "unknown_option_message",
    "validate",
    "validate_finetune",
    "validate_openai",
    "validate_prompt_search",
    "validate_serve",
    "with_overrides",
]
