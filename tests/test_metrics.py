"""Metric definitions, checked by hand against lm-evaluation-harness's formulas."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm_bench.config import TaskConfig
from autoglm_bench.metrics import compute_metrics, extract_answer, macro_f1, normalise_answer


def test_acc_and_acc_norm_match_lm_eval_definitions():
    # lm-eval: acc = argmax(lls) == gold; acc_norm = argmax(lls / len(choice in characters)) == gold.
    predictions = [
        # lls favour the short choice; per character the long one wins: acc right, acc_norm wrong
        {"target": 0, "scores": [-2.0, -3.0], "choices": ["no", "absolutely"]},  # norm: -1.0 vs -0.3
        # acc wrong, acc_norm right
        {"target": 1, "scores": [-1.0, -4.0], "choices": ["a", "positive"]},  # norm: -1.0 vs -0.5
        # both right
        {"target": 2, "scores": [-9.0, -8.0, -1.0], "choices": ["x", "y", "z"]},
        # a tie goes to the first choice (numpy argmax), so this one is wrong for both
        {"target": 1, "scores": [-5.0, -5.0], "choices": ["ab", "cd"]},
    ]
    metrics = compute_metrics(["acc", "acc_norm"], predictions)
    assert metrics == {"acc": pytest.approx(2 / 4), "acc_norm": pytest.approx(2 / 4)}
    per_example_acc = [compute_metrics(["acc"], [p])["acc"] for p in predictions]
    per_example_norm = [compute_metrics(["acc_norm"], [p])["acc_norm"] for p in predictions]
    assert per_example_acc == [1.0, 0.0, 1.0, 0.0]
    assert per_example_norm == [0.0, 1.0, 1.0, 0.0]


def test_macro_f1_by_hand():
    gold = [0, 0, 1, 1, 2]
    pred = [0, 1, 1, 1, 0]
    # label 0: tp=1 fp=1 fn=1 -> 0.5; label 1: tp=2 fp=1 fn=0 -> 0.8; label 2: tp=0 -> 0
    import numpy as np

    assert macro_f1(np.array(gold), np.array(pred)) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    predictions = [
        {"target": g, "scores": [0.0 if i == p else -1.0 for i in range(3)], "choices": ["a", "b", "c"]}
        for g, p in zip(gold, pred)
    ]
    assert compute_metrics(["f1"], predictions)["f1"] == pytest.approx(0.4333333, abs=1e-6)


def test_f1_is_lm_evals_cb_f1_when_a_label_is_missing():
    """Every label counts, one that is neither gold nor predicted as 0: lm-eval's own CB aggregation."""
    import importlib.util

    import lm_eval
    import numpy as np

    path = Path(lm_eval.__file__).parent / "tasks" / "super_glue" / "cb" / "aggregate.py"
    spec = importlib.util.spec_from_file_location("cb_aggregate", path)
    aggregate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(aggregate)
    gold, pred = [0, 0, 1, 1, 1], [0, 1, 1, 1, 0]  # label 2 neither gold nor predicted
    predictions = [
        {"target": g, "scores": [0.0 if i == p else -1.0 for i in range(3)], "choices": ["a", "b", "c"]}
        for g, p in zip(gold, pred)
    ]
    theirs = aggregate.cb_multi_fi(list(zip(pred, gold)))
    assert compute_metrics(["f1"], predictions)["f1"] == pytest.approx(theirs)
    assert macro_f1(np.array(gold), np.array(pred)) != pytest.approx(theirs)  # labels present only: not lm-eval's


def test_exact_match_with_answer_extraction():
    # lm-eval's gsm8k: flexible-extract (last match of the regex, first non-empty group), regexes_to_ignore
    # removed from answer and target alike, "[invalid]" without a match
    cfg = TaskConfig(
        name="gsm",
        target="{{ a }}",
        answer_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)",
        answer_select=-1,
        answer_ignore=[",", r"\$", "(?s).*#### ", r"\.$"],
        type="generation",
    )
    assert extract_answer(cfg, "She pays $1,200. Then 3 more, so 1,203.") == "1203"
    assert extract_answer(cfg, "no number here") == "[invalid]"
    assert normalise_answer(cfg, "2 + 3 = 5\n#### 1,203") == "1203"
    predictions = [
        {"target": "1203", "prediction": extract_answer(cfg, "so 1,203")},
        {"target": "7", "prediction": extract_answer(cfg, "it is 8")},
    ]
    assert compute_metrics(["exact_match"], predictions) == {"exact_match": 0.5}


def test_exact_match_without_pattern_takes_the_whole_generation():
    # lm-eval's bbh strict-match: the generation itself, only the ignored regexes removed and lower-cased
    cfg = TaskConfig(name="bbh", target="{{ t }}", answer_ignore=[r"\.$", "\n"], ignore_case=True, type="generation")
    assert extract_answer(cfg, "True.\n") == "true"
    assert extract_answer(cfg, " True") == " true"  # no stripping: lm-eval counts this as wrong
