"""Running the service: uvicorn on a port, with a shutdown bounded by ``serve.shutdown_timeout_s``.

On SIGTERM or SIGINT the server stops accepting connections and new requests (503), lets the requests in
flight finish for up to ``serve.shutdown_timeout_s`` (those still queued shortly before then get 503;
uvicorn cancels any still running at the limit), ends generation in progress after its current token,
waits up to 5 s more for the batch in progress, releases its models and exits; a batch that is still
running then (a task's generation, which cannot be asked to end) is abandoned with the process.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from ..config import RunConfig
from .service import Service

log = logging.getLogger("autoglm_bench.serve")


def uvicorn_server(service: Service, host: str, port: int) -> Any:
    import uvicorn

    from .app import create_app

    server: Any = None
    app = create_app(service, stopping=lambda: server is not None and server.should_exit)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=service.run.serve.shutdown_timeout_s,
    )
    server = uvicorn.Server(config)
    return server


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ServerThread:
    """A server on a background thread (tests, benchmarks): ``url`` once started, ``stop()`` to end."""

    def __init__(self, service: Service, host: str = "127.0.0.1", port: int = 0):
        self.service = service
        self.server = uvicorn_server(service, host, port)
        self.thread = threading.Thread(target=self.server.run, name="autoglm-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        self.url = url(host, self.server.servers[0].sockets[0].getsockname()[1])

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=self.service.run.serve.shutdown_timeout_s + 30)


def serve(run: RunConfig, overrides: list[str]) -> None:
    """Serve until interrupted, printing the address (``serve.port=0``: the free port it got)."""
    import asyncio

    service = Service(run, overrides)
    server = uvicorn_server(service, run.serve.host, run.serve.port)

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                await serving
                return
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"serving {run.model.name} (task {run.task.name}) on {url(run.serve.host, port)}", flush=True)
        await serving

    asyncio.run(main())
    if not service.scheduler.worker.wait_idle(0):
        # A batch that generation cannot be asked to end (a task's generation) is still running: leave now,
        # without the interpreter's teardown, which would abort on the thread still inside torch.
        log.warning("exiting with a batch still running")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
