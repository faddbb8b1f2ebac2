"""Metrics as lm-evaluation-harness defines them: the choice a multiple-choice metric picks, macro-F1,
and for generation tasks the answer extraction and normalisation ``exact_match`` compares."""

from __future__ import annotations

import re
import string
from typing import Any

import numpy as np

from .config import TaskConfig


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
