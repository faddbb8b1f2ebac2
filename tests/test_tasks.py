"""Every shipped task composes, loads its real data and evaluates end to end (in-process, few rows)."""

from __future__ import annotations

import pytest

from autoglm_bench.config import compose, group_options, resolve_data_dir
from autoglm_bench.data.tasks import load_task
from autoglm_bench.methods.evaluate import run_evaluate
from autoglm_bench.prompts import prompt_text, render_examples

IMAGE_TASKS = ("toy_shapes", "digits", "chartqa", "mmmu")  # tests/test_vlm*.py, tests/test_mmmu.py (local files)
REAL_TASKS = [t for t in group_options("task") if t not in ("toy_sentiment", *IMAGE_TASKS)]
EXPECTED_ROWS = {"sst2": 872, "rte": 277, "boolq": 3270, "cb": 56, "copa": 100, "ag_news": 7600, "gsm8k": 1319}


def test_every_task_file_is_listed_and_valid():
    assert {"sst2", "rte", "boolq", "cb", "copa", "ag_news", "gsm8k", "bbh_navigate"} <= set(REAL_TASKS)
    for name in group_options("task"):
        run = compose([f"task={name}", *(["model=tiny_glm4v"] if name in IMAGE_TASKS else [])])
        assert run.task.name == name and run.task.templates


@pytest.mark.parametrize("name", REAL_TASKS)
def test_real_task_loads_and_evaluates(name, data_dir):
    run = compose([f"task={name}", f"data_dir={data_dir}", "limit=6"])
    task = load_task(run.task, resolve_data_dir(run.data_dir))
    if name in EXPECTED_ROWS:
        assert len(task.rows["eval"]) == EXPECTED_ROWS[name]
    out = run_evaluate(run)
    assert len(out["predictions"]) == 6
    assert set(out["metrics"]) == set(run.task.metrics)
    assert all(0.0 <= v <= 1.0 for v in out["metrics"].values())
    first = out["predictions"][0]
    if run.task.type == "multiple_choice":
        assert len(first["scores"]) == len(first["choices"]) >= 2
    else:
        assert isinstance(first["output"], str) and first["target"]


def test_copa_choices_follow_lm_eval_layout(data_dir):
    run = compose(["task=copa", f"data_dir={data_dir}", "limit=1"])
    task = load_task(run.task, resolve_data_dir(run.data_dir), limit=1)
    (example,) = render_examples(task, run.prompt, seed=0)
    assert prompt_text(task.cfg, example.messages) == "The man turned on the faucet therefore"
    # lm-eval's doc_to_choice starts each choice with a space, after the target delimiter's own
    assert example.choices == [" the toilet filled with water.", " water flowed from the spout."]
    assert example.target == 1


def test_gsm8k_target_is_the_final_number(data_dir):
    run = compose(["task=gsm8k", f"data_dir={data_dir}"])
    task = load_task(run.task, resolve_data_dir(run.data_dir), limit=3)
    assert [e.target for e in render_examples(task, run.prompt, seed=0)] == ["18", "3", "70000"]
