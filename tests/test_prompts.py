"""Prompt assembly: instruction, system prompt, seeded demos (random / class-balanced), chat template."""

from __future__ import annotations

from collections import Counter

import pytest

from autoglm_bench.config import ConfigError, compose
from autoglm_bench.prompts import prompt_text, render, render_examples, select_demos
from autoglm_bench.tasks import load_task


def _toy(*overrides: str):
    run = compose(["task=toy_sentiment", *overrides])
    return run, load_task(run.task, None, limit=3)


def test_zero_shot_prompt_is_the_template():
    run, task = _toy()
    ex = render_examples(task, run.prompt, seed=0)[0]
    row = task.rows["eval"][0]
    assert prompt_text(task.cfg, ex.messages) == f"Review: {row['text']}\nSentiment:"
    assert ex.choices == ["negative", "positive"] and ex.target == row["label"]


def test_few_shot_layout_with_instruction_and_system():
    run, task = _toy("prompt.k_shot=2", "prompt.instruction=Classify it.", "prompt.system=Be brief.")
    ex = render_examples(task, run.prompt, seed=0)[0]
    demos = select_demos(task, run.prompt, seed=0)
    text = prompt_text(task.cfg, ex.messages)
    labels = ["negative", "positive"]
    # As lm-eval 0.4 lays out plain text: nothing after the system text (ours: the instruction, then \n\n)
    expected = (
        "Be brief.Classify it.\n\n"
        + "".join(f"Review: {d['text']}\nSentiment: {labels[d['label']]}\n\n" for d in demos)
        + f"Review: {task.rows['eval'][0]['text']}\nSentiment:"
    )
    assert text == expected


def test_demos_come_from_train_and_depend_on_the_seed():
    run, task = _toy("prompt.k_shot=4")
    train_ids = {r["_id"] for r in task.rows["train"]}
    a = [d["_id"] for d in select_demos(task, run.prompt, seed=0)]
    assert a == [d["_id"] for d in select_demos(task, run.prompt, seed=0)]
    assert a != [d["_id"] for d in select_demos(task, run.prompt, seed=1)]
    assert set(a) <= train_ids


@pytest.mark.parametrize("k", [2, 5, 8])
def test_balanced_demos_cover_classes_evenly(k):
    run, task = _toy(f"prompt.k_shot={k}", "prompt.demo_selection=balanced")
    for seed in range(5):
        counts = Counter(d["label"] for d in select_demos(task, run.prompt, seed=seed))
        assert sum(counts.values()) == k and max(counts.values()) - min(counts.values()) <= 1


def test_chat_template_turns(tiny_lm):
    run, task = _toy("prompt=chat", "prompt.k_shot=1")
    ex = render_examples(task, run.prompt, seed=0)[0]
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "user"]
    text = prompt_text(task.cfg, ex.messages, tiny_lm.tokenizer)
    assert text.startswith("[gMASK]<sop><|system|>\n") and text.endswith("<|assistant|>\n")


def test_templates_are_sandboxed():
    with pytest.raises(ConfigError):
        render("{{ text.__class__.__mro__[1].__subclasses__() }}", {"text": "x"})


def test_chat_prompt_needs_a_chat_template(tiny_lm):
    from autoglm_bench.prompts import chat_tokenizer

    run, _ = _toy("prompt=chat")
    assert chat_tokenizer(run.prompt, tiny_lm.tokenizer) is tiny_lm.tokenizer
    assert chat_tokenizer(compose([]).prompt, tiny_lm.tokenizer) is None

    class Plain:
        chat_template = None

    with pytest.raises(ConfigError, match="no chat template"):
        chat_tokenizer(run.prompt, Plain())
