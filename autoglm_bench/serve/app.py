"""The FastAPI app: routes, error handlers (every error is ``{"error": "<one line>"}``) and the OpenAPI
document (``GET /openapi.json``), over a :class:`~.service.Service`."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from ..config import ConfigError, one_line
from .bodies import ChatRequest, CompletionRequest, GenerateRequest, TaskRequest, openapi_schema
from .errors import BadRequest, error_response
from .middleware import CountRequests, Guard
from .service import Service


def create_app(service: Service, stopping: Callable[[], bool] = lambda: False) -> FastAPI:
    """The FastAPI app serving ``service``; the scheduler, the idle-model reaper and the shutdown watch
    (``stopping()``: the server was told to exit) run in its lifespan."""
    from starlette.exceptions import HTTPException

    from .page import PAGE

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        loop = asyncio.get_running_loop()
        background = [loop.create_task(_reap(service)), loop.create_task(_drain_on_exit(service, stopping))]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await service.stop()

    app = FastAPI(title="autoglm-bench", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    sv = service.run.serve
    api_key = None if sv.api_key_env is None else os.environ[sv.api_key_env]
    app.add_middleware(Guard, allowed_hosts=list(sv.allowed_hosts), api_key=api_key, max_body_bytes=sv.max_body_bytes)
    app.add_middleware(CountRequests, metrics=service.metrics)  # outermost: counts what Guard refuses too

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest):
        return error_response(exc.status, str(exc), exc.headers)

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError):
        return error_response(422, one_line(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return error_response(*describe_validation(exc.errors()))

    @app.exception_handler(HTTPException)
    async def no_route(request: Request, exc: HTTPException):
        path = request.url.path[:200]
        if exc.status_code == 404:
            message = f"no such endpoint {path!r}; see GET /openapi.json"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"{request.method} is not allowed on {path!r}; allowed: {allowed}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, exc.headers)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/tasks")
    async def tasks():
        return {"default": service.run.task.name, "tasks": service.tasks.names, "models": list(service.specs)}

    @app.get("/tasks/{name}")
    async def task_info(name: str):
        return service.describe_task(name)

    @app.post("/classify")
    async def classify(request: Request):
        body = await parse(request, TaskRequest)
        return JSONResponse(await service.task(body, authenticated(request), only="multiple_choice"))

    @app.post("/task")
    async def task(request: Request):
        return JSONResponse(await service.task(await parse(request, TaskRequest), authenticated(request)))

    @app.post("/generate")
    async def generate(request: Request):
        return JSONResponse(await service.generate(await parse(request, GenerateRequest), authenticated(request)))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request, CompletionRequest)
        return JSONResponse(await service.completions(body, authenticated(request)))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse(request, ChatRequest)
        return JSONResponse(await service.chat_completions(body, authenticated(request)))

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "autoglm-bench"} for name in service.specs],
        }

    names = {"model": {"enum": list(service.specs)}, "task": {"enum": service.tasks.names}}
    schema = openapi_schema(app, {**service.limits.schema(), **names})

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi():
        return schema

    return app


def authenticated(request: Request) -> bool:
    return bool(request.state.authenticated)


async def _reap(service: Service) -> None:
    """Release idle models every so often (a quarter of the idle delay, at most every second)."""
    period = min(1.0, service.pool.idle_release_s / 4)
    while True:
        await asyncio.sleep(period)
        await asyncio.to_thread(service.pool.release_idle)


async def _drain_on_exit(service: Service, stopping: Callable[[], bool]) -> None:
    """Once the server is told to exit: no new requests (503), and shortly before uvicorn's graceful shutdown
    ends (``serve.shutdown_timeout_s``), a 503 for every request still queued."""
    while not stopping():
        await asyncio.sleep(0.1)
    service.scheduler.close()
    await asyncio.sleep(max(0.0, service.run.serve.shutdown_timeout_s - 0.5))
    service.scheduler.fail(lambda key: True, BadRequest(503, "the server is shutting down"))


async def parse(request: Request, model: type[BaseModel]) -> Any:
    """The JSON body as ``model``, validated by pydantic directly (cheaper per request than FastAPI's
    body parameters); any problem is a :class:`BadRequest` with one line."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise BadRequest(*describe_validation(exc.errors())) from None


def describe_validation(errors: list[dict[str, Any]]) -> tuple[int, str]:
    """(status, one line) for pydantic's errors: malformed JSON is 400, a bad field 422."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        return 400, f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    loc = list(first.get("loc", ()))
    where = ".".join(str(p) for p in (loc[1:] if loc[:1] == ["body"] else loc)) or "body"
    if first.get("type") == "extra_forbidden":
        return 422, f"unknown field {where[:100]!r}"
    return 422, f"{where[:100]}: {first['msg']}"
