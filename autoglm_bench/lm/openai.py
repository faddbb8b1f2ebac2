"""The ``openai`` backend: a model on any OpenAI-compatible server (vLLM, SGLang, ``python -m
autoglm_bench.serve``).

Log-likelihoods: each (context, continuation) pair is encoded exactly as the in-process scorer encodes it
(:func:`autoglm_bench.scoring.encode_requests`, lm-eval's rules) and sent as a token-id prompt to
``/v1/completions`` with ``echo``, ``logprobs=1`` and ``max_tokens=1``; the continuation's log-likelihood is
the sum of the echoed ``token_logprobs`` after the context, as lm-eval's ``local-completions`` computes it.
As there, a pair keeps at most ``max_length - 1`` tokens (the server adds one). Generation: token-id prompts
to ``/v1/completions`` with ``stop``, or, for a chat-only server (``model.api=chat``), the messages to
``/v1/chat/completions``; the text is cut at the first stop string.

Up to ``model.concurrency`` requests are in flight, each with up to ``model.prompts_per_request`` prompts.
A request answered 429 or 5xx, timed out (``model.timeout_s``) or dropped is retried up to
``model.max_retries`` times, after the server's ``Retry-After`` or an exponential backoff with jitter.
``usage`` (prompt and completion tokens, requests, retries) goes into results.json ``cost``. A server that
refuses a request (4xx) stops the run with a one-line :class:`ConfigError`; what was scored before is in the
request cache. The API key is read from the environment variable ``model.api_key_env`` names and is never
recorded.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import ConfigError, ModelConfig
from ..scoring import ScoreStats, cut_at_stop, encode_contexts, encode_requests
from .base import CHUNK_BATCHES, LM, Requests

BACKOFF_S = 0.5  # first retry after about this long (times 0.5 to 1.5), doubling per retry
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 300.0  # the longest Retry-After honoured
VOLATILE = ("created", "permission")  # /v1/models fields that change when a server restarts (vLLM)


class RemoteError(RuntimeError):
    """No usable answer after the retries, or an answer of the wrong shape; the message is one line. (A server
    that refuses a request, 4xx, is a :class:`ConfigError`: what was asked must change.)"""


class OpenAILM(LM):
    """The model ``model.served_model`` at ``model.base_url``.

    >>> lm = OpenAILM(ModelConfig(name="openai", kind="openai", base_url="http://127.0.0.1:8000/v1",
    ...                           tokenizer="THUDM/glm-4-9b-hf"))  # doctest: +SKIP
    >>> lls, stats = lm.loglikelihood([("Is it good? Answer:", [" yes", " no"])])  # doctest: +SKIP
    """

    backend = "openai"

    def __init__(self, cfg: ModelConfig):
        import httpx

        assert cfg.base_url is not None
        self.cfg, self.base = cfg, cfg.base_url.rstrip("/")
        url = urlsplit(self.base)
        self.host = f"{url.scheme}://{url.hostname}" + (f":{url.port}" if url.port else "")  # no credentials
        headers = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ConfigError(f"model.api_key_env={cfg.api_key_env!r}: that environment variable is not set")
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
        self.client = httpx.Client(headers=headers, timeout=cfg.timeout_s, limits=limits)
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="openai")
        self.lock = threading.Lock()
        self.counts = {"http_requests": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0}
        self.name, self.chat_only = cfg.name, cfg.api == "chat"
        self.served, entry = self._served_model()
        limit = entry.get("max_model_len")
        self.max_length = min(cfg.max_length, limit) if isinstance(limit, int) and limit > 1 else cfg.max_length
        source = cfg.tokenizer or self.served
        self.tokenizer = None
        if cfg.tokenizer or not self.chat_only:
            from .hf import load_tokenizer

            folder = Path(source).expanduser()
            self.tokenizer = load_tokenizer(cfg, str(folder) if source.startswith(("/", "~", ".")) else source)
        self.fingerprint = self._fingerprint(entry, source)
        self.device = f"{self.host} ({self.served})"

    # ------------------------------------------------------------ the two request types

    def loglikelihood(
        self, requests: Requests, batch_size: int = 16, scorer: str = "batched", progress: bool = True
    ) -> tuple[list[list[float]], ScoreStats]:
        if self.chat_only:
            raise ConfigError(
                "log-likelihoods need /v1/completions with echo and logprobs, which a chat-only server "
                "(model.api=chat) does not offer"
            )
        start, before = time.perf_counter(), self._tokens()
        encoded = encode_requests(self.tokenizer, max(1, self.max_length - 2), requests)
        prompts = [
            (e.context + cont, len(e.context), e.example, j)
            for e in encoded
            for j, cont in zip(e.choices, e.continuations)
        ]

        def ask(group: list[int]) -> list[float]:
            body = {"model": self.served, "prompt": [prompts[i][0] for i in group], "max_tokens": 1}
            body.update(temperature=0, logprobs=1, echo=True)
            lls = []
            for i, choice in zip(group, self._choices("/completions", body, len(group))):
                ids, ctxlen = prompts[i][0], prompts[i][1]
                echoed = (choice.get("logprobs") or {}).get("token_logprobs")
                if not isinstance(echoed, list) or len(echoed) < len(ids):
                    raise ConfigError(
                        f"{self.host} did not echo the prompt's log-probabilities (/v1/completions with echo and "
                        "logprobs); a server without them can only run generation tasks"
                    )
                lls.append(float(sum(echoed[ctxlen : len(ids)])))
            return lls

        results: list[list[float]] = [[0.0] * len(conts) for _, conts in requests]
        for group, lls in self._run(ask, self._groups([p[0] for p in prompts]), progress):
            for i, ll in zip(group, lls):
                results[prompts[i][2]][prompts[i][3]] = ll
        return results, ScoreStats(len(requests), self._tokens() - before, time.perf_counter() - start)

    def generate_until(
        self, contexts: list[Any], until: list[str], max_new_tokens: int, batch_size: int = 16, progress: bool = True
    ) -> tuple[list[str], ScoreStats]:
        start, before = time.perf_counter(), self._tokens()
        settings = {"model": self.served, "max_tokens": max_new_tokens, "temperature": 0, "stop": list(until) or None}
        if self.chat_only:

            def ask(group: list[int]) -> list[str]:
                (choice,) = self._choices("/chat/completions", {**settings, "messages": contexts[group[0]]}, 1)
                return [str((choice.get("message") or {}).get("content") or "")]

            groups = [[i] for i in range(len(contexts))]
        else:
            keep = max(1, self.max_length - max_new_tokens)
            encoded = [ids[-keep:] for ids in encode_contexts(self.tokenizer, contexts)]

            def ask(group: list[int]) -> list[str]:
                body = {**settings, "prompt": [encoded[i] for i in group]}
                return [str(c.get("text") or "") for c in self._choices("/completions", body, len(group))]

            groups = self._groups(encoded)
        outputs = [""] * len(contexts)
        for group, texts in self._run(ask, groups, progress):
            for i, text in zip(group, texts):
                outputs[i] = cut_at_stop(text, until)
        return outputs, ScoreStats(len(contexts), self._tokens() - before, time.perf_counter() - start)

    def usage(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)

    def chunk_size(self, batch_size: int) -> int:
        return max(CHUNK_BATCHES * batch_size, self.cfg.concurrency * self.cfg.prompts_per_request)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device, "server": self.host, "served_model": self.served}

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        self.client.close()

    # ------------------------------------------------------------ requests

    def _groups(self, prompts: list[list[int]]) -> list[list[int]]:
        """Prompt indices, longest first, in requests of ``prompts_per_request`` (similar lengths together)."""
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        size = self.cfg.prompts_per_request
        return [order[g : g + size] for g in range(0, len(order), size)]

    def _run(self, ask: Callable[[list[int]], list[Any]], groups: list[list[int]], progress: bool):
        """(group, answers) for every group, ``concurrency`` requests at a time, in order; the first failure
        cancels the requests not yet sent and is raised."""
        from tqdm.auto import tqdm

        futures = [self.pool.submit(ask, g) for g in groups]
        bar = tqdm(total=len(groups), unit="req", disable=None if progress else True, dynamic_ncols=True, leave=False)
        try:
            for group, future in zip(groups, futures):
                yield group, future.result()
                bar.update(1)
        finally:
            for future in futures:
                future.cancel()
            bar.close()

    def _choices(self, path: str, body: dict[str, Any], n: int) -> list[dict[str, Any]]:
        """The ``n`` choices of a completion, in prompt order; the usage is counted."""
        out = self._call("POST", path, body)
        choices = out.get("choices")
        if not isinstance(choices, list) or len(choices) != n or not all(isinstance(c, dict) for c in choices):
            raise RemoteError(f"{self.host}{urlsplit(self.base).path}{path} answered without {n} choices")
        usage = out.get("usage") if isinstance(out.get("usage"), dict) else {}
        with self.lock:
            for key in ("prompt_tokens", "completion_tokens"):
                self.counts[key] += int(usage.get(key) or 0)
        return sorted(choices, key=lambda c: c.get("index", 0))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One API call, retried on 429, 5xx, timeouts and dropped connections; its JSON answer."""
        import httpx

        where = f"{self.host}{urlsplit(self.base).path}{path}"
        for attempt in range(self.cfg.max_retries + 1):
            wait = min(BACKOFF_CAP_S, BACKOFF_S * 2**attempt) * random.uniform(0.5, 1.5)
            try:
                response = self.client.request(method, self.base + path, json=body)
            except httpx.TimeoutException:
                why = f"no answer within model.timeout_s={self.cfg.timeout_s}"
            except httpx.TransportError as exc:
                why = f"connection failed ({type(exc).__name__})"
            else:
                with self.lock:
                    self.counts["http_requests"] += 1
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        raise RemoteError(f"{where} answered 200 with a body that is not JSON") from None
                if response.status_code != 429 and response.status_code < 500:  # the server refuses what was asked
                    raise ConfigError(f"{where} answered HTTP {response.status_code}: {_error_text(response)}")
                why = f"HTTP {response.status_code}"
                wait = _retry_after(response, wait)
            if attempt == self.cfg.max_retries:
                break
            with self.lock:
                self.counts["retries"] += 1
            time.sleep(wait)
        raise RemoteError(f"{where}: no usable answer after {self.cfg.max_retries} retries (last: {why})")

    def _tokens(self) -> int:
        with self.lock:
            return self.counts["prompt_tokens"] + self.counts["completion_tokens"]

    def _served_model(self) -> tuple[str, dict[str, Any]]:
        """The served model's name and its /v1/models entry; an unreachable server or an unknown name is a
        one-line ConfigError."""
        try:
            listing = self._call("GET", "/models")
        except RemoteError as exc:
            raise ConfigError(f"model.base_url={self.base!r}: {exc}") from None
        data = listing.get("data") if isinstance(listing.get("data"), list) else []
        entries = {str(m.get("id")): m for m in data if isinstance(m, dict)}
        name = self.cfg.served_model
        if name is None and len(entries) == 1:
            name = next(iter(entries))
        if name is None or name not in entries:
            what = f"model.served_model={name!r} is not" if name else "give model.served_model: several models are"
            raise ConfigError(f"{what} served at {self.host}; it serves: {', '.join(entries) or 'none'}")
        return name, entries[name]

    def _fingerprint(self, entry: dict[str, Any], tokenizer: str) -> str:
        """The request cache's key for this model: server host, model name, what /v1/models says of it (less
        the fields that change on restart), ``model.revision``, the API, the tokenizer and the length limit."""
        from .fingerprint import model_fingerprint

        folder = Path(tokenizer).expanduser()
        token_id = model_fingerprint(str(folder)) if folder.is_dir() else tokenizer
        stable = {k: v for k, v in entry.items() if k not in VOLATILE}
        key = ["openai", self.host, self.served, stable, self.cfg.revision, self.cfg.api, token_id, self.max_length]
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _retry_after(response: Any, default: float) -> float:
    """The seconds a 429/503 answer's ``Retry-After`` asks for (seconds or an HTTP date), else ``default``."""
    from email.utils import parsedate_to_datetime

    value = response.headers.get("retry-after")
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return default
    return min(RETRY_AFTER_CAP_S, max(0.0, seconds))


def _error_text(response: Any) -> str:
    """The server's error message in one line (OpenAI's ``{"error": {"message": ...}}``, ours ``{"error": ...}``)."""
    try:
        error = response.json().get("error")
        text = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        text = None
    text = str(text or response.text or response.reason_phrase)
    return " ".join(text.split())[:300]
