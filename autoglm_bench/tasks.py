"""Tasks: loading a task's splits (local JSONL/CSV or the hub, through `datasets`) and its metrics.

A task is data: one YAML file in tasks/ (see :class:`~autoglm_bench.config.TaskConfig`). A task whose
data or scoring needs code names a hook, ``hook: package.module:Class``, subclassing :class:`TaskHook`
(the plugin interface: ``name``, ``validate``, ``load``, ``score``).
"""

from __future__ import annotations

import importlib
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError, TaskConfig


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
        raise ConfigError(f"task hook {cfg.hook!r} is not a subclass of autoglm_bench.tasks.TaskHook")
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


# ---------------------------------------------------------------- metrics


def compute_metrics(names: list[str], predictions: list[dict[str, Any]]) -> dict[str, float]:
    """Metrics over per-example predictions, as lm-evaluation-harness defines them.

    Multiple choice: each prediction has ``target`` (gold index), ``scores`` (summed log-likelihood per
    choice) and ``choices`` (the choice strings).

    - ``acc``: argmax of the summed log-likelihoods equals the gold index.
    - ``acc_norm``: argmax of log-likelihood divided by the choice's length in characters.
    - ``f1``: macro-F1 of the ``acc`` predictions over every label (choice index), a label neither gold nor
      predicted counting 0 (lm-evaluation-harness's CB ``f1``, ``cb_multi_fi``).

    Generation: ``exact_match`` compares the extracted ``prediction`` with ``target`` string-wise.

    >>> p = [{"target": 0, "scores": [-1.0, -2.0], "choices": ["a", "bbbb"]}]
    >>> compute_metrics(["acc", "acc_norm"], p)
    {'acc': 1.0, 'acc_norm': 0.0}
    """
    out: dict[str, float] = {}
    if not predictions:
        return {name: float("nan") for name in names}
    gold = np.array([p["target"] for p in predictions])
    for name in names:
        if name == "exact_match":
            out[name] = float(np.mean([p["prediction"] == p["target"] for p in predictions]))
            continue
        rule = "acc_norm" if name == "acc_norm" else "acc"
        pred = np.array([choice_prediction(rule, p["scores"], p["choices"]) for p in predictions])
        labels = max(len(p["choices"]) for p in predictions)
        out[name] = macro_f1(gold, pred, labels) if name == "f1" else float(np.mean(pred == gold))
    return out


def choice_prediction(metric: str, scores: list[float], choices: list[str]) -> int:
    """The index a multiple-choice metric picks: ``acc`` the highest log-likelihood, ``acc_norm`` the
    highest log-likelihood per character of the choice; ties go to the first (numpy's argmax)."""
    values = np.asarray(scores, dtype=float)
    if metric == "acc_norm":
        values = values / np.array([float(len(c)) for c in choices])
    return int(np.argmax(values))


def macro_f1(gold: np.ndarray, pred: np.ndarray, labels: int | None = None) -> float:
    """Unweighted mean of per-label F1 over labels ``0 .. labels - 1`` (one that is neither gold nor
    predicted scores 0, as in lm-evaluation-harness's CB ``f1``), or without ``labels`` over the labels
    present in gold or pred (sklearn's "macro")."""
    scores = []
    for label in range(labels) if labels is not None else np.union1d(gold, pred):
        tp = np.sum((pred == label) & (gold == label))
        denom = np.sum(pred == label) + np.sum(gold == label)
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def extract_answer(cfg: TaskConfig, text: str) -> str:
    """The answer in a generated text, as lm-evaluation-harness's filters take it: without
    ``answer_pattern`` the whole text (``take_first``); with it, the ``answer_select``-th item of
    ``re.findall`` (a tuple of groups gives its first non-empty one), stripped, or ``"[invalid]"`` when
    nothing matches (the ``regex`` filter). Then normalised as :func:`normalise_answer`.

    >>> cfg = TaskConfig(name="t", target="x", answer_pattern=r"(-?[0-9]+)", answer_select=-1)
    >>> extract_answer(cfg, "3 apples and 4 pears: 7")
    '7'
    """
    answer = text
    if cfg.answer_pattern:
        matches = re.findall(cfg.answer_pattern, text)
        answer = INVALID
        if matches:
            match = matches[cfg.answer_select]
            if isinstance(match, tuple):
                match = next((m for m in match if m), INVALID)
            answer = match.strip()
    return normalise_answer(cfg, answer)


INVALID = "[invalid]"  # lm-eval's regex filter fallback


def normalise_answer(cfg: TaskConfig, answer: str) -> str:
    """lm-eval's ``exact_match`` normalisation, applied to answers and targets alike: each
    ``answer_ignore`` regex removed in turn, then lower case (``ignore_case``) and punctuation removed
    (``ignore_punctuation``). No stripping: ``" True"`` does not equal ``"True"``."""
    for pattern in cfg.answer_ignore:
        answer = re.sub(pattern, "", answer)
    if cfg.ignore_case:
        answer = answer.lower()
    if cfg.ignore_punctuation:
        answer = answer.translate(str.maketrans("", "", string.punctuation))
    return answer
