"""Adversarial load on the inference service: the worst requests mixed with normal traffic, bounded in time.

It starts ``python -m autoglm_bench.serve`` on 127.0.0.1 with its default limits, warms it up, and for
``--seconds`` runs ``--clients`` normal clients (/classify on the task's own test rows, each sending its
next request when the previous one is answered) beside ``--attackers`` clients that cycle through a
battery of the worst requests: a 1 MB stop string, 20,000 stop strings, non-finite priorities, a declared
50 MB body, a 50 MB chunked body, wrong content types, Host headers, routes and methods, malformed and
deeply nested JSON, an unknown task, 32 long prompts in one completion (over serve.max_request_tokens), the
most expensive requests the limits allow (16 stop strings of 256 characters with 512 new tokens, 9 long
prompts in one completion, echo with 20 logprobs over a long prompt, an input of the largest size) and a
burst of 300 concurrent requests against the bounded queue. The server's memory is sampled throughout
(VmRSS, and its peak VmHWM at the end).

With ``--policy priority`` the server takes a bearer token (``serve.api_key_env``) and has
``serve.policy=priority``: every client sends the token, the normal clients ask for priority 100 (the most)
and the attackers keep the default 0 (the one attack that raises priority sends no token).

It prints what every attack got, the normal requests' p50/p99 latency, the server's RSS after warm-up and
at its peak, and checks the bounds: peak RSS at most the RSS after warm-up plus the model's bytes plus
``--rss-margin-mb`` (500), and the normal requests' p99 at most ``--p99-bound-s``; it exits with status 1
when a bound is broken, an attack gets an answer outside its expected statuses, or a normal request gets
anything but 200 or 503.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .serve import Server, quantile

BURST = 300
TOKEN_ENV = "AUTOGLM_BENCH_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="toy_sentiment")
    parser.add_argument("--model", default="tiny_glm", help="a model config name (conf/model)")
    parser.add_argument("--seconds", type=float, default=120.0, help="how long the load runs")
    parser.add_argument("--clients", type=int, default=8, help="normal clients")
    parser.add_argument("--attackers", type=int, default=4, help="clients sending the battery")
    parser.add_argument(
        "--policy", choices=["fifo", "priority"], default="fifo", help="priority: normal clients at priority 100"
    )
    parser.add_argument("--rss-margin-mb", type=float, default=500.0, help="peak RSS bound above warm-up + model")
    parser.add_argument("--p99-bound-s", type=float, default=10.0, help="normal requests' p99 latency bound")
    parser.add_argument("override", nargs="*", help="extra config overrides for the server, e.g. threads=1")


@dataclass
class Outcome:
    """What one adversarial run saw."""

    attacks: dict[str, Counter] = field(default_factory=dict)  # attack -> status -> count
    unexpected: list[str] = field(default_factory=list)  # attacks answered outside their expected statuses
    normal: list[float] = field(default_factory=list)  # answered normal requests' latencies (s)
    normal_status: Counter = field(default_factory=Counter)
    rss_ready_mb: float = 0.0
    rss_peak_mb: float = 0.0  # sampled during the load
    hwm_mb: float = 0.0  # the process's own peak (VmHWM), start-up included
    model_mb: float = 0.0
    busy: float = 0.0  # the share of the run (to the last answer) the batch worker spent in model batches

    def bounds(self, rss_margin_mb: float, p99_bound_s: float) -> list[tuple[str, bool]]:
        rss_bound = self.rss_ready_mb + self.model_mb + rss_margin_mb
        p99 = quantile(sorted(self.normal), 0.99)
        return [
            (
                f"peak RSS {self.rss_peak_mb:.0f} MB <= {rss_bound:.0f} MB (after warm-up + model + {rss_margin_mb:g})",
                self.rss_peak_mb <= rss_bound,
            ),
            (f"normal p99 {p99:.2f} s <= {p99_bound_s:g} s", p99 <= p99_bound_s),
            (f"every attack got an expected status ({len(self.unexpected)} did not)", not self.unexpected),
            (
                f"every normal request answered 200 or 503 ({dict(self.normal_status)})",
                set(self.normal_status) <= {200, 503},
            ),
        ]


def run(args: argparse.Namespace) -> None:
    from autoglm_bench.config import compose
    from autoglm_bench.data.prepare import prepare

    overrides = [f"task={args.task}", f"model={args.model}", "serve.tasks=[gsm8k]", *args.override]
    token = None
    if args.policy == "priority":
        token = secrets.token_hex(16)
        os.environ[TOKEN_ENV] = token  # the server process inherits it
        overrides += ["serve.policy=priority", f"serve.api_key_env={TOKEN_ENV}"]
    cfg = compose(overrides)
    rows = prepare(cfg).splits.test
    inputs = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    print(
        f"serve adversarial benchmark: task={args.task} model={args.model}, {args.seconds:g} s, {args.clients} normal "
        f"clients (/classify) and {args.attackers} attackers cycling through the battery; the server's default limits, "
        f"serve.policy={args.policy}" + (" (normal clients authenticated, priority 100)" if token else "")
    )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    server = Server(overrides)
    with server as url:
        outcome = asyncio.run(attack(url, server.proc.pid, inputs, args.seconds, args.clients, args.attackers, token))
    report(outcome, args.rss_margin_mb, args.p99_bound_s)
    if not all(ok for _, ok in outcome.bounds(args.rss_margin_mb, args.p99_bound_s)):
        raise SystemExit(1)


def report(outcome: Outcome, rss_margin_mb: float, p99_bound_s: float) -> None:
    print(f"{'attack':<58}{'answers':>9}  statuses")
    for name, statuses in outcome.attacks.items():
        print(f"{name:<58}{sum(statuses.values()):>9}  {dict(sorted(statuses.items()))}")
    lat = sorted(outcome.normal)
    print(
        f"normal /classify: {len(lat)} answered, statuses {dict(outcome.normal_status)}, p50 "
        f"{quantile(lat, 0.5) * 1000:.0f} ms, p99 {quantile(lat, 0.99) * 1000:.0f} ms, "
        f"max {max(lat, default=0) * 1000:.0f} ms"
    )
    print(
        f"server RSS: {outcome.rss_ready_mb:.0f} MB after warm-up, {outcome.rss_peak_mb:.0f} MB at its peak under load "
        f"(VmHWM {outcome.hwm_mb:.0f} MB); model weights {outcome.model_mb:.1f} MB"
    )
    print(f"batch worker busy in model batches {outcome.busy:.0%} of the run (autoglm_compute_seconds_total)")
    for line, ok in outcome.bounds(rss_margin_mb, p99_bound_s):
        print(f"{'PASS' if ok else 'FAIL'}: {line}")
    for line in outcome.unexpected[:10]:
        print(f"unexpected: {line}")


def memory_mb(pid: int, key: str) -> float:
    """A /proc/PID/status memory field (VmRSS, VmHWM) in MB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


# ---------------------------------------------------------------- the battery


def json_request(
    path: str, body: Any, host: str = "127.0.0.1", kind: str = "application/json", method: str = "POST", auth: str = ""
) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {kind}\r\nContent-Length: {len(data)}\r\n"
    return (head + auth + "Connection: close\r\n\r\n").encode() + data


def auth_header(token: str | None) -> str:
    return f"Authorization: Bearer {token}\r\n" if token else ""


def battery(token: str | None = None) -> list[tuple[str, Any, set[int]]]:
    """(name, raw request bytes or what to send, expected statuses) of the worst requests we know, each with
    the bearer ``token`` (but the one raising priority without it)."""
    req = functools.partial(json_request, auth=auth_header(token))
    nested = b'{"input": {"text": ' + b"[" * 100000 + b"]" * 100000 + b"}}"
    long_prompt = "The film was " * 1200  # ~2,400 tokens: over model.max_length with any completion
    echo_prompt = "a fine film " * 300  # ~1,500 tokens
    return [
        ("1 MB stop string", req("/generate", {"prompt": "x", "stop": ["x" * 1_000_000]}), {413}),
        ("20,000 stop strings", req("/v1/completions", {"prompt": "x", "stop": ["s"] * 20000}), {413}),
        (
            "16 stop strings of 256 chars, 512 new tokens (allowed)",
            req("/generate", {"prompt": "Once upon a time", "max_new_tokens": 512, "stop": ["q" * 256] * 16}),
            {200, 503},
        ),
        ("priority NaN", req("/classify", b'{"input": {"text": "x"}, "priority": NaN}'), {422}),
        ("priority 1e400", req("/classify", b'{"input": {"text": "x"}, "priority": 1e400}'), {422}),
        (
            "priority 100 without a token",
            json_request("/classify", {"input": {"text": "x"}, "priority": 100}),
            {401 if token else 403},
        ),
        ("declared 50 MB body", "declared", {413}),
        ("chunked 50 MB body", "chunked", {413}),
        ("text/plain body", req("/classify", {"input": {"text": "x"}}, kind="text/plain"), {415}),
        ("foreign Host header", req("/classify", {"input": {"text": "x"}}, host="evil.example"), {400}),
        ("unknown route", req("/admin", {}), {404}),
        ("wrong method", req("/classify", {}, method="PUT"), {405}),
        ("long prompt with logprobs", req("/v1/completions", {"prompt": long_prompt, "logprobs": 5}), {413}),
        (
            "32 prompts of 4,000 chars (53,000 tokens)",
            req("/v1/completions", {"prompt": ["a fine film " * 333] * 32, "max_tokens": 16}),
            {413},
        ),
        (
            "9 prompts of 4,000 chars, 16 tokens each (allowed)",
            req("/v1/completions", {"prompt": ["a fine film " * 333] * 9, "max_tokens": 16}),
            {200, 503},
        ),
        (
            "echo + 20 logprobs over a 1,500-token prompt (allowed)",
            req("/v1/completions", {"prompt": echo_prompt, "max_tokens": 0, "echo": True, "logprobs": 20}),
            {200, 503},
        ),
        (
            "input of 16,000 characters (allowed)",
            req("/classify", {"input": {"text": "é" * 15996}}),
            {200, 503},
        ),
        ("JSON nested 100,000 deep", req("/classify", nested), {400}),
        ("malformed JSON", req("/classify", b'{"input": {"text": "x"'), {400}),
        ("unknown task", req("/classify", {"task": "sst2", "input": {"sentence": "x"}}), {404}),
        (f"burst of {BURST} concurrent requests", "burst", {200, 503}),
    ]


async def exchange(host: str, port: int, raw: bytes) -> int:
    """Send one raw request on a new connection; the answer's status (0: the connection was dropped)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        line = await reader.readline()
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (ConnectionError, IndexError, ValueError):
        return 0
    finally:
        writer.close()


async def big_body(host: str, port: int, chunked: bool, auth: str = "") -> int:
    """A 50 MB body: declared in Content-Length with none sent, or sent in chunks until the server answers."""
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}"
    try:
        if not chunked:
            writer.write(f"{head}Content-Length: {50 * 2**20}\r\n\r\n".encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 30)
            return int(line.split()[1])
        writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        answer = asyncio.ensure_future(reader.readline())
        piece = b"x" * 65536
        for _ in range(800):
            if answer.done():
                break
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        line = await asyncio.wait_for(answer, 30)
        return int(line.split()[1])
    except (ConnectionError, IndexError, ValueError, asyncio.TimeoutError):
        return 0
    finally:
        writer.close()


async def attack(
    url: str, pid: int, inputs: list[dict], seconds: float, clients: int, attackers: int, token: str | None = None
) -> Outcome:
    """The load itself, against the server at ``url`` (process ``pid``); with ``token``, the normal clients
    send it and priority 100, the attackers send it at the default priority."""
    from .serve import post

    host, port_text = url.removeprefix("http://").rsplit(":", 1)
    port = int(port_text)
    outcome = Outcome()
    auth = auth_header(token)
    warm = json_request("/v1/completions", {"prompt": "warm", "max_tokens": 2, "logprobs": 1}, auth=auth)
    for _ in range(3):  # warm-up: model load, first batches of each kind
        await exchange(host, port, warm)
        await exchange(host, port, json_request("/classify", {"input": inputs[0]}, auth=auth))
    outcome.rss_ready_mb = outcome.rss_peak_mb = memory_mb(pid, "VmRSS")
    get = f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n".encode()
    metrics = await exchange_body(host, port, get)
    outcome.model_mb = sample_sum(metrics, "autoglm_model_memory_bytes") / 2**20
    computed = sample_sum(metrics, "autoglm_compute_seconds_total")
    started = time.monotonic()
    deadline = started + seconds
    attacks = battery(token)
    normal_extra = {"priority": 100} if token else {}

    async def normal() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = 0
        try:
            while time.monotonic() < deadline:
                body = json.dumps({"input": inputs[i % len(inputs)], **normal_extra}).encode()
                i += 1
                t0 = time.perf_counter()
                status, _ = await post(reader, writer, host, "/classify", body, auth)
                outcome.normal_status[status] += 1
                if status == 200:
                    outcome.normal.append(time.perf_counter() - t0)
        finally:
            writer.close()

    async def attacker(offset: int) -> None:
        i = offset
        while time.monotonic() < deadline:
            name, request, expected = attacks[i % len(attacks)]
            i += 1
            if request == "burst":
                raw = json_request("/classify", {"input": {"text": "burst"}}, auth=auth)
                statuses = await asyncio.gather(*(exchange(host, port, raw) for _ in range(BURST)))
            elif request in ("declared", "chunked"):
                statuses = [await big_body(host, port, request == "chunked", auth)]
            else:
                statuses = [await exchange(host, port, request)]
            counts = outcome.attacks.setdefault(name, Counter())
            for status in statuses:
                counts[status] += 1
                if status not in expected:
                    outcome.unexpected.append(f"{name}: {status}")

    async def sample() -> None:
        while time.monotonic() < deadline:
            outcome.rss_peak_mb = max(outcome.rss_peak_mb, memory_mb(pid, "VmRSS"))
            await asyncio.sleep(0.1)

    await asyncio.gather(sample(), *(normal() for _ in range(clients)), *(attacker(k * 5) for k in range(attackers)))
    outcome.rss_peak_mb = max(outcome.rss_peak_mb, memory_mb(pid, "VmRSS"))
    outcome.hwm_mb = memory_mb(pid, "VmHWM")
    computed = sample_sum(await exchange_body(host, port, get), "autoglm_compute_seconds_total") - computed
    outcome.busy = computed / (time.monotonic() - started)
    return outcome


def sample_sum(metrics: str, name: str) -> float:
    """The sum of a Prometheus metric's samples over its labels."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name + "{"))


async def exchange_body(host: str, port: int, raw: bytes) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        return (await reader.read()).decode(errors="replace")
    finally:
        writer.close()
