"""Load benchmark of the inference service: requests/s and p50/p99 latency, batching on against off.

It starts ``python -m autoglm_bench.serve`` on 127.0.0.1 twice in the same run, once with
``serve.batch_size=1`` (no batching) and once with ``--batch-size`` (default 32), and sends /classify
requests (the task's own eval rows, round-robin) from 1, 8 and 32 concurrent clients, each client
sending its next request when the previous one is answered. Every level is bounded by ``--requests``
and ``--seconds``, after a few untimed warm-up requests. The last lines give the requests/s ratio,
batching on / off, at each level.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="toy_sentiment")
    parser.add_argument("--model", default="tiny_glm", help="a model config name (conf/model)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=320, help="requests per level at most")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per level at most")
    parser.add_argument("--batch-size", type=int, default=32, help="serve.batch_size with batching on")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="serve.max_wait_ms with batching on")
    parser.add_argument("override", nargs="*", help="extra config overrides for the server, e.g. threads=2")


def run(args: argparse.Namespace) -> None:
    from autoglm_bench.config import compose, resolve_data_dir
    from autoglm_bench.splits import split_task
    from autoglm_bench.tasks import load_task

    overrides = [f"task={args.task}", f"model={args.model}", *args.override]
    cfg = compose(overrides)
    task = load_task(cfg.task, resolve_data_dir(cfg.data_dir))
    rows = split_task(task, cfg.split_seed, cfg.dev_size, cfg.limit).test
    inputs = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    levels = [int(c) for c in args.clients.split(",")]
    modes = {"off": ["serve.batch_size=1"], "on": [f"serve.batch_size={args.batch_size}"]}
    modes["on"].append(f"serve.max_wait_ms={args.max_wait_ms}")

    print(
        f"serve benchmark: task={args.task} model={args.model} /classify, clients {args.clients}, at most "
        f"{args.requests} requests or {args.seconds:g} s per level; batching on = serve.batch_size={args.batch_size} "
        f"serve.max_wait_ms={args.max_wait_ms:g}, off = serve.batch_size=1"
    )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    table: dict[tuple[str, int], dict[str, float]] = {}
    for mode, settings in modes.items():
        with Server([*overrides, *settings]) as url:
            asyncio.run(load(url, inputs, clients=4, total=16, seconds=30))  # warm-up: model load, first batches
            for clients in levels:
                table[(mode, clients)] = asyncio.run(load(url, inputs, clients, args.requests, args.seconds))

    print(f"{'batching':<10}{'clients':>8}{'requests':>10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for (mode, clients), row in table.items():
        print(
            f"{mode:<10}{clients:>8}{row['requests']:>10.0f}{row['rps']:>10.1f}"
            f"{row['p50'] * 1000:>10.1f}{row['p99'] * 1000:>10.1f}"
        )
    for clients in levels:
        ratio = table[("on", clients)]["rps"] / table[("off", clients)]["rps"]
        print(f"requests/s at {clients} clients, batching on / off: {ratio:.1f}x")


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
    """``clients`` concurrent clients sending /classify requests, ``total`` in all or until ``seconds`` pass:
    completed requests, requests/s, p50 and p99 latency (s). Any non-200 answer stops the benchmark."""
    import httpx

    latencies: list[float] = []
    sent = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < total and time.perf_counter() < deadline:
            body = {"input": inputs[sent % len(inputs)]}
            sent += 1
            t0 = time.perf_counter()
            response = await c.post("/classify", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"/classify answered {response.status_code}: {response.text}")
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50": _quantile(latencies, 0.5),
        "p99": _quantile(latencies, 0.99),
    }


def _quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile of sorted ``values``."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q * len(values) + 0.5) - 1))]
