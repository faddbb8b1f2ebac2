"""The error every layer raises for bad input, and the string Enum type every allowed-name list is.

Nothing here imports beyond the standard library: the config schema, the Optuna layer and the tools all
build on it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class ConfigError(ValueError):
    """A bad configuration value. Its message is one line naming the value and what is allowed."""


class Choice(str, Enum):
    """An allowed-name list: members named as the values a user types (``trainer.precision=bf16-mixed``),
    equal to those strings, and shown as them in f-strings, YAML and JSON. OmegaConf 2.3 takes Enum
    fields in structured configs, so a bad name fails at composition (:func:`autoglm_bench.config.enum_message`
    words its one line)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def names(cls) -> list[str]:
        return [m.value for m in cls]


def choices(name: str, *values: str) -> Any:
    """A :class:`Choice` type whose members are ``values``, named as themselves (any string may be one:
    ``32-true``, ``none``).

    >>> Pruner = choices("Pruner", "none", "median")
    >>> Pruner["median"] == "median", Pruner.names()
    (True, ['none', 'median'])
    """
    return Choice(name, {v: v for v in values})


def member(kind: Any, value: Any, what: str, where: str = "") -> Any:
    """``value`` as a member of the :class:`Choice` type ``kind``, or the one-line error naming it and what
    is allowed (for values that arrive as plain strings: search-space lists, hub names)."""
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"unknown {what} {value!r}{where}; allowed: {', '.join(kind.names())}") from None


def one_line(exc: BaseException) -> str:
    """Collapse an exception message (Hydra/OmegaConf ones span lines) into one informative line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type="))]
    return " ".join(keep or lines or [type(exc).__name__])
