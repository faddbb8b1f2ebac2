"""Prompt assembly: instruction, system prompt, seeded demos (random / class-balanced), chat template."""

from __future__ import annotations

from collections import Counter

import pytest

from autoglm_bench.config import ConfigError, compose
from autoglm_bench.data.tasks import load_task
from autoglm_bench.prompts import prompt_text, render, render_examples, select_demos


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


def _demo_ids(examples) -> list[list[str]]:
    # each demo is a user turn (its rendered template) then an assistant turn; map the text back to the row
    return [[m["content"] for m in ex.messages if m["role"] == "user"][:-1] for ex in examples]


def test_first_n_demos_are_the_first_train_rows():
    run, task = _toy("prompt.k_shot=3", "prompt.fewshot_mode=first_n")
    template = task.cfg.templates["default"]
    first = [render(template, r) for r in task.rows["train"][:4]]
    assert _demo_ids(render_examples(task, run.prompt, seed=0)) == [first[:3]] * 3
    # a row of the train split itself (a dev row) is left out of its own demos
    own = {**task.rows, "eval": task.rows["train"][:1]}
    (ex,) = render_examples(type(task)(task.cfg, task.hook, own), run.prompt, seed=0)
    assert _demo_ids([ex]) == [first[1:4]]


def test_per_doc_demos_are_lm_evals_context_sampler():
    from lm_eval.api.samplers import ContextSampler

    run, task = _toy("prompt.k_shot=4", "prompt.fewshot_mode=per_doc")
    rows = task.rows["train"][:5] + task.rows["eval"]  # dev-like rows (in the pool) and test rows
    task = type(task)(task.cfg, task.hook, {**task.rows, "eval": rows})
    template = task.cfg.templates["default"]
    ours = _demo_ids(render_examples(task, run.prompt, seed=0))
    sampler = ContextSampler([{k: v for k, v in r.items() if k != "_id"} for r in task.rows["train"]], rnd=1234)
    theirs = [
        [render(template, d) for d in sampler.sample(4, eval_doc={k: v for k, v in r.items() if k != "_id"})]
        for r in rows
    ]
    assert ours == theirs and len({tuple(d) for d in ours}) == len(rows)  # a fresh draw per row
    for row, demos in zip(rows[:5], ours):
        assert render(template, row) not in demos
    again = _demo_ids(
        render_examples(
            task,
            compose(
                ["task=toy_sentiment", "prompt.k_shot=4", "prompt.fewshot_mode=per_doc", "prompt.fewshot_seed=7"]
            ).prompt,
            seed=0,
        )
    )
    assert again != ours


def test_fewshot_mode_errors():
    with pytest.raises(ConfigError, match="unknown prompt.fewshot_mode 'per_row'; allowed: fixed, first_n, per_doc"):
        compose(["task=toy_sentiment", "prompt.fewshot_mode=per_row"])
    with pytest.raises(ConfigError, match="demo_selection=balanced picks the demos of prompt.fewshot_mode=fixed"):
        compose(["task=toy_sentiment", "prompt=few_shot", "prompt.fewshot_mode=first_n"])
