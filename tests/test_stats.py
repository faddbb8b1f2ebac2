"""autoglm_bench.stats against hand computations: lm-eval's stderr, exact McNemar, bootstraps."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy.stats import binomtest

from autoglm_bench import stats
from autoglm_bench.metrics import macro_f1


def mc_predictions(targets, predicted, n_choices=2):
    """Multiple-choice predictions whose ``acc`` argmax is ``predicted`` (scores: 0 there, -1 elsewhere)."""
    return [
        {
            "id": f"ex-{i}",
            "target": int(t),
            "prediction": int(p),
            "choices": [f"c{j}" for j in range(n_choices)],
            "scores": [0.0 if j == p else -1.0 for j in range(n_choices)],
        }
        for i, (t, p) in enumerate(zip(targets, predicted))
    ]


def test_stderr_is_lm_eval_mean_stderr():
    x = [1, 0, 1, 1]
    mean = sum(x) / 4
    sample_var = sum((v - mean) ** 2 for v in x) / (4 - 1)  # 0.25
    assert stats.stderr_of_mean(x) == pytest.approx(math.sqrt(sample_var / 4)) == pytest.approx(0.25)
    assert math.isnan(stats.stderr_of_mean([1]))


def test_mcnemar_exact_hand_case_and_scipy():
    # 3 examples both right, 2 both wrong, 1 only A right, 6 only B right.
    a = [1, 1, 1, 0, 0] + [1] + [0] * 6
    b = [1, 1, 1, 0, 0] + [0] + [1] * 6
    result = stats.mcnemar_exact(a, b)
    assert (result["a_only"], result["b_only"], result["n"]) == (1, 6, 12)
    assert result["p_value"] == pytest.approx(2 * (math.comb(7, 0) + math.comb(7, 1)) / 2**7) == 0.125
    assert result["p_value"] == pytest.approx(binomtest(1, 7, 0.5).pvalue)

    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.random(300) < 0.6, rng.random(300) < 0.55
        result = stats.mcnemar_exact(a, b)
        k, n = min(result["a_only"], result["b_only"]), result["a_only"] + result["b_only"]
        assert result["p_value"] == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-9)


def test_mcnemar_without_discordant_pairs_is_one():
    assert stats.mcnemar_exact([1, 0, 1], [1, 0, 1])["p_value"] == 1.0
    with pytest.raises(ValueError, match="one length"):
        stats.mcnemar_exact([1, 0], [1])


def test_per_example_acc_acc_norm_exact_match():
    # The first example: acc picks choice 1, acc_norm choice 0; the second: acc 0, acc_norm 1.
    preds = [
        {"target": 0, "scores": [-4.0, -3.0], "choices": ["aaaa", "b"]},
        {"target": 1, "scores": [-1.0, -2.0], "choices": ["a", "bbbb"]},
    ]
    assert stats.per_example("acc", preds).tolist() == [0.0, 0.0]
    assert stats.per_example("acc_norm", preds).tolist() == [1.0, 1.0]
    gen = [{"target": "42", "prediction": "42"}, {"target": "7", "prediction": "8"}]
    assert stats.per_example("exact_match", gen).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="allowed: acc, acc_norm, exact_match, f1"):
        stats.per_example("bleu", preds)


def test_bootstrap_ci_is_seeded_and_holds_the_estimate():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 300)
    predicted = np.where(rng.random(300) < 0.7, targets, 1 - targets)
    preds = mc_predictions(targets, predicted)
    acc = float(np.mean(predicted == targets))

    ci = stats.bootstrap_ci("acc", preds)
    assert ci == stats.bootstrap_ci("acc", preds, seed=stats.BOOTSTRAP_SEED)
    assert ci != stats.bootstrap_ci("acc", preds, seed=1)
    assert ci[0] < acc < ci[1]
    # A 95% interval of a proportion is about +-1.96 standard errors wide.
    assert ci[1] - ci[0] == pytest.approx(2 * 1.96 * stats.stderr_of_mean(predicted == targets), rel=0.15)

    block = stats.metric_stats(["acc"], preds)
    assert block["acc"]["value"] == pytest.approx(acc)
    assert block["acc"]["stderr"] == pytest.approx(
        statistics.stdev((predicted == targets).astype(float).tolist()) / math.sqrt(300)
    )
    assert block["acc"]["ci95"] == ci and block["acc"]["n"] == 300
    assert block["_method"]["bootstrap_resamples"] == 1000 and block["_method"]["bootstrap_seed"] == 0


def test_f1_stats_resample_gold_prediction_pairs():
    rng = np.random.default_rng(2)
    targets = rng.integers(0, 3, 200)
    predicted = np.where(rng.random(200) < 0.6, targets, rng.integers(0, 3, 200))
    preds = mc_predictions(targets, predicted, n_choices=3)
    f1 = macro_f1(targets, predicted)

    block = stats.metric_stats(["acc", "f1"], preds)
    assert block["f1"]["value"] == pytest.approx(f1)
    replicates = stats.bootstrap_replicates("f1", stats.example_outcomes("f1", preds))
    assert len(replicates) == stats.BOOTSTRAP_RESAMPLES
    assert block["f1"]["stderr"] == pytest.approx(np.std(replicates, ddof=1)) and block["f1"]["stderr"] > 0
    lo, hi = block["f1"]["ci95"]
    assert lo < f1 < hi
    index = [0, 0, 5, 17, 17, 17, 100]
    assert stats.metric_on_resample("f1", preds, index) == pytest.approx(macro_f1(targets[index], predicted[index], 3))


def test_paired_bootstrap_difference_and_sign():
    a = np.r_[np.ones(60), np.zeros(40)]  # A right on 60 of 100
    b = np.r_[np.ones(60), np.ones(20), np.zeros(20)]  # B right on those and 20 more
    up = stats.paired_bootstrap("acc", a, b)
    assert (up["a"], up["b"], up["n"]) == (0.6, 0.8, 100)
    assert up["diff"] == pytest.approx(0.2)
    assert 0 < up["ci95"][0] < 0.2 < up["ci95"][1]
    assert up["p_value"] < 0.01

    down = stats.paired_bootstrap("acc", b, a)
    assert down["diff"] == pytest.approx(-0.2) and down["ci95"][1] < 0
    assert down["ci95"] == pytest.approx([-up["ci95"][1], -up["ci95"][0]])

    same = stats.paired_bootstrap("acc", a, a)
    assert same["diff"] == 0 and same["ci95"] == [0.0, 0.0] and same["p_value"] == 1.0


def test_pooled_seeds_average_the_metric():
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 3, 80)
    runs = [np.where(rng.random(80) < 0.5, targets, rng.integers(0, 3, 80)) for _ in range(3)]
    outcomes = [stats.example_outcomes("f1", mc_predictions(targets, p, 3)) for p in runs]
    pooled = stats.pool_runs("f1", outcomes)
    assert stats.metric_of_outcomes("f1", pooled) == pytest.approx(np.mean([macro_f1(targets, p) for p in runs]))
    correct = [stats.example_outcomes("acc", mc_predictions(targets, p, 3)) for p in runs]
    assert stats.metric_of_outcomes("acc", stats.pool_runs("acc", correct)) == pytest.approx(
        np.mean([np.mean(p == targets) for p in runs])
    )


def test_mean_std_uses_sample_std():
    assert stats.mean_std([0.5]) == (0.5, 0.0, 1)
    values = [0.61, 0.58, 0.66]
    mean, std, n = stats.mean_std(values)
    assert (mean, std, n) == (pytest.approx(statistics.mean(values)), pytest.approx(statistics.stdev(values)), 3)
    with pytest.raises(ValueError):
        stats.mean_std([])


def test_clopper_pearson_is_scipys_exact_interval():
    for k, n in [(0, 7), (1, 7), (6, 12), (12, 12), (40, 200)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert stats.clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_mcnemar_interval_excludes_zero_exactly_when_mcnemar_rejects():
    for a_only in range(0, 12):
        for b_only in range(0, 25):
            p = stats.mcnemar_exact([1] * a_only + [0] * b_only, [0] * a_only + [1] * b_only)["p_value"]
            lo, hi = stats.mcnemar_ci(a_only, b_only, a_only + b_only + 30)
            assert lo <= (b_only - a_only) / (a_only + b_only + 30) <= hi
            assert (lo > 0 or hi < 0) == (p < 0.05), (a_only, b_only, p, lo, hi)


def test_holm_and_bonferroni_by_hand():
    p = [0.030, 0.001, 0.040, 0.012]
    # Holm: ascending 0.001 x4, 0.012 x3, 0.030 x2, 0.040 x1, each at least the one before
    assert stats.adjust_p_values(p, "holm") == pytest.approx([0.060, 0.004, 0.060, 0.036])
    assert stats.adjust_p_values(p, "bonferroni") == pytest.approx([0.12, 0.004, 0.16, 0.048])
    assert stats.adjust_p_values(p, "none") == p
    assert stats.adjust_p_values([], "holm") == []
    with pytest.raises(ValueError, match="allowed: holm, bonferroni, none"):
        stats.adjust_p_values(p, "fdr")


def test_seed_example_test_reduces_to_its_two_parts():
    """Identical seeds: only the example part is left (a paired t-test over examples); seeds that differ by a
    constant on identical rows: the example part vanishes and the paired t over seeds is left (here p = 0)."""
    from scipy.stats import ttest_rel

    from autoglm_bench.seed_stats import seed_example_test

    rng = np.random.default_rng(4)
    a, b = (rng.random(300) < 0.6).astype(float), (rng.random(300) < 0.7).astype(float)
    same = seed_example_test("acc", [a, a], [b, b], [0, 1], [0, 1])
    assert same["seed_var"] == 0 and same["paired_seeds"]
    assert same["p_value"] == pytest.approx(ttest_rel(b, a).pvalue, rel=1e-9)
    assert same["ci95"][0] < same["diff"] < same["ci95"][1]
    unpaired = seed_example_test("acc", [a, a], [b, b, b], [0, 1], [0, 1, 2])
    assert not unpaired["paired_seeds"] and unpaired["p_value"] == pytest.approx(same["p_value"])
