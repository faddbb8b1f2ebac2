"""Property-based fuzzing of the service from its own OpenAPI document (GET /openapi.json): schemathesis
generates requests for every operation, valid and invalid ones (negative mode: wrong types, values out of
the documented limits, missing and extra fields), and sends them to a real loopback server serving the
tiny GLM. Whatever the request: no 5xx, no traceback, every error body is ``{"error": "<one line>"}``, and
/health answers after each case. The number of cases run is printed at the end of the module.

Bounded for CI: a fixed number of examples per operation, no shrinking, a fixed seed, and small limits on
the server (``serve.max_new_tokens=4`` and the like) so that a valid case costs milliseconds."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")

from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from .test_serve import start  # noqa: E402

EXAMPLES = 20  # per operation and generation mode
KEY, TOKEN = "AUTOGLM_FUZZ_KEY", "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

LIMITS = [
    "serve.max_new_tokens=4",
    "serve.max_stop=4",
    "serve.max_stop_chars=16",
    "serve.max_input_chars=400",
    "serve.max_prompts=3",
    "serve.max_logprobs=3",
    "serve.max_body_bytes=20000",
    "serve.request_timeout_s=30",
    "serve.tasks=[gsm8k]",
    "serve.max_wait_ms=0",
]


@pytest.fixture(scope="module")
def fuzz_server(model_cache):
    import os

    os.environ[KEY] = TOKEN  # authenticated cases may raise priority
    srv = start(*LIMITS, f"serve.api_key_env={KEY}")
    yield srv
    srv.stop()
    del os.environ[KEY]


def operations(url: str):
    """(label, operation) for every operation of the server's OpenAPI document."""
    document = httpx.get(f"{url}/openapi.json", headers=AUTH, timeout=30).json()
    api = schemathesis.openapi.from_dict(document)
    found = [result.ok() for result in api.get_all_operations()]
    return [(f"{op.method.upper()} {op.path}", op) for op in found]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_takes_the_service_down(fuzz_server, mode, request):
    url = fuzz_server.url
    run: dict[str, int] = {}
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for label, operation in operations(url):
            try:
                fuzz_operation(operation, schemathesis.GenerationMode(mode), url, client, label, run, statuses)()
            except Unsatisfiable:  # negative mode: no invalid request exists for it
                assert mode == "negative" and label.startswith("GET"), label  # GET: no body, any path string
    total = sum(run.values())
    posts = [label for label in run if label.startswith("POST")]
    assert len(posts) == 5 and total >= 5 * EXAMPLES // 2  # every operation with a body was exercised
    line = (
        f"serve fuzz ({mode}): {total} cases over {len(run)} operations from /openapi.json, none failed; "
        f"statuses {dict(sorted(statuses.items()))}"
    )
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown whatever -s/-q say
            reporter.write_line(line)


def fuzz_operation(operation, mode, url: str, client, label: str, run: dict, statuses: dict):
    """A Hypothesis test sending EXAMPLES generated cases of one operation and checking each answer."""
    from hypothesis import given

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure shows the case as sent
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(mode))
    def fuzz(case):
        response = case.call(base_url=url, headers=AUTH, timeout=60)
        run[label] = run.get(label, 0) + 1
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        check(case, response)
        assert client.get("/health").status_code == 200

    return fuzz


def check(case, response) -> None:
    text = response.text
    where = f"{case.method} {case.formatted_path} body={str(case.body)[:200]!r} -> {response.status_code}: {text[:300]}"
    assert response.status_code < 500, where
    assert "Traceback" not in text and 'File "' not in text, where
    if response.status_code >= 400:
        body = json.loads(text)
        assert isinstance(body, dict) and list(body) == ["error"], where
        assert isinstance(body["error"], str) and body["error"] and "\n" not in body["error"], where
