"""ChartQA's metrics as lm-evaluation-harness 0.4 defines them (``lm_eval/tasks/chartqa/utils.py``, itself
adapted from mistral-evals): ``exact_match`` on the answer after ``Final Answer:``, ``relaxed_accuracy``
(numbers within 5% of the gold, percentages compared also as fractions; text case-insensitively) and
``anywhere_accuracy`` (relaxed, else the gold answer anywhere in the generation; lm-eval calls it overly
generous). Each is computed on the raw generation (``output``) against the gold ``label[0]``.
"""

from __future__ import annotations

import re
import string
from typing import Any

from .tasks import TaskHook

FINAL = re.compile(r"(?:Final Answer|FINAL ANSWER): (.+)$", re.IGNORECASE)
TOLERANCE = 0.05


class ChartQA(TaskHook):
    """Rows from local files like any task (``source.local``); scored with lm-eval's three ChartQA metrics."""

    name = "chartqa"

    def score(self, predictions: list[dict[str, Any]]) -> dict[str, float]:
        rules = {"exact_match": exact_match, "relaxed_accuracy": relaxed_accuracy, "anywhere_accuracy": anywhere}
        n = max(1, len(predictions))
        return {m: sum(rules[m](p["output"], str(p["target"])) for p in predictions) / n for m in self.cfg.metrics}


def exact_match(generation: str, target: str) -> float:
    match = FINAL.search(generation)
    return float(bool(match) and match.group(1).strip().lower().removesuffix(".") == target.strip().lower())


def final_answer(generation: str) -> str:
    """The first non-empty line after the last ``answer:`` (markdown removed), or ``""``."""
    generation = re.sub(r"([aA]nswer)\**:\**", "\\1:", generation)
    index = generation.lower().rfind("answer:")
    if index == -1:
        return ""
    lines = generation[index + len("answer:") :].split("\n")
    return re.sub(r"[*_\[\]\(\)]", "", next((line.strip() for line in lines if line.strip()), ""))


def relaxed(prediction: str, target: str) -> float:
    prediction, target = _preprocess(prediction), _preprocess(target)
    (p, p_pct), (t, t_pct) = _to_float(prediction), _to_float(target)
    if p is not None and t is not None:
        value = _close(p, t)
        if value != 1.0 and (p_pct or t_pct):
            value = max(value, _close(p / 100 if p_pct else p, t), _close(p, t / 100 if t_pct else t))
        return value
    if target.isalpha() and len(target) == 1 and prediction:
        return float(prediction[0].lower() == target.lower())
    while prediction and prediction[-1] in string.punctuation:
        prediction = prediction[:-1]
    return float(prediction.lower() == target.lower())


def relaxed_accuracy(generation: str, target: str) -> float:
    answer = final_answer(generation)
    return relaxed(answer, target) if answer else 0.0


def anywhere(generation: str, target: str) -> float:
    answer = final_answer(generation)
    if answer:
        return relaxed(answer, target)
    try:
        number: float = float(target)
        number = int(number) if int(number) == number else number
        return float(any(s in generation for s in (format(number, ","), str(number), f"{number}%")))
    except ValueError:
        candidates = [f"is {target}", f"was {target}", f" {target}.", f"are {target}", f"\n\n{target}"]
        return float(any(c.lower() in generation for c in candidates))


def _preprocess(text: str) -> str:
    if not any(c.isdigit() for c in text):
        quoted = bool(text) and text[0] in "'\"" and text.endswith(text[0])
        return text[1:-1] if quoted else text
    while text and (text[-1] in string.punctuation or text[-1].isspace()) and text[-1] != "%":
        text = text[:-1]
    return text.replace(",", "").replace("$", "")


def _to_float(text: str) -> tuple[float | None, bool]:
    text = text.strip()
    try:
        return float(text.rstrip("%")), text.endswith("%")
    except ValueError:
        return None, False


def _close(prediction: float, target: float) -> float:
    return float(abs(prediction - target) / max(abs(target), 1e-10) <= TOLERANCE)
