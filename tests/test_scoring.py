"""The batched scorer must agree with the naive per-pair forward passes; generation must stop."""

from __future__ import annotations

import random

import pytest

from autoglm_bench.scoring import encode_requests, generate_until, loglikelihood, loglikelihood_naive

WORDS = "the a film movie was good bad great terrible plot actor story boring fun quite very not".split()


def _requests(seed: int, n: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 40)))
        if rng.random() < 0.3:
            context += " "  # a trailing space moves to the continuation, as in lm-evaluation-harness
        n_choices = rng.randint(1, 5)
        choices = [" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(n_choices)]
        out.append((context, choices))
    return out


@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_batched_loglikelihood_equals_naive(tiny_lm, batch_size):
    requests = _requests(seed=batch_size, n=60)
    lengths = {len(c.split()) for c, _ in requests}
    counts = {len(ch) for _, ch in requests}
    assert len(lengths) > 10 and counts == {1, 2, 3, 4, 5}  # the case mix the test claims to cover
    batched, b_stats = loglikelihood(tiny_lm, requests, batch_size=batch_size, progress=False)
    naive, n_stats = loglikelihood_naive(tiny_lm, requests, progress=False)
    assert [len(r) for r in batched] == [len(ch) for _, ch in requests]
    for row_b, row_n in zip(batched, naive):
        for b, n in zip(row_b, row_n):
            assert b == pytest.approx(n, abs=1e-4)
    assert b_stats.examples == n_stats.examples == len(requests)
    assert b_stats.tokens < n_stats.tokens  # each context is fed once, not once per choice


def test_truncation_keeps_the_end_of_a_long_context(tiny_lm, monkeypatch):
    monkeypatch.setattr(tiny_lm, "max_length", 24)
    long_context = " ".join(["film"] * 100) + " was"
    requests = [(long_context, [" good", " terrible movie"]), ("short one", [" x"])]
    enc = encode_requests(tiny_lm.tokenizer, 24, requests)
    # lm-eval cuts each (context, continuation) pair to its last max_length + 1 tokens: the one-token and
    # the two-token choice of the first request see contexts cut differently
    whole = tiny_lm.tokenizer(long_context)["input_ids"]
    assert [(e.example, e.choices) for e in enc] == [(0, (0,)), (0, (1,)), (1, (0,))]
    for e in enc[:2]:
        (cont,) = e.continuations
        assert e.context == whole[-(25 - len(cont)) :]
    assert len(enc[0].context) != len(enc[1].context)
    batched, _ = loglikelihood(tiny_lm, requests, batch_size=2, progress=False)
    naive, _ = loglikelihood_naive(tiny_lm, requests, progress=False)
    assert batched[0] == pytest.approx(naive[0], abs=1e-4)


def test_scores_are_real_log_probabilities(tiny_lm):
    (lls,), _ = loglikelihood(tiny_lm, [("the film was", [" good", " good good good"])], progress=False)
    assert all(v < 0 for v in lls)
    assert lls[1] < lls[0]  # more tokens of a random model: strictly less likely


def test_generation_stops_at_stop_strings(tiny_lm):
    contexts = ["the film was", "a very long review of the movie that was quite boring"]
    free, _ = generate_until(tiny_lm, contexts, until=[], max_new_tokens=12, progress=False)
    assert all(free)
    stop = free[0][3:6]  # something the unconstrained output contains
    stopped, stats = generate_until(tiny_lm, contexts, until=[stop], max_new_tokens=12, progress=False)
    assert stop not in stopped[0] and free[0].startswith(stopped[0])
    assert stats.examples == 2 and stats.tokens > 0


def test_shared_few_shot_prefix_is_encoded_once(tiny_lm):
    demos = "Review: the film was great\nSentiment: positive\n\nReview: the plot was dull\nSentiment: negative\n\n"
    requests = [(demos + context, choices) for context, choices in _requests(seed=7, n=30)]
    batched, b_stats = loglikelihood(tiny_lm, requests, batch_size=8, progress=False)
    naive, _ = loglikelihood_naive(tiny_lm, requests, progress=False)
    for row_b, row_n in zip(batched, naive):
        assert row_b == pytest.approx(row_n, abs=1e-4)
    enc = encode_requests(tiny_lm.tokenizer, tiny_lm.max_length, requests)
    prefix_tokens = len(tiny_lm.tokenizer(demos.rstrip())["input_ids"])
    fed_without_reuse = sum(len(e.context) + sum(len(c) - 1 for c in e.continuations) for e in enc)
    assert b_stats.tokens <= fed_without_reuse - (len(requests) - 1) * (prefix_tokens - 2)


@pytest.mark.parametrize("plain_head", [True, False])
def test_one_pass_scoring_equals_naive_with_either_head_path(tiny_lm, monkeypatch, plain_head):
    """Choices side by side in one row (block mask), with and without a shared prefix, through the output
    head applied at the read positions only or through the model's own forward (``logits_to_keep``)."""
    from autoglm_bench import scoring

    if not plain_head:
        monkeypatch.setattr(scoring, "PLAIN_HEAD_MODELS", set())
    demos = "Review: the film was great\nSentiment: positive\n\nReview: the plot was dull\nSentiment: negative\n\n"
    for requests in (_requests(seed=11, n=24), [(demos + c, ch) for c, ch in _requests(seed=12, n=24)]):
        assert sum(len(ch) > 1 for _, ch in requests) > 10  # rows with several choices side by side
        batched, _ = loglikelihood(tiny_lm, requests, batch_size=8, progress=False)
        naive, _ = loglikelihood_naive(tiny_lm, requests, progress=False)
        for row_b, row_n in zip(batched, naive):  # float32 sums of ~100: 1e-6 relative is a few ulps
            assert row_b == pytest.approx(row_n, rel=1e-6, abs=1e-6)
