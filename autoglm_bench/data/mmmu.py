"""MMMU as lm-evaluation-harness 0.4 defines it (``lm_eval/tasks/mmmu``, from the MMMU authors' own eval):
the prompt, the images in the order the prompt names them, and the answer parsing behind its ``acc``.

A row (local JSONL, as the hub's ``MMMU/MMMU`` rows) has ``id``, ``question``, ``options`` (a list, or
the hub's string of a Python list), ``answer`` (a letter; for open questions the answer text, or a
list of them), ``question_type`` (``multiple-choice`` or ``open``) and ``image_1`` ... ``image_7`` (a
path under the data folder, base64 or a data URL; null where absent). The prompt is the question, then
for multiple choice the options as ``(A) ...`` lines and "Answer with the option's letter from the given
choices directly.", else "Answer the question using a single word or phrase."; each ``<image i>`` in
it becomes ``<image>`` and brings ``image_i`` (an image named twice comes twice, as in lm-eval).

Scoring parses each generation as lm-eval does: a letter in brackets, else a bare letter, else (over
five words) an option's text, the last one found when several are; with none, a random letter. lm-eval
draws that from the process-wide ``random`` (seeded 42 when its module is imported); here each scoring
pass draws from its own ``random.Random(42)`` in row order, so one pass gives what a fresh lm-eval
process gives. Open answers are parsed into normalised strings and numbers and count when one holds
the gold answer.
"""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path
from typing import Any

from .tasks import TaskHook

LETTERS = "ABCDEFGHI"
CHOICE_FORMAT = "{}\n\n{}\n\nAnswer with the option's letter from the given choices directly."
OPEN_FORMAT = "{}\n\nAnswer the question using a single word or phrase."
FALLBACK_SEED = 42


class MMMU(TaskHook):
    """Rows from local files like any task; adds ``prompt`` and ``images`` (lm-eval's ``doc_to_text`` and
    ``doc_to_image``) to each, and scores ``acc`` on the parsed generation (see the module docstring)."""

    name = "mmmu"

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.docs: dict[str, dict[str, Any]] = {}  # row id -> row, for scoring

    def load(self, split: str, data_dir: Path | None) -> list[dict[str, Any]]:
        rows = super().load(split, data_dir)
        for row in rows:
            if isinstance(row["options"], str):
                row["options"] = ast.literal_eval(row["options"])
            text = raw_prompt(row)
            row["prompt"] = re.sub(r"<image [1-7]>", "<image>", text)
            row["images"] = [row[name.strip("<>").replace(" ", "_")] for name in re.findall("<image [1-7]>", text)]
            row["_id"] = f"{split}-{row['id']}"
            self.docs[row["_id"]] = row
        return rows

    def score(self, predictions: list[dict[str, Any]]) -> dict[str, float]:
        """``acc``: each generation parsed (in order, one fallback generator per pass) and judged; each
        prediction gets its parsed answer in ``prediction`` and its 0/1 ``correct``."""
        rng = random.Random(FALLBACK_SEED)
        for p in predictions:
            doc = self.docs[p["id"]]
            p["prediction"] = parse(doc, p["output"], rng)
            p["correct"] = float(judge(doc, p["prediction"]))
        return {"acc": sum(p["correct"] for p in predictions) / max(1, len(predictions))}


def raw_prompt(row: dict[str, Any]) -> str:
    """lm-eval's prompt before its ``<image i>`` markers become ``<image>``."""
    if row["question_type"] == "multiple-choice":
        options = "\n".join(f"({LETTERS[i]}) {option}" for i, option in enumerate(row["options"]))
        return CHOICE_FORMAT.format(row["question"], options)
    return OPEN_FORMAT.format(row["question"])


def parse(row: dict[str, Any], generation: str, rng: random.Random) -> Any:
    """The parsed answer: a letter (multiple choice) or a list of normalised strings and numbers (open)."""
    if row["question_type"] == "multiple-choice":
        letters = list(LETTERS[: len(row["options"])])
        return parse_choice(generation, letters, dict(zip(letters, row["options"])), rng)
    return parse_open(generation)


def judge(row: dict[str, Any], parsed: Any) -> bool:
    gold = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
    if row["question_type"] == "multiple-choice":
        return parsed in gold
    norm = [n for answer in gold for n in normalise(answer)]
    return any(any(isinstance(n, str) and n in p for n in norm) if isinstance(p, str) else p in norm for p in parsed)


def parse_choice(response: str, letters: list[str], index2ans: dict[str, str], rng: random.Random) -> str:
    """MMMU's ``parse_multi_choice_response``: the letter a generation picks."""
    for char in ",.!?;:'":
        response = response.strip(char)
    response = f" {response} "
    candidates = [c for c in letters if f"({c})" in response]
    bracketed, by_letter = bool(candidates), True
    if not candidates:
        candidates = [c for c in letters if f" {c} " in response]
    if not candidates and len(response.split()) > 5:
        candidates = [i for i, ans in index2ans.items() if ans.lower() in response.lower()]
        by_letter = not candidates
    if not candidates:
        return rng.choice(letters)
    if len(candidates) == 1:
        return candidates[0]
    if not by_letter:
        starts = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    else:
        starts = [response.rfind(f"({c})" if bracketed else f" {c} ") for c in candidates]
    return candidates[starts.index(max(starts))]  # the last one named (numpy argmax: first of ties)


def parse_open(response: str) -> list[Any]:
    """MMMU's ``parse_open_response``: the key sub-responses and the numbers in them, normalised."""
    keys = _key_responses(response)
    found = keys + [n for key in keys for n in extract_numbers(key)]
    return list({n: None for item in found for n in normalise(item)})  # lm-eval: list(set(...)); order aside


def _key_responses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    indicators = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
    keys = []
    for index, part in enumerate(parts):
        if index == len(parts) - 1:
            indicators.append("=")
        shortest = None  # lm-eval's loop: an empty tail is replaced by the next, else only a shorter one
        for tail in (part.split(i)[-1].strip() for i in indicators if i in part):
            if not shortest or len(tail) < len(shortest):
                shortest = tail
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(shortest)
    return keys or [response]


def extract_numbers(text: str) -> list[str]:
    commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", text)
    return commas + scientific + simple


def normalise(text: str) -> list[Any]:
    """A number rounded to 2 decimals, else lower case (one character padded with a space either side)."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [" " + text, text + " "] if len(text) == 1 else [text]
