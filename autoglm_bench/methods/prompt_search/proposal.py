"""Instruction proposal in the OPRO/APE style: a language model reads earlier instructions with their dev
scores and writes a new one, which becomes the instruction of the trial that asked for it.

A trial asks when the sampler picks ``instruction=proposed``; the text is stored in the trial's user
attribute ``instruction`` (a resumed or retried trial reuses it), so it joins the pool the next
meta-prompts show. With the offline tiny_glm the proposals are gibberish; a real GLM makes them useful.
"""

from __future__ import annotations

from typing import Any

from ...lm import LM

META_PROMPT_HEAD = (
    'Your task is to write an instruction for the task "{task}". Below are earlier instructions with their '
    "accuracy on development examples, from worst to best.\n\n"
)
META_PROMPT_TAIL = "Write a new instruction, different from all of the above, with a higher accuracy.\nInstruction:"


def instruction_history(trials: list[Any], limit: int) -> list[tuple[str, float]]:
    """(instruction text, best dev score) of the finished complete trials, the ``limit`` best, worst first."""
    best: dict[str, float] = {}
    for t in trials:
        text = t.user_attrs.get("instruction")
        if t.state.name != "COMPLETE" or not text:
            continue
        best[text] = max(best.get(text, float("-inf")), t.values[0])
    return sorted(best.items(), key=lambda item: item[1])[-limit:]


def meta_prompt(task_name: str, history: list[tuple[str, float]]) -> str:
    """The meta-prompt shown to the proposer.

    >>> print(meta_prompt("sst2", [("Classify it.", 0.61), ("Is it positive?", 0.8)]))  # doctest: +ELLIPSIS
    Your task is to write an instruction for the task "sst2". Below are earlier instructions ...
    Instruction: Classify it.
    Accuracy: 61.0%
    <BLANKLINE>
    Instruction: Is it positive?
    Accuracy: 80.0%
    <BLANKLINE>
    Write a new instruction, different from all of the above, with a higher accuracy.
    Instruction:
    """
    body = "".join(f"Instruction: {text}\nAccuracy: {100 * score:.1f}%\n\n" for text, score in history)
    return META_PROMPT_HEAD.format(task=task_name) + body + META_PROMPT_TAIL


def propose_instruction(lm: LM, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of the meta-prompt up to the end of the line: the new instruction."""
    (text,), _ = lm.generate_until([prompt], until=["\n"], max_new_tokens=max_new_tokens, batch_size=1, progress=False)
    return " ".join(text.split())
