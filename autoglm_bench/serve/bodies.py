"""The request bodies the service takes (pydantic models) and the OpenAPI schema that describes them.

Types and fixed ranges are checked here, by pydantic, before a handler runs; the limits that are settings
(``serve.max_new_tokens``, ``serve.max_stop``, ...) are checked by :mod:`.limits` and written into the
schema by :func:`openapi_schema`, so that a client (or the fuzz suite) sees them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

MAX_PRIORITY = 100.0  # priorities are finite numbers in -MAX_PRIORITY..MAX_PRIORITY

Priority = Annotated[
    float,
    Field(
        ge=-MAX_PRIORITY,
        le=MAX_PRIORITY,
        allow_inf_nan=False,
        description="policy=priority: higher runs first; above 0 needs an authenticated client",
    ),
]


TokenId = Annotated[int, Field(ge=0)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskRequest(_Body):
    input: dict[str, Any]  # one row: the fields the task's template uses (and its gold fields, optionally)
    task: str | None = None  # default: the task the server was started with
    model: str | None = None  # default: the model the server was started with
    priority: Priority = 0.0
    max_new_tokens: int | None = None  # generation tasks: default the task's
    stop: list[str] | None = None  # generation tasks: default the task's generation.until


class GenerateRequest(_Body):
    prompt: str | None = None  # raw text; or task + input to render the task's prompt
    task: str | None = None
    input: dict[str, Any] | None = None
    model: str | None = None
    priority: Priority = 0.0
    max_new_tokens: int | None = None
    stop: list[str] | None = None


class CompletionRequest(BaseModel):
    """OpenAI's /v1/completions body (greedy decoding only); fields it defines that do not change a greedy
    completion (user, top_p, presence_penalty, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | list[TokenId] | list[list[TokenId]] | list[str]  # text, or token ids as vLLM takes them
    max_tokens: int = 16
    stop: str | list[str] | None = None
    logprobs: int | None = None
    echo: bool = False
    temperature: float | None = Field(default=None, allow_inf_nan=False)
    n: int = 1
    stream: bool = False


CHAT_ROLES = ("system", "user", "assistant")


class ChatRequest(BaseModel):
    """OpenAI's /v1/chat/completions body (greedy decoding only); fields that do not change a greedy
    completion are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    # each {"role": system|user|assistant, "content"}: a string, or OpenAI content parts (text; image_url: data URLs)
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    temperature: float | None = Field(default=None, allow_inf_nan=False)
    n: int = 1
    stream: bool = False


# POST path -> its body model
BODIES: dict[str, type[BaseModel]] = {
    "/classify": TaskRequest,
    "/task": TaskRequest,
    "/generate": GenerateRequest,
    "/v1/completions": CompletionRequest,
    "/v1/chat/completions": ChatRequest,
}


def openapi_schema(app: Any, limits: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The app's OpenAPI document with each POST route's JSON body, its fields bounded by ``limits``
    (field -> JSON-schema keywords: ``minimum``, ``maximum``, ``maxItems``, ``maxLength``, ``items``,
    ``enum``)."""
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    for path, model in BODIES.items():
        schema = model.model_json_schema()
        for name, bounds in limits.items():
            if name in schema["properties"]:
                _bound(schema["properties"][name], bounds)
        body = {"required": True, "content": {"application/json": {"schema": schema}}}
        doc["paths"][path]["post"]["requestBody"] = body
    return doc


def _bound(prop: dict[str, Any], bounds: dict[str, Any]) -> None:
    """Apply ``bounds`` to a property schema and to each alternative of its ``anyOf``, where they fit its type."""
    for alt in prop.get("anyOf", [prop]):
        kind = alt.get("type")
        for key, value in bounds.items():
            fits = {
                "minimum": ("integer", "number"),
                "maximum": ("integer", "number"),
                "maxItems": ("array",),
                "maxLength": ("string",),
                "items": ("array",),
                "enum": ("string",),
            }[key]
            if kind in fits:
                if key == "items":
                    _bound(alt["items"], value)
                else:
                    alt[key] = value
