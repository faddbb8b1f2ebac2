"""What every HTTP request passes through before a handler (ASGI middleware): :class:`Guard` checks the Host
header, the bearer token, the content type and the body size; :class:`CountRequests` counts and times every
request and turns an error that escaped the handlers into one line."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from .errors import BadRequest, send_error
from .metrics import Metrics

log = logging.getLogger("autoglm_bench.serve")


class Guard:
    """ASGI middleware, before any handler runs:

    - the Host header must name this server (``allowed_hosts``; ``"*"`` allows any): a web page on another
      site, or a DNS name rebound to 127.0.0.1, cannot reach the service (400);
    - with an ``api_key``, every path but /health needs ``Authorization: Bearer <key>`` (401); whether the
      client is authenticated is ``request.state.authenticated``;
    - a POST body must be JSON (``application/json`` or ``application/*+json``; 415) and at most
      ``max_body_bytes``: a larger Content-Length is refused before any of the body is read, and a body
      without one is counted while it is read and refused as soon as it passes the limit (413).
    """

    def __init__(self, app: Any, allowed_hosts: list[str], api_key: str | None, max_body_bytes: int):
        self.app = app
        self.allowed = {h.lower().strip("[]") for h in allowed_hosts}
        self.api_key = None if api_key is None else api_key.encode()
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.lower(), []).append(value)
        hosts = headers.get(b"host", [])
        host = host_name(hosts[0].decode("latin-1")) if len(hosts) == 1 else ""
        if "*" not in self.allowed and host not in self.allowed:
            shown = host[:100] if hosts else "(none)"
            await send_error(send, 400, f"Host {shown!r} is not served here; allowed: serve.allowed_hosts")
            return
        authenticated = False
        if self.api_key is not None:
            given = (headers.get(b"authorization") or [b""])[0]
            authenticated = given[:7].lower() == b"bearer " and hmac.compare_digest(given[7:].strip(), self.api_key)
            if not authenticated and scope["path"] != "/health":
                message = "missing or wrong bearer token; send Authorization: Bearer <token>"
                await send_error(send, 401, message, {"WWW-Authenticate": "Bearer"})
                return
        scope["state"] = {**scope.get("state", {}), "authenticated": authenticated}
        if scope["method"] == "POST":
            kind = (headers.get(b"content-type") or [b""])[0].split(b";")[0].strip().lower()
            if kind != b"application/json" and not (kind.startswith(b"application/") and kind.endswith(b"+json")):
                shown = kind.decode("latin-1")[:100] or "none"
                await send_error(send, 415, f"the body must be JSON (Content-Type: application/json), got {shown!r}")
                return
            length = (headers.get(b"content-length") or [b"0"])[0]
            if length.isdigit() and int(length) > self.max_body_bytes:
                await send_error(send, 413, self.too_large(int(length)))
                return
            receive = self.counted(receive)
        await self.app(scope, receive, send)

    def too_large(self, size: int | None) -> str:
        said = "more than that" if size is None else f"{size} bytes"
        return f"the body is {said}; this server takes at most {self.max_body_bytes} bytes (serve.max_body_bytes)"

    def counted(self, receive: Any) -> Any:
        """``receive`` that raises a 413 :class:`BadRequest` as soon as the body passes the limit."""
        seen = 0

        async def receive_counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise BadRequest(413, self.too_large(None))
            return message

        return receive_counted


def host_name(host: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8080`` -> ``::1``, ``Localhost.`` -> ``localhost``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":")[0]
    return host.rstrip(".")


class CountRequests:
    """ASGI middleware: counts every request by endpoint (route path; "unmatched" when no route matched, so
    clients cannot add labels) and status, and times it. An error that escapes the handlers is a bug, not bad
    input: the client gets one line, the log gets the traceback."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            log.exception("request %s %s failed", scope.get("method"), scope.get("path"))
            if status:
                raise  # the response had begun; the server closes the connection
            status = 500
            await send_error(send, 500, f"internal error ({type(exc).__name__}); see the server log")
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, str(status or 500)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
