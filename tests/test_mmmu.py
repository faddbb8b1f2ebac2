"""tasks/mmmu.yaml against lm-eval 0.4.13's own MMMU definition (lm_eval/tasks/mmmu/utils.py): prompts and
images on local MMMU-style rows, the parse of a dozen generations, and acc through method=evaluate."""

from __future__ import annotations

import base64
import json
import random

import pytest

from autoglm_bench.config import compose
from autoglm_bench.data.images import encode_png, image_digest, load_image

pytestmark = pytest.mark.usefixtures("one_thread")
OPTIONS = ["a red square", "a blue circle", "<image 2>", "none of these"]


@pytest.fixture
def mmmu_dir(tmp_path):
    """Three MMMU-style rows: multiple choice naming image 1 twice and image 2 in an option, multiple choice
    with one image, and an open question; images as a path, base64 and a data URL."""
    from PIL import Image

    (tmp_path / "mmmu" / "pics").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(tmp_path / "mmmu" / "pics" / "a.png")
    blue = base64.b64encode(encode_png(Image.new("RGB", (32, 32), "blue"))).decode()
    none = {f"image_{i}": None for i in range(1, 8)}
    rows = [
        {**none, "id": "validation_Art_1", "question": "<image 1> What is shown? Compare <image 1>.",
         "options": str(OPTIONS), "answer": "A", "question_type": "multiple-choice", "image_1": "mmmu/pics/a.png",
         "image_2": blue},
        {**none, "id": "validation_Art_2", "question": "Which colour is <image 1>?",
         "options": str(["red", "green", "blue"]), "answer": "C", "question_type": "multiple-choice",
         "image_1": "data:image/png;base64," + blue},
        {**none, "id": "validation_Math_3", "question": "How many sides has the shape in <image 1>?", "options": "[]",
         "answer": "4", "question_type": "open", "image_1": "mmmu/pics/a.png"},
    ]  # fmt: skip
    (tmp_path / "mmmu" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path, rows


def test_prompts_and_images_are_lm_evals(mmmu_dir):
    from lm_eval.tasks.mmmu import utils

    from autoglm_bench.data.prepare import prepare
    from autoglm_bench.prompts import example_inputs

    folder, rows = mmmu_dir
    run = compose(["task=mmmu", "model=tiny_glm4v", f"data_dir={folder}", "dev_size=0"])
    prep = prepare(run)
    inputs = example_inputs(run.task, prep.examples("test", run.prompt, run.seed))
    assert len(inputs) == 3
    for row, given in zip(rows, inputs):
        assert given.text == utils.doc_to_text(row)
        theirs = [load_image(v, folder) for v in utils.doc_to_image(row)]
        assert [image_digest(i) for i in given.images] == [image_digest(i) for i in theirs]
    assert len(inputs[0].images) == 3 and inputs[0].text.startswith("<image> What is shown? Compare <image>.\n\n(A)")


GENERATIONS = [
    "(B)",
    "The answer is (C).",
    "B",
    "I think A or maybe D",
    "Between (A) and (D), it is (D)",
    "the picture shows a blue circle on white",
    "it is a red square, not a blue circle, I think",
    "no idea",
    "",
    "!?",
    "The final answer is 4.",
    "so the total is 1,200 and thus 3.14159",
    "Therefore x = 2.5e3",
    "It is a Square",
]


def test_answer_parsing_equals_lm_evals():
    """Multiple-choice and open parses of the same generations; the random fallback (no letter found) draws
    the same letters in the same order from a fresh Random(42) as lm-eval from its global random seeded 42."""
    from lm_eval.tasks.mmmu import utils

    from autoglm_bench.data.mmmu import parse_choice, parse_open

    letters = ["A", "B", "C", "D"]
    index2ans = dict(zip(letters, OPTIONS))
    rng = random.Random(42)
    state = random.getstate()
    random.seed(42)
    try:
        theirs = [utils.parse_multi_choice_response(g, letters, index2ans) for g in GENERATIONS]
    finally:
        random.setstate(state)
    ours = [parse_choice(g, letters, index2ans, rng) for g in GENERATIONS]
    assert ours == theirs
    assert ours[:7] == ["B", "C", "B", "D", "D", "B", "B"]  # parsed, not drawn: (7) the last option named
    for g in GENERATIONS:
        assert set(parse_open(g)) == set(utils.parse_open_response(g)), g


def test_mmmu_through_method_evaluate_scores_as_lm_evals_process_results(mmmu_dir):
    from lm_eval.tasks.mmmu import utils

    from autoglm_bench.methods.evaluate import run_evaluate

    folder, rows = mmmu_dir
    run = compose(["task=mmmu", "model=tiny_glm4v", f"data_dir={folder}", "dev_size=0",
                   "task.generation.max_new_tokens=6", "method.cache=false", "threads=1"])  # fmt: skip
    record = run_evaluate(run, score_dev=False)
    assert set(record["metrics"]) == {"acc"} and len(record["predictions"]) == 3
    state = random.getstate()
    random.seed(42)  # lm-eval's fallback state after its import, one draw per unparsed row in row order
    try:
        theirs = [utils.process_results(row, [p["output"]])["acc"] for row, p in zip(rows, record["predictions"])]
    finally:
        random.setstate(state)
    assert [p["correct"] for p in record["predictions"]] == theirs
    assert record["metrics"]["acc"] == pytest.approx(sum(theirs) / 3)
    assert record["predictions"][0]["prediction"] in {"A", "B", "C", "D"}


def test_acc_of_a_generation_task_needs_a_judging_hook():
    from autoglm_bench.config import ConfigError

    with pytest.raises(ConfigError, match="metric 'acc' of generation task 'gsm8k' needs a task hook"):
        compose(["task=gsm8k", "task.metrics=[acc]"])
