"""Images in requests: decoded and checked against the service's limits before any work is queued.

An image task's row (/classify, /task, /generate with ``input``) holds each image field as base64 or a data
URL (a list of them for a list field); /v1/chat/completions takes OpenAI-style content parts,
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``. Nothing is fetched: a remote
URL, a path (the server's files are not the client's), a value that is not an image or a truncated one is
422; more than ``serve.max_images`` images, or one over ``serve.max_image_pixels`` pixels (read from its
header, before its pixels are decoded) or over the body limit in bytes, is 413. Each refusal is one line.
"""

from __future__ import annotations

from typing import Any

from ..config import ServeConfig, TaskConfig
from ..data.images import IMAGE_MARKER, ImageError, ImageLimits, load_image
from .errors import BadRequest


def _limits(sv: ServeConfig) -> ImageLimits:
    return ImageLimits(max_pixels=sv.max_image_pixels, max_bytes=sv.max_body_bytes)


def decode(sv: ServeConfig, value: Any, what: str) -> Any:
    """One image of a request as a PIL image, or a one-line 413/422."""
    if not isinstance(value, str):
        raise BadRequest(422, f"{what} must be a base64 string or a data: URL, got {type(value).__name__}")
    try:
        return load_image(value, None, _limits(sv))
    except ImageError as exc:
        message = str(exc)
        if "needs a data folder" in message:
            message = f"{what}: paths are not read; send the image as base64 or a data: URL"
        raise BadRequest(413 if "at most" in message else 422, f"{what}: {message}") from None


def row_images(sv: ServeConfig, task: TaskConfig, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with the values of the task's image fields decoded (at most ``serve.max_images`` images)."""
    if not task.images:
        return row
    values = {name: row.get(name) for name in task.images}
    count = sum(len(v) if isinstance(v, list) else int(v is not None) for v in values.values())
    if count > sv.max_images:
        raise BadRequest(413, f"input has {count} images; this server takes at most {sv.max_images} per request")
    decoded = dict(row)
    for name, value in values.items():
        if name not in row:
            raise BadRequest(422, f"task {task.name!r} reads an image from input field {name!r}, which is missing")
        if isinstance(value, list):
            decoded[name] = [None if v is None else decode(sv, v, f"input.{name}[{i}]") for i, v in enumerate(value)]
        elif value is not None:
            decoded[name] = decode(sv, value, f"input.{name}")
    return decoded


def without_images(task: TaskConfig, row: dict[str, Any]) -> dict[str, Any]:
    """The row's text fields: what ``serve.max_input_chars`` measures (images have limits of their own)."""
    return {k: v for k, v in row.items() if k not in task.images}


def chat_messages(sv: ServeConfig, messages: list[dict[str, Any]]) -> tuple[list[dict[str, str]], list[Any]]:
    """OpenAI chat messages with content parts -> (messages whose content is text, ``<image>`` where an image
    part was, and the decoded images in order). Only ``text`` and ``image_url`` parts with data URLs."""
    out, images = [], []
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise BadRequest(422, f"messages[{i}].content must be a string or a list of content parts")
        text = []
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                text.append(part["text"])
            elif kind == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if len(images) >= sv.max_images:
                    raise BadRequest(413, f"more than {sv.max_images} images; this server takes at most that many")
                images.append(decode(sv, url, f"{where}.image_url"))
                text.append(IMAGE_MARKER)
            else:
                raise BadRequest(
                    422, f"{where} must be {{type: text, text}} or {{type: image_url, image_url: {{url}}}}"
                )
        out.append({"role": message["role"], "content": "".join(text)})
    return out, images
