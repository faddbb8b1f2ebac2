"""Load benchmark of the inference service: requests/s and p50/p99 latency, batching on against off.

It starts two ``python -m autoglm_bench.serve`` processes on 127.0.0.1 in the same run, one with
``serve.batch_size=1`` (no batching) and one with ``--batch-size`` (default 32), warms both up, and loads
them with /classify requests (the task's own test rows, round-robin) from 1, 8 and 32 concurrent clients,
each client sending its next request when the previous one is answered. Each level runs ``--repeats``
rounds per server, alternating between the servers so that load from elsewhere on the machine hits both
alike; every round is bounded by ``--requests`` and ``--seconds``. The table gives the median requests/s
over the rounds, latency percentiles over all requests, and the mean batch size (from the server's
/metrics); the last lines give the requests/s ratio, batching on / off, at each level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="toy_sentiment")
    parser.add_argument("--model", default="tiny_glm", help="a model config name (conf/model)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=200, help="requests per round at most")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per round at most")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per level and server")
    parser.add_argument("--batch-size", type=int, default=32, help="serve.batch_size with batching on")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="serve.max_wait_ms with batching on")
    parser.add_argument("override", nargs="*", help="extra config overrides for the server, e.g. threads=2")


def run(args: argparse.Namespace) -> None:
    from autoglm_bench.config import compose
    from autoglm_bench.data.prepare import prepare

    overrides = [f"task={args.task}", f"model={args.model}", *args.override]
    cfg = compose(overrides)
    prep = prepare(cfg)
    rows = prep.splits.test
    inputs = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    levels = [int(c) for c in args.clients.split(",")]
    modes = {"off": ["serve.batch_size=1"], "on": [f"serve.batch_size={args.batch_size}"]}
    modes["on"].append(f"serve.max_wait_ms={args.max_wait_ms}")

    print(
        f"serve benchmark: task={args.task} model={args.model} /classify; {args.repeats} rounds of at most "
        f"{args.requests} requests or {args.seconds:g} s per level, alternating the two servers; batching on = "
        f"serve.batch_size={args.batch_size} serve.max_wait_ms={args.max_wait_ms:g}, off = serve.batch_size=1"
    )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    runs: dict[tuple[str, int], list[dict]] = {(mode, c): [] for c in levels for mode in modes}
    with Server([*overrides, *modes["off"]]) as off, Server([*overrides, *modes["on"]]) as on:
        urls = {"off": off, "on": on}
        for url in urls.values():  # warm-up: model load, first batches
            asyncio.run(load(url, inputs, clients=4, total=16, seconds=30))
        for clients in levels:
            for _ in range(args.repeats):  # alternate, so that load from elsewhere hits both alike
                for mode, url in urls.items():
                    before = batches(url)
                    result = asyncio.run(load(url, inputs, clients, args.requests, args.seconds))
                    after = batches(url)
                    runs[(mode, clients)].append(
                        {**result, "batched": after[0] - before[0], "batches": after[1] - before[1]}
                    )

    print(f"{'batching':<10}{'clients':>8}{'requests':>10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'mean batch':>12}")
    rps: dict[tuple[str, int], float] = {}
    for (mode, clients), rounds in runs.items():
        latencies = sorted(t for r in rounds for t in r["latencies"])
        rps[(mode, clients)] = statistics.median(r["rps"] for r in rounds)
        batch = sum(r["batched"] for r in rounds) / max(1.0, sum(r["batches"] for r in rounds))
        print(
            f"{mode:<10}{clients:>8}{len(latencies):>10}{rps[(mode, clients)]:>10.1f}"
            f"{quantile(latencies, 0.5) * 1000:>10.1f}{quantile(latencies, 0.99) * 1000:>10.1f}{batch:>12.1f}"
        )
    print("req/s: the median over the rounds; p50/p99: over all requests of the level")
    for clients in levels:
        ratio = rps[("on", clients)] / rps[("off", clients)]
        print(f"requests/s at {clients} clients, batching on / off: {ratio:.1f}x")


def batches(url: str) -> tuple[float, float]:
    """(requests batched, batches run) so far, from the server's /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("autoglm_batch_size_sum ", "autoglm_batch_size_count ")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("autoglm_batch_size_sum", 0.0), values.get("autoglm_batch_size_count", 0.0)


class Server:
    """``python -m autoglm_bench.serve`` on a free loopback port, for the duration of a ``with`` block."""

    def __init__(self, overrides: list[str]):
        self.overrides = overrides

    def __enter__(self) -> str:
        cmd = [sys.executable, "-m", "autoglm_bench.serve", *self.overrides, "serve.host=127.0.0.1", "serve.port=0"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if " on http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {' '.join(cmd)}")
        return line.rsplit(" on ", 1)[1].strip()

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


async def load(url: str, inputs: list[dict], clients: int, total: int, seconds: float) -> dict[str, float]:
    """``clients`` concurrent clients, each on its own keep-alive connection, sending /classify requests,
    ``total`` in all or until ``seconds`` pass: the latencies (s) and requests/s.
    Any non-200 answer stops the benchmark."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    latencies: list[float] = []
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def client() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while sent < total and time.perf_counter() < deadline:
                body = json.dumps({"input": inputs[sent % len(inputs)]}).encode()
                sent += 1
                t0 = time.perf_counter()
                status, answer = await post(reader, writer, host, "/classify", body)
                if status != 200:
                    raise RuntimeError(f"/classify answered {status}: {answer.decode(errors='replace')}")
                latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    return {"latencies": latencies, "rps": len(latencies) / elapsed}


async def post(reader: Any, writer: Any, host: str, path: str, body: bytes, headers: str = "") -> tuple[int, bytes]:
    """One HTTP/1.1 POST on an open keep-alive connection: (status, body); ``headers``: more header lines,
    each ending in CRLF. A minimal client, so that the load generator, which shares the machine with the
    server, costs little (httpx's async client capped this benchmark at a few hundred requests/s on 2 cores)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    headers = await reader.readuntil(b"\r\n\r\n")
    status = int(headers.split(b" ", 2)[1])
    length = next(
        (int(line.split(b":", 1)[1]) for line in headers.split(b"\r\n") if line.lower().startswith(b"content-length:")),
        0,
    )
    return status, await reader.readexactly(length)


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile of sorted ``values``."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q * len(values) + 0.5) - 1))]
