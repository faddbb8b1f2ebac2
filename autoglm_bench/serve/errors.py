"""What a client gets when the service refuses a request: an HTTP status and ``{"error": "<one line>"}``."""

from __future__ import annotations

from typing import Any


class BadRequest(Exception):
    """A request the service refuses: an HTTP status, a one-line reason and any headers (Retry-After, Allow,
    WWW-Authenticate)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def error_body(message: str) -> bytes:
    """The JSON body of an error: one line, whatever the message held."""
    import json

    line = " ".join(part.strip() for part in message.splitlines() if part.strip()) or "error"
    return json.dumps({"error": line}, ensure_ascii=False).encode()


async def send_error(send: Any, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Send an error response on a raw ASGI ``send`` (middleware, before any handler ran)."""
    body = error_body(message)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    """The same error as a Starlette response (exception handlers)."""
    from starlette.responses import Response

    return Response(error_body(message), status_code=status, headers=headers, media_type="application/json")
