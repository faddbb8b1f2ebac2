"""The request cache: an SQLite table mapping (model fingerprint, exact request) to its result, shared by
method=evaluate and prompt search, by every trial and every run that points at the same file, so no request
is ever scored twice for the same model. :class:`CachedLM` puts it in front of any LM (in-process, Ray,
a remote server).

A request is what the scorer is asked, as JSON: ``["loglikelihood", scorer, context, continuations]`` (the
context exactly as fed to the model, chat template applied; a context with images, an
:class:`~autoglm_bench.data.images.ImageText`, as its text and its images' content digests) -> the continuations'
log-likelihoods, or
``["generate_until", context, until, max_new_tokens]`` -> the generated text (on a chat-only server the
context is the message list). The model fingerprint (:func:`autoglm_bench.lm.fingerprint.model_fingerprint`
for weights; a server's host, model and revision for :mod:`.openai`) says whose answers they are. Results are
stored a chunk at a time (:meth:`LM.chunk_size`: a few batches), each chunk committed before the next is
scored, so a killed run loses at most one chunk and its rerun scores only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError, MethodConfig
from ..data.images import json_default
from ..paths import cache_dir
from ..scoring import ScoreStats
from .base import LM, Requests

# Bump when what a request means changes (how scoring.py encodes, truncates or scores it), so that results
# computed under the old meaning are never reused.
REQUEST_FORMAT = 2


class RequestCache:
    """Request results keyed by :meth:`key`; safe for several processes (WAL, busy timeout).

    >>> cache = RequestCache(":memory:")
    >>> k = RequestCache.key("model-fp", ["loglikelihood", "batched", "Review: fine\\nSentiment:", [" no", " yes"]])
    >>> cache.put([(k, "model-fp", [-2.5, -0.25])])
    >>> cache.get([k])[k]
    [-2.5, -0.25]
    """

    def __init__(self, path: str | Path):
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.conn = sqlite3.connect(self.path, timeout=120)
        if self.path != ":memory:":
            self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, model TEXT NOT NULL, result TEXT NOT NULL)"
        )
        self.conn.commit()

    @staticmethod
    def key(fingerprint: str, request: list[Any]) -> str:
        """SHA-256 of the model fingerprint and the exact request."""
        raw = json.dumps([REQUEST_FORMAT, fingerprint, request], ensure_ascii=False, default=json_default)
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, keys: list[str]) -> dict[str, Any]:
        """The cached results among ``keys`` (missing keys are absent from the result)."""
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, result in self.conn.execute(f"SELECT key, result FROM requests WHERE key IN ({marks})", chunk):
                found[key] = json.loads(result)
        return found

    def put(self, entries: list[tuple[str, str, Any]]) -> None:
        """Store ``(key, fingerprint, result)`` entries in one transaction, committed before returning."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO requests (key, model, result) VALUES (?, ?, ?)",
            [(k, fp, json.dumps(result)) for k, fp, result in entries],
        )
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()


def open_cache(method: MethodConfig) -> RequestCache:
    """The cache ``method.cache_path`` names (default ``$AUTOGLM_CACHE_DIR/eval_cache.sqlite``), or, with
    ``method.cache=false``, one in memory (the run still scores no request twice, and keeps nothing); a path
    SQLite cannot open is a :class:`ConfigError`."""
    if not method.cache:
        return RequestCache(":memory:")
    path = Path(method.cache_path).expanduser() if method.cache_path else cache_dir() / "eval_cache.sqlite"
    try:
        return RequestCache(path)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"method.cache_path={str(path)!r} cannot be opened as an SQLite file ({exc}); "
            "give a writable file path, or method.cache=false"
        ) from None


class CachedLM(LM):
    """``inner`` behind the request cache (``cache=None``: the same chunks, nothing stored): each request is
    answered from the cache where present; the rest go to ``inner`` and are stored. ``stats.examples`` of
    what it returns counts only the requests ``inner`` scored."""

    def __init__(self, inner: LM, cache: RequestCache | None):
        self.inner, self.cache = inner, cache
        self.name, self.fingerprint, self.tokenizer = inner.name, inner.fingerprint, inner.tokenizer
        self.backend, self.chat_only, self.device = inner.backend, inner.chat_only, inner.device

    def loglikelihood(
        self, requests: Requests, batch_size: int = 16, scorer: str = "batched", progress: bool = True
    ) -> tuple[list[list[float]], ScoreStats]:
        def score(todo: list[list[Any]]) -> tuple[list[Any], ScoreStats]:
            pairs = [(context, continuations) for _, _, context, continuations in todo]
            return self.inner.loglikelihood(pairs, batch_size=batch_size, scorer=scorer, progress=False)

        keyed = [["loglikelihood", scorer, context, continuations] for context, continuations in requests]
        return through_cache(self.cache, self.fingerprint, keyed, score, self.inner.chunk_size(batch_size), progress)

    def generate_until(
        self, contexts: list[Any], until: list[str], max_new_tokens: int, batch_size: int = 16, progress: bool = True
    ) -> tuple[list[str], ScoreStats]:
        def score(todo: list[list[Any]]) -> tuple[list[Any], ScoreStats]:
            return self.inner.generate_until(
                [r[1] for r in todo], until, max_new_tokens, batch_size=batch_size, progress=False
            )

        keyed = [["generate_until", context, list(until), max_new_tokens] for context in contexts]
        return through_cache(self.cache, self.fingerprint, keyed, score, self.inner.chunk_size(batch_size), progress)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def usage(self) -> dict[str, int]:
        return self.inner.usage()

    def chunk_size(self, batch_size: int) -> int:
        return self.inner.chunk_size(batch_size)

    def close(self) -> None:
        self.inner.close()


def through_cache(
    cache: RequestCache | None,
    fingerprint: str,
    requests: list[list[Any]],
    score: Callable[[list[list[Any]]], tuple[list[Any], ScoreStats]],
    chunk_size: int,
    progress: bool = True,
) -> tuple[list[Any], ScoreStats]:
    """The result of each request: from ``cache`` where present, the rest run through ``score`` and stored.

    The distinct requests are cut into chunks of ``chunk_size``, longest first (by their JSON length, so a
    chunk holds requests of similar length and its batches pad little); each chunk's missing requests are
    scored and committed before the next chunk starts. The chunks depend only on ``requests``, never on what
    the cache holds, so a rerun after a kill scores the missing chunks in exactly the batches the first run
    would have, and its results are bit for bit those of an uninterrupted run. ``cache=None`` scores the same
    chunks without storing them. The returned stats count only what was scored (``examples``: distinct
    requests run through the model); the requests it does not count were answered without the model.
    """
    raws = [json.dumps(r, ensure_ascii=False, default=json_default) for r in requests]
    keys = [RequestCache.key(fingerprint, r) for r in requests]
    first: dict[str, int] = {}  # each distinct request once
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    order = sorted(first, key=lambda k: -len(raws[first[k]]))
    found = cache.get(keys) if cache is not None else {}
    stats = ScoreStats()
    missing = sum(k not in found for k in order)
    bar = _progress(missing, progress and missing > 0)
    for start in range(0, len(order), chunk_size):
        todo = [k for k in order[start : start + chunk_size] if k not in found]
        if not todo:
            continue
        results, chunk_stats = score([requests[first[k]] for k in todo])
        if cache is not None:
            cache.put([(k, fingerprint, result) for k, result in zip(todo, results)])
        found.update(zip(todo, results))
        stats = stats + chunk_stats
        bar.update(len(todo))
    bar.close()
    return [found[k] for k in keys], stats


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="req", disable=None if enabled else True, dynamic_ncols=True, leave=False)
