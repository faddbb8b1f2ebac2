"""model=openai against this project's own server (``python -m autoglm_bench.serve`` serving the tiny GLM on a
loopback port): the same predictions and log-likelihoods as the in-process model, on real data; faults
injected by a loopback proxy (429 with Retry-After, 503, a dropped connection, a stall past the timeout)
cost retries and nothing else; a killed run resumes sending only what its cache lacks."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from omegaconf import OmegaConf  # noqa: E402

from autoglm_bench.config import ConfigError, compose  # noqa: E402
from autoglm_bench.methods.evaluate import run_evaluate  # noqa: E402

from .conftest import cache_rows, kill_once_cached, openai_model, read_results, run_ok
from .fault_proxy import FaultProxy  # noqa: E402

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def evaluate(task: str, *overrides: str) -> dict:
    run = compose([f"task={task}", "dev_size=0", "method.cache=false", "threads=1", *overrides])
    return run_evaluate(run, score_dev=False)


@pytest.mark.parametrize(
    ("task", "overrides"),
    [
        ("sst2", ["limit=24"]),
        ("sst2", ["limit=20", "prompt.k_shot=5"]),
        ("copa", ["limit=20"]),
        ("cb", ["limit=16"]),
    ],
    ids=["sst2-0shot", "sst2-5shot", "copa", "cb"],
)
def test_served_model_scores_as_the_in_process_model(task, overrides, served_tiny_glm, data_dir):
    data = f"data_dir={data_dir}"
    local = evaluate(task, data, "model=tiny_glm", *overrides)
    remote = evaluate(task, data, *openai_model(served_tiny_glm), *overrides)
    assert remote["prompt_example"] == local["prompt_example"]
    assert [p["id"] for p in remote["predictions"]] == [p["id"] for p in local["predictions"]]
    for r, s in zip(remote["predictions"], local["predictions"]):
        assert r["prediction"] == s["prediction"], r["id"]
        assert r["scores"] == pytest.approx(s["scores"], abs=1e-4), r["id"]
    assert remote["metrics"] == local["metrics"]
    cost = remote["cost"]
    assert cost["http_requests"] > 0 and cost["retries"] == 0
    assert cost["prompt_tokens"] >= local["cost"]["tokens_processed"] // 2  # the server's own count of what it read
    assert remote["backend"] == "openai" and remote["device"].startswith("http://127.0.0.1:")


@pytest.mark.parametrize(("task", "shots"), [("gsm8k", 2), ("bbh_navigate", 0)])
def test_served_generation_is_the_in_process_generation(task, shots, served_tiny_glm, data_dir):
    common = [f"data_dir={data_dir}", "limit=3", f"prompt.k_shot={shots}", "prompt.fewshot_mode=per_doc"]
    local = evaluate(task, "model=tiny_glm", *common)
    remote = evaluate(task, *openai_model(served_tiny_glm), *common)
    assert [p["output"] for p in remote["predictions"]] == [p["output"] for p in local["predictions"]]
    assert all(p["output"] for p in local["predictions"])
    assert [p["prediction"] for p in remote["predictions"]] == [p["prediction"] for p in local["predictions"]]
    assert remote["metrics"] == local["metrics"]


def test_a_chat_only_server_generates_from_the_messages_and_refuses_multiple_choice(served_tiny_glm, data_dir):
    common = [f"data_dir={data_dir}", "limit=2", "task.generation.max_new_tokens=16", "prompt.system=Be brief."]
    local = evaluate("gsm8k", "model=tiny_glm", "prompt.chat_template=true", *common)
    remote = evaluate("gsm8k", *openai_model(served_tiny_glm, "model.api=chat"), *common)
    assert [p["output"] for p in remote["predictions"]] == [p["output"] for p in local["predictions"]]
    with pytest.raises(ConfigError, match="is multiple choice, scored by log-likelihoods, which a chat-only server"):
        compose(["task=sst2", *openai_model(served_tiny_glm, "model.api=chat")])


def test_bad_openai_settings_are_one_line_errors(served_tiny_glm):
    cases = [
        (["model=openai"], "model=openai needs model.base_url=http(s)://HOST:PORT/v1, got None"),
        ([*openai_model(served_tiny_glm), "model.concurrency=0"], "model=openai needs concurrency >= 1"),
        ([*openai_model(served_tiny_glm), "model.api=rest"], "unknown model.api 'rest'; allowed: completions, chat"),
        ([*openai_model(served_tiny_glm), "method=finetune"], "method=finetune trains weights in this process"),
        ([*openai_model(served_tiny_glm), "backend=ray"], "backend=ray shards a model loaded in this process"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as info:
            compose(overrides)
        assert message in str(info.value) and "\n" not in str(info.value)
    for overrides, message in [
        (["model.served_model=glm9"], "model.served_model='glm9' is not served at http://127.0.0.1:"),
        (["model.api_key_env=AUTOGLM_NO_SUCH_KEY"], "model.api_key_env='AUTOGLM_NO_SUCH_KEY': that environment"),
    ]:
        with pytest.raises(ConfigError, match=message):
            evaluate("toy_sentiment", "limit=2", *openai_model(served_tiny_glm, *overrides))


def fault_at(n: int) -> str | None:
    """A 429 (Retry-After: 1) on every third request, and once each a 503, a dropped connection, a stall."""
    return "429" if n % 3 == 0 else {2: "503", 4: "drop", 5: "stall"}.get(n)


def test_faults_cost_retries_and_nothing_else(served_tiny_glm, tmp_path):
    from autoglm_bench.__main__ import execute

    task = ["task=toy_sentiment", "limit=24", "dev_size=0", "logger=none", "threads=1", "method.cache=false"]
    reference = execute(OmegaConf.structured(compose([*task, *openai_model(served_tiny_glm)])), tmp_path / "ref")
    proxy = FaultProxy(served_tiny_glm.removesuffix("/v1"), fault_at, retry_after=1, stall_s=3.0)
    try:
        settings = ["model.timeout_s=1", "model.max_retries=8", "model.concurrency=2", "model.prompts_per_request=4"]
        run = compose([*task, *openai_model(proxy.url + "/v1", *settings)])
        out = execute(OmegaConf.structured(run), tmp_path / "faults")
    finally:
        proxy.stop()
    kinds = [fault for _, fault, _, _ in proxy.injected]
    assert {"429", "503", "drop", "stall"} <= set(kinds) and kinds.count("429") >= 3
    written = read_results(tmp_path / "faults")
    assert written["status"] == "completed" and written["cost"]["retries"] == len(proxy.injected)
    # every example once, as without faults; every prompt reached the server exactly once
    assert [p["id"] for p in written["predictions"]] == [p["id"] for p in reference["predictions"]]
    for p, q in zip(written["predictions"], reference["predictions"]):
        assert p["prediction"] == q["prediction"] and p["scores"] == pytest.approx(q["scores"], abs=1e-4)
    assert len(proxy.prompts) == len(set(proxy.prompts)) == 2 * out["cost"]["examples_scored"]
    # each rate-limited request came back no sooner than its Retry-After
    for _, fault, digest, when in proxy.injected:
        if fault == "429":
            later = [t for d, t in proxy.forwarded if d == digest and t > when]
            later += [t for _, _, d, t in proxy.injected if d == digest and t > when]
            assert later and min(later) - when >= 0.95


def test_a_killed_run_resumes_sending_only_what_the_cache_lacks(served_tiny_glm, tmp_path):
    proxy = FaultProxy(served_tiny_glm.removesuffix("/v1"), delay_s=0.05)  # 50 ms of network per request
    cache = tmp_path / "cache.sqlite"
    settings = ["model.concurrency=1", "model.prompts_per_request=2"]
    args = ["+experiment=quickstart", "limit=64", "dev_size=8", "method.batch_size=2", "logger=none"]
    args += [*openai_model(proxy.url + "/v1", *settings), f"method.cache_path={cache}"]
    try:
        kill_once_cached(cache, *args, f"hydra.run.dir={tmp_path / 'killed'}", env=ONE_THREAD)
        stored = cache_rows(cache)
        sent_before = len(proxy.prompts)
        proxy.reset()
        out = run_ok(tmp_path / "resumed", *args, env=ONE_THREAD)
    finally:
        proxy.stop()
    distinct = out["cost"]["examples_scored"] + stored
    assert 0 < stored < distinct, f"kill the run while its cache holds some but not all rows: {stored}/{distinct}"
    assert sent_before >= 2 * stored
    # only the missing requests were sent (two prompts each: toy_sentiment's two choices), each once
    assert len(proxy.prompts) == len(set(proxy.prompts)) == 2 * (distinct - stored)
    assert out["cost"]["cache_hits"] == 64 - (distinct - stored) and cache_rows(cache) == distinct
