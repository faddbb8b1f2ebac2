"""A short adversarial load (the CI version of ``python -m autoglm_bench.bench serve-adversarial``, whose
2-minute numbers are in results/serve_adversarial_tiny_glm_cpu.md): a real ``python -m autoglm_bench.serve``
process with its default limits, normal clients beside attackers cycling through the battery of the worst
requests, for 20 seconds. Every attack gets its expected answer, every normal request 200 (or 503 when the
bounded queue is full), the server's peak RSS stays within 500 MB of its size after warm-up, and the normal
requests' p99 within a bound loose enough for a shared 2-core CI machine."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")

SECONDS = 20
RSS_MARGIN_MB = 500
P99_BOUND_S = 20


def test_the_worst_requests_beside_normal_traffic(model_cache, monkeypatch):
    from autoglm_bench.bench.serve import Server
    from autoglm_bench.bench.serve_adversarial import TOKEN_ENV, attack, report

    monkeypatch.setenv(TOKEN_ENV, "adversarial-token")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    overrides = [
        "model=tiny_glm",
        "task=toy_sentiment",
        "threads=1",
        "serve.tasks=[gsm8k]",
        "serve.policy=priority",
        f"serve.api_key_env={TOKEN_ENV}",
    ]
    inputs = [{"text": text} for text in ("a warm, funny film", "dull and far too long", "an instant classic")]
    server = Server(overrides)
    with server as url:
        outcome = asyncio.run(attack(url, server.proc.pid, inputs, SECONDS, 4, 2, "adversarial-token"))
    report(outcome, RSS_MARGIN_MB, P99_BOUND_S)
    assert len(outcome.attacks) >= 15  # most of the battery was sent
    assert not outcome.unexpected, outcome.unexpected[:5]
    assert set(outcome.normal_status) <= {200, 503} and outcome.normal_status[200] >= 10
    failed = [line for line, ok in outcome.bounds(RSS_MARGIN_MB, P99_BOUND_S) if not ok]
    assert not failed, failed
