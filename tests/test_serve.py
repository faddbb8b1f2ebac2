"""The inference service on a real loopback port, called with a real HTTP client (httpx), serving the real
tiny GLM: every endpoint, answers equal to the harness's, batching and priorities, bad input, the model pool."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import weakref

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from autoglm_bench.config import ModelConfig, compose  # noqa: E402

BASE = ["model=tiny_glm", "task=toy_sentiment", "threads=1"]


def start(*overrides: str):
    from autoglm_bench.serve.server import ServerThread
    from autoglm_bench.serve.service import Service

    args = [*BASE, *overrides]
    return ServerThread(Service(compose(args), args))


@pytest.fixture(scope="module")
def server(model_cache):
    srv = start("serve.batch_size=8", "serve.max_wait_ms=20", "serve.tasks=[gsm8k]")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_every_endpoint_answers(client):
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and '<select id="task">' in page.text
    listing = client.get("/tasks").json()
    assert listing["default"] == "toy_sentiment" and "gsm8k" in listing["tasks"]
    assert client.get("/tasks/gsm8k").json()["fields"] == ["question"]
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny_glm"]

    out = client.post("/classify", json={"input": {"text": "a warm, funny film", "label": 1}}).json()
    assert out["label"] in ("negative", "positive") and out["target"] == 1 and len(out["loglikelihoods"]) == 2
    assert out["label"] == out["choices"][max((0, 1), key=lambda i: out["loglikelihoods"][i])]
    same = client.post("/task", json={"input": {"text": "a warm, funny film"}}).json()
    assert same["type"] == "multiple_choice" and same["label"] == out["label"] and "target" not in same
    assert same["loglikelihoods"] == pytest.approx(out["loglikelihoods"], abs=1e-4)

    gen = client.post("/task", json={"task": "gsm8k", "input": {"question": "What is 2+2?"}, "max_new_tokens": 6})
    assert gen.status_code == 200 and gen.json()["type"] == "generation" and isinstance(gen.json()["answer"], str)
    text = client.post("/generate", json={"prompt": "The film was", "max_new_tokens": 4, "stop": ["\n"]}).json()
    assert isinstance(text["text"], str) and "\n" not in text["text"]
    by_task = client.post("/generate", json={"task": "gsm8k", "input": {"question": "1+1?"}, "max_new_tokens": 4})
    assert by_task.status_code == 200 and by_task.json()["text"] == by_task.json()["output"]

    completion = client.post("/v1/completions", json={"prompt": "The film was", "max_tokens": 3, "logprobs": 2}).json()
    choice = completion["choices"][0]
    assert completion["object"] == "text_completion" and completion["usage"]["completion_tokens"] == 3
    lps = choice["logprobs"]
    assert len(lps["tokens"]) == 3 and all(lp <= 0 for lp in lps["token_logprobs"])
    assert all(len(top) == 2 for top in lps["top_logprobs"]) and choice["finish_reason"] == "length"
    # greedy: each chosen token is the most likely one at its position
    assert all(
        lp == pytest.approx(max(top.values()), abs=1e-5) for lp, top in zip(lps["token_logprobs"], lps["top_logprobs"])
    )
    echo = client.post(
        "/v1/completions", json={"prompt": "The film was", "max_tokens": 0, "logprobs": 0, "echo": True}
    ).json()["choices"][0]
    assert echo["text"] == "The film was" and echo["logprobs"]["token_logprobs"][0] is None

    metrics = client.get("/metrics").text
    assert metric(metrics, "autoglm_requests_total", endpoint="/classify", status="200") >= 1
    assert metric(metrics, "autoglm_requests_total", endpoint="/v1/completions", status="200") >= 2
    assert metric(metrics, "autoglm_request_seconds_count", endpoint="/task") >= 2
    assert metric(metrics, "autoglm_model_loaded", model="tiny_glm") == 1
    assert metric(metrics, "autoglm_model_memory_bytes", model="tiny_glm") > 1e6
    assert metric(metrics, "autoglm_tokens_total", model="tiny_glm") > 0
    assert metric(metrics, "autoglm_batch_size_count") >= 6


@pytest.mark.parametrize("k_shot", [0, 2])
def test_classify_equals_the_harness_predictions(k_shot, model_cache):
    """The same rows through method=evaluate and through /classify (sent concurrently, so they are batched
    differently): the same predicted label for every row, log-likelihoods equal to float precision."""
    from autoglm_bench.methods.evaluate import run_evaluate

    overrides = [f"prompt.k_shot={k_shot}", "limit=12", "dev_size=8"]
    run = compose([*BASE, *overrides])
    record = run_evaluate(run, score_dev=False)
    rows = _test_rows(run)
    assert [r["_id"] for r in rows] == [p["id"] for p in record["predictions"]]

    srv = start(*overrides)
    try:
        answers = asyncio.run(_post_all(srv.url, "/classify", [{"input": _public(r)} for r in rows]))
    finally:
        srv.stop()
    for answer, expected in zip(answers, record["predictions"]):
        assert answer.status_code == 200, answer.text
        out = answer.json()
        assert out["prediction"] == expected["prediction"] and out["target"] == expected["target"]
        assert out["loglikelihoods"] == pytest.approx(expected["scores"], abs=1e-4)


def _test_rows(run):
    from autoglm_bench.config import resolve_data_dir
    from autoglm_bench.data.splits import split_task
    from autoglm_bench.data.tasks import load_task

    task = load_task(run.task, resolve_data_dir(run.data_dir))
    return split_task(task, run.split_seed, run.dev_size, run.limit).test


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


async def _post_all(url: str, path: str, bodies: list[dict]) -> list:
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        return await asyncio.gather(*(c.post(path, json=b) for b in bodies))


def test_fifty_concurrent_requests_are_all_answered_in_batches(server, client):
    bodies = [{"input": {"text": f"review number {i}: {'good ' * (i % 5)}film"}} for i in range(50)]
    answers = asyncio.run(_post_all(server.url, "/classify", bodies))
    assert all(a.status_code == 200 for a in answers)
    batches = {}
    for a in answers:
        batch = a.json()["batch"]
        batches.setdefault(batch["seq"], []).append(batch["size"])
    assert sum(len(v) for v in batches.values()) == 50
    assert all(len(sizes) == sizes[0] for sizes in batches.values())  # each batch reports its true size
    assert max(len(v) for v in batches.values()) > 1
    assert max(len(v) for v in batches.values()) <= 8  # serve.batch_size


@pytest.mark.parametrize("policy", ["priority", "fifo"])
def test_priority_requests_overtake_queued_ones(policy, model_cache, monkeypatch):
    """With the worker held, one request is taken, five ordinary ones queue, then three urgent ones (from an
    authenticated client: only those may raise priority): under the priority policy the urgent ones run
    next; under fifo they run last."""
    monkeypatch.setenv("AUTOGLM_TEST_KEY", "s3cret")
    srv = start(
        f"serve.policy={policy}", "serve.batch_size=1", "serve.max_wait_ms=0", "serve.api_key_env=AUTOGLM_TEST_KEY"
    )
    gate = threading.Event()
    srv.service.scheduler.worker.submit(gate.wait)  # the worker is busy until the gate opens
    try:

        async def scenario():
            headers = {"Authorization": "Bearer s3cret"}
            async with httpx.AsyncClient(base_url=srv.url, timeout=60, headers=headers) as c:

                async def send(i, priority):
                    r = await c.post("/classify", json={"input": {"text": f"film {i}"}, "priority": priority})
                    return i, r.json()["batch"]["seq"]

                async def until(condition):
                    while not condition():
                        await asyncio.sleep(0.01)

                def taken():  # batches the dispatcher has taken off the queue
                    return srv.service.metrics.registry.get_sample_value("autoglm_batch_size_count") or 0

                async def enqueue(i, priority):  # one at a time, so that they queue in this order
                    depth = srv.service.scheduler.depth
                    task = asyncio.ensure_future(send(i, priority))
                    await until(lambda: srv.service.scheduler.depth == depth + 1)
                    return task

                first = asyncio.ensure_future(send("first", 0))
                await until(lambda: taken() == 1)  # taken, waiting for the worker
                ordinary = [await enqueue(f"fifo{i}", 0) for i in range(5)]
                urgent = [await enqueue(f"urgent{i}", 10) for i in range(3)]
                gate.set()
                return await asyncio.gather(first, *ordinary, *urgent)

        order = [i for i, _ in sorted(asyncio.run(scenario()), key=lambda x: x[1])]
    finally:
        gate.set()
        srv.stop()
    assert order[0] == "first"
    if policy == "priority":
        assert order[1:4] == ["urgent0", "urgent1", "urgent2"] and order[4:] == [f"fifo{i}" for i in range(5)]
    else:
        assert order[1:] == [f"fifo{i}" for i in range(5)] + ["urgent0", "urgent1", "urgent2"]


BAD = [
    ("/classify", b'{"input": {"text": "unclosed"', 400, "malformed JSON"),
    ("/classify", {"input": {"text": "x"}, "task": "no_such_task"}, 404, "unknown task 'no_such_task'"),
    ("/classify", {"input": {"text": "x"}, "model": "gpt-4"}, 404, "unknown model 'gpt-4'"),
    ("/classify", {"input": {"text": "x" * 20000}}, 413, "at most 16000"),
    ("/generate", {"prompt": "x", "max_new_tokens": -1}, 422, "max_new_tokens must be in 1..512, got -1"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -5}, 422, "max_tokens must be in 0..512, got -5"),
    ("/classify", {"input": {"review": "x"}}, 422, "template error"),
    ("/classify", {"input": {"text": "x"}, "task": "gsm8k"}, 422, "takes multiple_choice tasks"),
    ("/classify", {"input": "just text"}, 422, "input:"),
    ("/classify", {"input": {"text": "x"}, "colour": "red"}, 422, "unknown field 'colour'"),
    ("/v1/completions", {"prompt": "x", "temperature": 0.7}, 400, "only greedy decoding"),
    ("/v1/completions", {"prompt": [5, 4096], "max_tokens": 1}, 422, "token ids must be in 0..4095, the vocabulary"),
    ("/v1/completions", {"prompt": [5, -1]}, 422, "prompt"),
    ("/v1/completions", {"prompt": [[5, 6]] * 33}, 413, "prompt has 33 prompts; this server takes at most 32"),
    ("/v1/completions", {"prompt": [7] * 16001}, 413, "a prompt is 16001 tokens; this server takes at most 16000"),
    ("/v1/completions", {"prompt": [7] * 2048, "max_tokens": 1}, 413, "model 'tiny_glm' takes at most 2048 tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 422, "each message needs a role"),
    ("/v1/chat/completions", {"messages": []}, 422, "messages"),
]


@pytest.mark.parametrize("path,body,status,reason", BAD, ids=[b[3] for b in BAD])
def test_bad_input_gets_a_one_line_4xx_and_the_server_keeps_serving(client, path, body, status, reason):
    if isinstance(body, bytes):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert reason in error and "\n" not in error and "Traceback" not in response.text
    assert client.get("/health").status_code == 200
    assert client.post("/classify", json={"input": {"text": "still fine"}}).status_code == 200


def test_pool_releases_idle_models_reloads_them_and_releases_before_loading(model_cache):
    """Idle release and reload; under a memory budget the least recently used idle model is released before
    the next one loads (the loader sees the pool empty: the peak is one model, not two), and a model in use
    is waited for, never released under its user."""
    from autoglm_bench import lm as backends
    from autoglm_bench.serve.pool import ModelPool, model_bytes

    loads, refs, held_at_load = [], {}, []
    pools = []

    def loader(seed):
        def load():
            held_at_load.append(pools[-1].memory_bytes)
            lm = backends.load(ModelConfig(name=f"glm{seed}", kind="tiny_glm", seed=seed))
            loads.append(seed)
            refs[seed] = weakref.ref(lm.model)
            return lm, model_bytes(lm.model)

        return load

    pool = ModelPool({0: loader(0), 1: loader(1)}, idle_release_s=0.3)
    pools.append(pool)
    with pool.acquire(0) as lm:
        size = pool.memory_bytes
        assert size == model_bytes(lm.model) > 1e6
        time.sleep(0.4)
        assert pool.release_idle() == []  # in flight: kept however long it takes
    del lm
    assert pool.release_idle() == []  # just used
    time.sleep(0.4)
    assert pool.release_idle() == [0]
    gc.collect()
    assert pool.memory_bytes == 0 and refs[0]() is None  # the weights are gone
    with pool.acquire(0):
        pass
    assert loads == [0, 0]  # reloaded on demand

    budget = ModelPool({0: loader(0), 1: loader(1)}, idle_release_s=60, memory_budget_bytes=int(size * 1.5))
    pools.append(budget)
    held_at_load.clear()
    with budget.acquire(0):
        pass
    with budget.acquire(1):
        pass
    assert list(budget.loaded) == [1] and held_at_load == [0, 0]  # 0 went before 1 loaded
    lease = budget.lease(1)  # a batch holds 1 while 0 must load: the load waits for it
    threading.Timer(0.3, lease.close).start()
    with budget.acquire(0):
        assert list(budget.loaded) == [0]
    assert held_at_load == [0, 0, 0]
    assert loads == [0, 0, 0, 1, 0]


def test_server_releases_an_idle_model_and_reloads_it(model_cache):
    srv = start("serve.idle_release_s=0.5")
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            assert c.post("/classify", json={"input": {"text": "fine"}}).status_code == 200
            assert c.get("/health").json()["models_loaded"] == ["tiny_glm"]
            deadline = time.monotonic() + 10
            while c.get("/health").json()["models_loaded"] and time.monotonic() < deadline:
                time.sleep(0.1)
            metrics = c.get("/metrics").text
            assert metric(metrics, "autoglm_model_loaded", model="tiny_glm") == 0
            assert metric(metrics, "autoglm_model_memory_bytes", model="tiny_glm") == 0
            assert metric(metrics, "autoglm_model_pool_events_total", model="tiny_glm", reason="idle") == 1
            assert c.post("/classify", json={"input": {"text": "fine"}}).status_code == 200
            metrics = c.get("/metrics").text
            assert metric(metrics, "autoglm_model_pool_events_total", model="tiny_glm", reason="load") == 2
    finally:
        srv.stop()


def test_cli_serves_on_a_free_port_and_rejects_bad_settings(model_cache, capsys):
    import subprocess

    from autoglm_bench.serve.__main__ import main

    from .conftest import start_cli

    with pytest.raises(SystemExit) as exit_:
        main(["serve.policy=lifo"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "error: unknown serve.policy 'lifo'; allowed: fifo, priority"
    proc = start_cli(
        *BASE,
        "serve.port=0",
        module="autoglm_bench.serve",
        env={"OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving tiny_glm (task toy_sentiment) on http://127.0.0.1:"), proc.stderr.read()
        url = line.split(" on ")[1].strip()
        assert httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"
        body = httpx.post(f"{url}/classify", json={"input": {"text": "a fine film"}}, timeout=60).json()
        assert body["label"] in ("negative", "positive")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("model,peft", [("minilm", "full"), ("tiny_glm", "lora")])
def test_a_finetune_run_directory_is_served_by_task(model, peft, tmp_path, model_cache):
    """A finetune run directory served next to the tiny GLM: MiniLM answers through its classification head,
    the tiny GLM with its LoRA adapter merged through the scorer; /task gives the predictions the finetune
    run recorded for the same rows (and, for the LoRA model, not those of the model it started from)."""
    from omegaconf import OmegaConf

    from autoglm_bench.__main__ import execute

    overrides = [
        "task=toy_sentiment",
        f"model={model}",
        "method=finetune",
        f"peft={peft}",
        "optim.lr=1e-2",
        "limit=8",
        "dev_size=4",
        "method.batch_size=8",
        "trainer.max_steps=3",
        "trainer.checkpoint=false",
        "logger=none",
        "threads=1",
    ]
    run_dir = tmp_path / "run"
    record = execute(OmegaConf.structured(compose(overrides)), run_dir)
    srv = start(f"serve.models=[{run_dir}]", "serve.tasks=[sst2]")
    try:
        rows = _test_rows(compose(overrides))
        bodies = [{"model": "run", "input": _public(r)} for r in rows]  # served under its folder's name
        answers = asyncio.run(_post_all(srv.url, "/task", bodies))
        base = asyncio.run(_post_all(srv.url, "/task", [{"input": _public(r)} for r in rows]))
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            other_task = c.post("/task", json={"model": "run", "task": "sst2", "input": {"sentence": "x"}})
            text = c.post("/generate", json={"model": "run", "prompt": "hello", "max_new_tokens": 2})
            listed = c.get("/v1/models").json()["data"]
    finally:
        srv.stop()
    assert [m["id"] for m in listed] == ["tiny_glm", "run"]  # no absolute path in any answer
    kind = "classification_head" if model == "minilm" else "multiple_choice"
    for answer, expected in zip(answers, record["predictions"]):
        out = answer.json()
        assert out["type"] == kind and out["prediction"] == expected["prediction"]
        assert out["loglikelihoods"] == pytest.approx(expected["scores"], abs=1e-4)
    if model == "minilm":
        assert other_task.status_code == 422 and "fine-tuned on task 'toy_sentiment'" in other_task.json()["error"]
        assert text.status_code == 422 and "does not generate text" in text.json()["error"]
    else:
        assert other_task.status_code == 200 and text.status_code == 200  # a language model serves any task
        shift = max(
            abs(a - b)
            for x, y in zip(answers, base)
            for a, b in zip(x.json()["loglikelihoods"], y.json()["loglikelihoods"])
        )
        assert shift > 1e-3  # the adapter is applied


def test_json_body_must_be_an_object(client):
    response = client.post("/task", content=json.dumps([1, 2]), headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["error"].startswith("body:")


def test_the_page_works_in_a_headless_browser(server, client):
    """Debian's chromium loads /, fills in the task's field from the URL, runs it, and shows the answer and
    each choice's log-likelihood: the ones /classify gives for the same input."""
    import re
    import shutil
    import subprocess
    import urllib.parse

    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no chromium installed (apt-get install chromium)")
    text = "a warm and witty film"
    query = urllib.parse.urlencode({"task": "toy_sentiment", "input": json.dumps({"text": text}), "run": "1"})
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=30000"]
    page = subprocess.run(
        [browser, *flags, "--dump-dom", f"{server.url}/?{query}"], capture_output=True, text=True, timeout=120
    )
    expected = client.post("/classify", json={"input": {"text": text}}).json()
    assert f'<b id="label">{expected["label"]}</b>' in page.stdout, page.stdout[-2000:]
    rows = re.findall(r'<tr( class="best")?><td>(\w+)</td><td>(-?[\d.]+)</td></tr>', page.stdout)
    assert [(name, float(score)) for _, name, score in rows] == [
        (c, pytest.approx(v, abs=1e-3)) for c, v in zip(expected["choices"], expected["loglikelihoods"])
    ]
    assert [name for best, name, _ in rows if best] == [expected["label"]]
