"""The size and cost limits every request is checked against before any work starts (``serve.*`` settings).

Text is measured as sent, in characters of the decoded JSON strings (not their JSON escaping); sizes over a
limit are 413, values out of range 422, each with one line naming the value and the limit.
"""

from __future__ import annotations

from typing import Any

from ..config import ServeConfig
from .errors import BadRequest


class Limits:
    """The checks for one server's ``serve.*`` settings.

    >>> Limits(ServeConfig()).stop(["\\n\\n", "Question:"])  # doctest: +SKIP
    """

    def __init__(self, sv: ServeConfig):
        self.sv = sv

    def text(self, what: str, text: str) -> None:
        """A prompt: at most ``serve.max_input_chars`` characters."""
        if len(text) > self.sv.max_input_chars:
            limit = self.sv.max_input_chars
            raise BadRequest(413, f"{what} is {len(text)} characters; this server takes at most {limit}")

    def row(self, row: dict[str, Any]) -> None:
        """An input row: its field names and values together at most ``serve.max_input_chars`` characters."""
        if any(k.startswith("_") for k in row):
            raise BadRequest(422, "input field names must not start with '_'")
        size = text_chars(row)
        if size > self.sv.max_input_chars:
            limit = self.sv.max_input_chars
            raise BadRequest(413, f"input is {size} characters (names and values); this server takes at most {limit}")

    def new_tokens(self, value: int | None, lowest: int = 1, name: str = "max_new_tokens") -> None:
        top = self.sv.max_new_tokens
        if value is not None and not lowest <= value <= top:
            raise BadRequest(422, f"{name} must be in {lowest}..{top}, got {value}")

    def stop(self, stop: list[str] | None) -> None:
        """Stop strings: at most ``serve.max_stop`` of them, each at most ``serve.max_stop_chars`` characters."""
        if not stop:
            return
        if len(stop) > self.sv.max_stop:
            raise BadRequest(413, f"stop has {len(stop)} strings; this server takes at most {self.sv.max_stop}")
        longest = max(len(s) for s in stop)
        if longest > self.sv.max_stop_chars:
            raise BadRequest(
                413, f"a stop string is {longest} characters; this server takes at most {self.sv.max_stop_chars}"
            )

    def logprobs(self, value: int | None) -> None:
        if value is not None and not 0 <= value <= self.sv.max_logprobs:
            raise BadRequest(422, f"logprobs must be in 0..{self.sv.max_logprobs}, got {value}")

    def prompts(self, prompts: list[Any]) -> None:
        """Text prompts, or token-id prompts (a token counts as a character of ``serve.max_input_chars``)."""
        if not prompts:
            raise BadRequest(422, "prompt is an empty list")
        if len(prompts) > self.sv.max_prompts:
            raise BadRequest(413, f"prompt has {len(prompts)} prompts; this server takes at most {self.sv.max_prompts}")
        for p in prompts:
            if isinstance(p, str):
                self.text("prompt", p)
            elif not p:
                raise BadRequest(422, "a token-id prompt is an empty list")
            elif len(p) > self.sv.max_input_chars:
                limit = self.sv.max_input_chars
                raise BadRequest(413, f"a prompt is {len(p)} tokens; this server takes at most {limit}")

    def tokens(self, model: str, prompt_tokens: list[int], new_tokens: int, max_length: int) -> None:
        """Raw prompts (their token counts) and the tokens asked for: each must fit the model
        (``model.max_length``), refused before generating rather than cut, and all of them together at most
        ``serve.max_request_tokens``."""
        for n in prompt_tokens:
            if n + new_tokens > max_length:
                raise BadRequest(
                    413,
                    f"the prompt is {n} tokens and {new_tokens} more were asked for; model {model!r} takes "
                    f"at most {max_length} tokens in all",
                )
        cost = sum(prompt_tokens) + new_tokens * len(prompt_tokens)
        if cost > self.sv.max_request_tokens:
            raise BadRequest(
                413,
                f"the request is {cost} tokens (its prompts' and those asked for); this server takes at most "
                f"{self.sv.max_request_tokens} per request (serve.max_request_tokens)",
            )

    def schema(self) -> dict[str, dict[str, Any]]:
        """The limits as JSON-schema bounds per body field (for the OpenAPI document)."""
        sv = self.sv
        stop = {"maxItems": sv.max_stop, "maxLength": sv.max_stop_chars, "items": {"maxLength": sv.max_stop_chars}}
        return {
            "max_new_tokens": {"minimum": 1, "maximum": sv.max_new_tokens},
            "max_tokens": {"minimum": 0, "maximum": sv.max_new_tokens},
            "logprobs": {"minimum": 0, "maximum": sv.max_logprobs},
            "stop": stop,
            "prompt": {
                "maxLength": sv.max_input_chars,
                "maxItems": sv.max_prompts,
                "items": {"maxLength": sv.max_input_chars},
            },
        }


def text_chars(value: Any) -> int:
    """Characters of a decoded JSON value's strings and numbers (object keys included)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(k)) + text_chars(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(text_chars(v) for v in value)
    return len(str(value))
