"""Tasks: loading a task's splits (local JSONL/CSV or the hub, through `datasets`); its metrics are in
:mod:`autoglm_bench.metrics`.

A task is data: one YAML file in tasks/ (see :class:`~autoglm_bench.config.TaskConfig`). A task whose
data or scoring needs code names a hook, ``hook: package.module:Class``, subclassing :class:`TaskHook`
(the plugin interface: ``name``, ``validate``, ``load``, ``score``).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, TaskConfig
from ..metrics import compute_metrics


@dataclass
class Task:
    """A loaded task: its config, its hook and its rows per split role ("eval", "train")."""

    cfg: TaskConfig
    hook: TaskHook
    rows: dict[str, list[dict[str, Any]]]

    @property
    def name(self) -> str:
        return self.cfg.name


class TaskHook:
    """Default task behaviour; subclass it and name the subclass in ``task.hook`` to customise.

    Example (a task generating its own rows)::

        class Squares(TaskHook):
            name = "squares"
            def load(self, split, data_dir):
                return [{"x": i, "label": i * i % 2} for i in range(100)]
    """

    name = "files"

    def __init__(self, cfg: TaskConfig):
        self.cfg = cfg

    def validate(self, data_dir: Path | None) -> None:
        """Fail fast (before any model loads) when the task's data cannot be found."""
        if data_dir is None:
            if not self.cfg.source.hub:
                raise ConfigError(
                    f"task {self.cfg.name!r} has no hub source; set data_dir=<folder> or AUTOGLM_DATA_DIR"
                )
            return
        if not self.cfg.source.local:
            raise ConfigError(f"task {self.cfg.name!r} has no local file pattern (source.local)")
        for split in self.cfg.splits.values():
            path = self.local_path(split, data_dir)
            if not path.is_file():
                raise ConfigError(
                    f"data file not found: {path} (task {self.cfg.name!r}, split {split!r}; data_dir={data_dir})"
                )

    def local_path(self, split: str, data_dir: Path) -> Path:
        assert self.cfg.source.local is not None
        return data_dir / self.cfg.source.local.format(split=split)

    def load(self, split: str, data_dir: Path | None) -> list[dict[str, Any]]:
        """Return the rows of one split as dicts."""
        if data_dir is None:
            return _load_hub(self.cfg, split)
        return _load_local(self.local_path(split, data_dir))

    def image_root(self, data_dir: Path | None) -> Path | None:
        """The folder that image paths in rows are relative to, and confined to: the data folder."""
        return data_dir

    def score(self, predictions: list[dict[str, Any]]) -> dict[str, float]:
        """Aggregate per-example predictions into the task's metrics."""
        return compute_metrics(self.cfg.metrics, predictions)


def load_task(cfg: TaskConfig, data_dir: Path | None, limit: int | None = None) -> Task:
    """Load every split the task names. ``limit`` keeps the first N eval rows (demos keep all)."""
    hook = make_hook(cfg)
    hook.validate(data_dir)
    rows: dict[str, list[dict[str, Any]]] = {}
    image_root = hook.image_root(data_dir) if cfg.images else None
    for role, split in cfg.splits.items():
        split_rows = hook.load(split, data_dir)
        if not split_rows:
            raise ConfigError(f"split {split!r} of task {cfg.name!r} is empty")
        for i, row in enumerate(split_rows):
            row.setdefault("_id", f"{split}-{row[cfg.id_field] if cfg.id_field else i}")
            if image_root is not None:
                row.setdefault("_image_root", str(image_root))  # image paths in the row are relative to it
        rows[role] = split_rows[:limit] if role == "eval" and limit is not None else split_rows
    return Task(cfg=cfg, hook=hook, rows=rows)


def make_hook(cfg: TaskConfig) -> TaskHook:
    if cfg.hook is None:
        return TaskHook(cfg)
    module_name, _, attr = cfg.hook.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"task hook {cfg.hook!r} cannot be imported ({exc}); use 'package.module:Class'") from exc
    if not (isinstance(cls, type) and issubclass(cls, TaskHook)):
        raise ConfigError(f"task hook {cfg.hook!r} is not a subclass of autoglm_bench.data.tasks.TaskHook")
    return cls(cfg)


def _load_local(path: Path) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    builder = {".jsonl": "json", ".json": "json", ".csv": "csv"}.get(path.suffix)
    if builder is None:
        raise ConfigError(f"unsupported data file type {path.suffix!r} ({path}); allowed: .jsonl, .json, .csv")
    if not path.read_text(encoding="utf-8").strip():
        raise ConfigError(f"data file {path} is empty")
    if builder == "json":
        _check_jsonl(path)  # datasets' own error for a bad line names neither the line nor the file
    ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    return ds.to_list()


def _check_jsonl(path: Path) -> None:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"malformed JSON on line {lineno} of {path}: {exc.msg}") from exc
            if not isinstance(value, dict):
                raise ConfigError(f"line {lineno} of {path} is not a JSON object")


def _load_hub(cfg: TaskConfig, split: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.source.hub, cfg.source.hub_config, split=split)
    except Exception as exc:  # offline, unknown id, gated, ...: say what to do instead
        raise ConfigError(
            f"could not load {cfg.source.hub!r} split {split!r} from the hub ({type(exc).__name__}); "
            "download it and set data_dir=<folder> or AUTOGLM_DATA_DIR"
        ) from exc
    return ds.to_list()
