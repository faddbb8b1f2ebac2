"""The runs a table is made of: finding and loading results.json files, telling runs apart by content,
reading config values, and the checks that keep a cell honest (homogeneous configs, one set of test
rows, one clean commit)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..compare import UsageError
from ..results import flatten_config as flatten
from ..results import task_version

DIRTY = "-dirty"
UNKNOWN = "unknown"


@dataclass
class Run:
    """One completed run: where its results.json is, the file's content, and its table coordinates."""

    path: Path
    result: dict[str, Any]
    row: str = ""
    col: str = ""

    @property
    def config(self) -> dict[str, Any]:
        return self.result.get("config", {})

    @property
    def commit(self) -> str:
        """The commit the run was made at (``-dirty`` when the tree had changes), or ``unknown``."""
        commit = self.result.get("env", {}).get("git_commit") or UNKNOWN
        return commit + (DIRTY if self.result.get("env", {}).get("git_dirty") and DIRTY not in commit else "")

    @property
    def task_version(self) -> str:
        return self.result.get("task_version") or task_version(self.config) or "unknown"

    @property
    def test_ids(self) -> tuple[str, ...]:
        return tuple(str(p["id"]) for p in self.result.get("predictions", []))

    def value(self, metric: str) -> float:
        return float(self.result["metrics"][metric])


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def identity(run: Run) -> str:
    """What makes a run this run: its resolved config, seed, commit and test rows. A copied run directory
    has the same identity and counts once."""
    return _digest([run.config, run.result.get("seed"), run.commit, sorted(run.test_ids)])


def outcome_digest(run: Run) -> str:
    """A digest of what the run produced (predictions and metrics): runs with equal digests are repeats
    of one deterministic computation and count as one run."""
    return _digest([run.result.get("predictions", []), run.result.get("metrics", {})])


# ---------------------------------------------------------------- finding and loading


def find_result_files(paths: list[str | Path]) -> list[Path]:
    """Every results.json under ``paths`` (a file is taken as it is, a directory searched recursively)."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise UsageError(f"no such file or directory: {path}")
        files = [path] if path.is_file() else sorted(path.rglob("results.json"))
        if not files:
            raise UsageError(f"no results.json found under {path}")
        found.update(dict.fromkeys(f.resolve() for f in files))
    return list(found)


def load_runs(files: list[Path]) -> tuple[list[Run], Counter]:
    """The completed runs among ``files``, each identity once, and a count of the others by reason
    ("failed", "pruned", "superseded" (a sweeper re-ran its trial), "duplicate", "unreadable", ...)."""
    runs: list[Run] = []
    skipped: Counter = Counter()
    seen: set[str] = set()
    for file in sorted(files):
        try:
            result = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            skipped["unreadable"] += 1
            continue
        status = result.get("status")
        if status != "completed":
            skipped[str(status)] += 1
            continue
        run = Run(file, result)
        key = identity(run)
        if key in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(key)
        runs.append(run)
    return runs, skipped


# ---------------------------------------------------------------- config keys and labels


def split_keys(text: str | None) -> list[str]:
    """``"task.name, peft.method"`` -> ``["task.name", "peft.method"]``."""
    keys = [k.strip() for k in (text or "").split(",") if k.strip()]
    if not keys:
        raise UsageError(f"no config key in {text!r}; give dotted keys like task.name or peft.method,prompt.k_shot")
    return keys


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` of a resolved config; a group (``task``) stands for its ``name``.

    >>> config_value({"task": {"name": "sst2"}, "prompt": {"k_shot": 4}}, "prompt.k_shot")
    4
    >>> config_value({"task": {"name": "sst2"}}, "task")
    'sst2'
    """
    node: Any = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            parent = ".".join(parts[:i])
            where = "the config" if i == 0 else repr(parent)
            inner = (
                ""
                if i == 0
                else (f" (its keys: {', '.join(sorted(node))})" if isinstance(node, dict) else " (it is a value)")
            )
            raise UsageError(
                f"unknown config key {key!r}: {where} has no {part!r}{inner}; "
                f"top-level config keys: {', '.join(sorted(config))}"
            )
        node = node[part]
    if isinstance(node, dict):
        if "name" in node:
            return node["name"]
        raise UsageError(f"config key {key!r} is a group, not a value; pick one of its keys: {', '.join(sorted(node))}")
    return node


def leaf_key(config: dict[str, Any], key: str) -> str:
    """The dotted key of the value :func:`config_value` reads (``task`` -> ``task.name``)."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return f"{key}.name" if isinstance(node, dict) else key


def format_value(value: Any) -> str:
    """A config value as a table label (YAML spelling for booleans and null)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def sort_key(values: tuple) -> tuple:
    """Numbers in numeric order before text, so k_shot reads 0, 2, 16 rather than 0, 16, 2."""
    return tuple(
        (0, v, "") if isinstance(v, int | float) and not isinstance(v, bool) else (1, 0, format_value(v))
        for v in values
    )


def label_of(values: tuple) -> str:
    """The label of a row or column: its config values joined by `` / ``."""
    return " / ".join(format_value(v) for v in values)


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value


def coordinates(run: Run, keys: list[str]) -> tuple:
    """The run's config values at ``keys`` (lists as tuples, so that they can group runs)."""
    return tuple(_hashable(config_value(run.config, k)) for k in keys)


def _matches(key: str, allowed: set[str]) -> bool:
    """Whether the dotted leaf ``key`` is one of ``allowed`` or lies under one of them."""
    return any(key == a or key.startswith(a + ".") for a in allowed)


def differing_keys(runs: list[Run], allowed: set[str]) -> dict[str, list[Any]]:
    """The config leaves (outside ``allowed``) whose values are not the same in every run, with their values."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat))
    missing = object()
    out: dict[str, list[Any]] = {}
    for key in keys:
        if _matches(key, allowed):
            continue
        values = [f.get(key, missing) for f in flat]
        if any(v != values[0] for v in values[1:]):
            shown = ["(unset)" if v is missing else format_value(v) for v in values]
            out[key] = sorted(set(shown), key=lambda s: sort_key((s,)))
    return out


def describe_keys(differ: dict[str, list[Any]], limit: int = 4) -> str:
    """``prompt.k_shot (0, 2), split_seed (0, 1)`` for the first ``limit`` keys, then how many more."""
    parts = [f"{k} ({', '.join(v[:6])}{', ...' if len(v) > 6 else ''})" for k, v in list(differ.items())[:limit]]
    more = len(differ) - limit
    return ", ".join(parts) + (f" and {more} more key{'s' if more > 1 else ''}" if more > 0 else "")


def short_commit(commit: str) -> str:
    """The first 12 hex digits of a commit, keeping its ``-dirty``."""
    dirty = commit.endswith(DIRTY)
    return commit.removesuffix(DIRTY)[:12] + (DIRTY if dirty else "")


@dataclass
class Provenance:
    """Where the runs of a table came from: commits and task versions, with their run counts."""

    commits: Counter = field(default_factory=Counter)
    task_versions: dict[str, Counter] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """One known commit, no uncommitted changes."""
        return len(self.commits) == 1 and not any(DIRTY in c or c == UNKNOWN for c in self.commits)


def provenance(runs: list[Run], allow_dirty: bool) -> Provenance:
    """The runs' commits and task versions; mixed or dirty commits are refused unless ``allow_dirty``."""
    prov = Provenance(Counter(r.commit for r in runs))
    for r in runs:
        prov.task_versions.setdefault(str(r.result.get("task")), Counter())[r.task_version] += 1
    if not prov.clean and not allow_dirty:
        listed = ", ".join(f"{short_commit(c)} ({n} runs)" for c, n in prov.commits.most_common())
        if any(DIRTY in c for c in prov.commits):
            why = "a tree with uncommitted changes"
        elif UNKNOWN in prov.commits:
            why = "no known commit (not run from a git checkout)"
        else:
            why = "different commits"
        raise UsageError(
            f"the runs come from {why}: {listed}; rerun them at one clean commit, or pass --allow-dirty "
            f"(the table's header then lists the commits)"
        )
    return prov
