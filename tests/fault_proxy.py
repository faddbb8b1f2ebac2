"""A loopback HTTP proxy in front of a real server that injects the faults a served model meets in practice,
and records what reached the server.

Faults are chosen per POST by its number (1, 2, 3, ...): ``faults(n)`` returns None (forward it), ``"429"``
(answer 429 with ``Retry-After``), ``"503"``, ``"drop"`` (close the connection without an answer) or
``"stall"`` (say nothing for ``stall_s``, then close). A faulted request never reaches the server.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class FaultProxy:
    """``url`` forwards to ``upstream`` (a server root, e.g. http://127.0.0.1:8000); ``stop()`` ends it."""

    def __init__(
        self,
        upstream: str,
        faults: Callable[[int], str | None] = lambda n: None,
        retry_after: int = 1,
        stall_s: float = 3.0,
        delay_s: float = 0.0,
    ):
        self.upstream, self.faults, self.retry_after = upstream, faults, retry_after
        self.stall_s, self.delay_s = stall_s, delay_s
        self.lock = threading.Lock()
        self.posts = 0
        self.active = 0  # requests being handled
        self.injected: list[tuple[int, str, str, float]] = []  # (POST number, fault, body digest, time)
        self.forwarded: list[tuple[str, float]] = []  # (body digest, time) of POSTs the server answered
        self.prompts: list[tuple] = []  # every prompt the server was sent, as a tuple of token ids (or text)
        self.client = httpx.Client(timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real server

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._forward(b"")

            def do_POST(self):
                with proxy.lock:
                    proxy.active += 1
                try:
                    self._post()
                except (BrokenPipeError, ConnectionResetError):  # the client went away (a killed run)
                    self.close_connection = True
                finally:
                    with proxy.lock:
                        proxy.active -= 1

            def _post(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                digest = hashlib.sha256(body).hexdigest()
                with proxy.lock:
                    proxy.posts += 1
                    n = proxy.posts
                fault = proxy.faults(n)
                if fault is not None:
                    with proxy.lock:
                        proxy.injected.append((n, fault, digest, time.monotonic()))
                if fault == "429":
                    self._answer(429, b'{"error": "rate limited"}', {"Retry-After": str(proxy.retry_after)})
                elif fault == "503":
                    self._answer(503, b'{"error": "overloaded"}')
                elif fault in ("drop", "stall"):
                    if fault == "stall":
                        time.sleep(proxy.stall_s)
                    self.close_connection = True
                    self.connection.close()
                else:
                    time.sleep(proxy.delay_s)
                    self._forward(body, digest)

            def _forward(self, body: bytes, digest: str | None = None):
                method = "POST" if digest is not None else "GET"
                headers = {"Content-Type": "application/json"}
                reply = proxy.client.request(method, proxy.upstream + self.path, content=body, headers=headers)
                if digest is not None and reply.status_code == 200:
                    prompt = json.loads(body).get("prompt")
                    prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
                    with proxy.lock:
                        proxy.forwarded.append((digest, time.monotonic()))
                        proxy.prompts += [tuple(p) if isinstance(p, list) else p for p in prompts or []]
                self._answer(reply.status_code, reply.content)

            def _answer(self, status: int, content: bytes, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def reset(self) -> None:
        """Forget what was recorded, once the requests being handled are done."""
        deadline = time.monotonic() + 60
        while self.active and time.monotonic() < deadline:
            time.sleep(0.01)
        with self.lock:
            self.injected, self.forwarded, self.prompts = [], [], []

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()
