"""Every command the README shows parses: run commands compose and validate (unknown keys, tasks, models,
values are refused as they would be at run time, without loading a model), and the report, compare and
bench commands take the options written. Hydra's own ``hydra.*`` overrides are left to Hydra; a sweep
(``a=1,2``, ``choice(...)``, ``interval(a,b)``) is checked at its first value."""

from __future__ import annotations

import re
import shlex

import pytest

from autoglm_bench.config import compose

from .conftest import REPO

MODULES = tuple(f"autoglm_bench{sub}" for sub in ("", ".serve", ".report", ".compare", ".bench"))


def readme_commands() -> list[tuple[str, list[str]]]:
    """(module, arguments) of each ``python -m autoglm_bench...`` command in the README's bash blocks."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:2] in (["python", "-m"], ["python3", "-m"]) and words[2] in MODULES:
                    commands.append((words[2], words[3:]))
    return commands


def first_of_sweeps(overrides: list[str]) -> list[str]:
    """Each override as one run of it: a sweep's first value; Hydra's own keys dropped."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for parsed in OverridesParser.create().parse_overrides(overrides):
        key = parsed.get_key_element()
        if key.lstrip("+~").startswith("hydra"):
            continue
        if parsed.value_type is not None and parsed.value_type.name == "INTERVAL_SWEEP":
            value = str(parsed.value().start)
        elif parsed.is_sweep_override():
            value = next(iter(parsed.sweep_string_iterator()))
        else:
            value = parsed.get_value_element_as_str()
        out.append(f"{key}={value}")
    return out


COMMANDS = readme_commands()


def test_the_readme_shows_commands():
    assert set(MODULES) - {module for module, _ in COMMANDS} == {"autoglm_bench.compare"}  # compare: inline only
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("module,args", COMMANDS, ids=[" ".join(a)[:60] for _, a in COMMANDS])
def test_readme_command_parses(module, args):
    if module in ("autoglm_bench", "autoglm_bench.serve"):
        compose(first_of_sweeps([a for a in args if a != "-m"]))
    else:
        import importlib

        entry = importlib.import_module(module)
        if not hasattr(entry, "build_parser"):  # a package: its __main__ (python -m autoglm_bench.bench)
            entry = importlib.import_module(f"{module}.__main__")
        parser = entry.build_parser()
        parser.parse_args(args)
