"""The request cache: an SQLite table mapping (model fingerprint, exact request) to its result, shared by
method=evaluate and prompt search, by every trial and every run that points at the same file, so no request
is ever scored twice for the same model.

A request is what the scorer is asked, as JSON: ``["loglikelihood", scorer, context, continuations]`` (the
context exactly as fed to the model, chat template applied) -> the continuations' log-likelihoods, or
``["generate_until", context, until, max_new_tokens]`` -> the generated text. The model fingerprint
(:func:`autoglm_bench.models.model_fingerprint`) covers the weight, config and tokenizer files, the dtype and
the length limit. Results are stored a chunk of a few batches at a time, each chunk committed before the next
is scored, so a killed run loses at most one chunk and its rerun scores only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import ConfigError, MethodConfig
from .models import LoadedModel, cache_dir
from .scoring import ScoreStats, generate_until, loglikelihood, loglikelihood_naive

# Bump when what a request means changes (how scoring.py encodes, truncates or scores it), so that results
# computed under the old meaning are never reused.
REQUEST_FORMAT = 2
CHUNK_BATCHES = 4  # requests stored per commit: this many scoring batches


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
        raw = json.dumps([REQUEST_FORMAT, fingerprint, request], ensure_ascii=False)
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


def open_cache(method: MethodConfig) -> RequestCache | None:
    """The cache ``method.cache_path`` names (default ``$AUTOGLM_CACHE_DIR/eval_cache.sqlite``), or None
    with ``method.cache=false``; a path SQLite cannot open is a :class:`ConfigError`."""
    if not method.cache:
        return None
    path = Path(method.cache_path).expanduser() if method.cache_path else cache_dir() / "eval_cache.sqlite"
    try:
        return RequestCache(path)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"method.cache_path={str(path)!r} cannot be opened as an SQLite file ({exc}); "
            "give a writable file path, or method.cache=false"
        ) from None


def cached_loglikelihood(
    lm: LoadedModel,
    requests: list[tuple[str, list[str]]],
    cache: RequestCache | None,
    batch_size: int = 16,
    scorer: str = "batched",
    progress: bool = True,
) -> tuple[list[list[float]], ScoreStats]:
    """:func:`~autoglm_bench.scoring.loglikelihood` (``scorer="naive"``: the reference loop) through the cache."""

    def score(todo: list[list[Any]]) -> tuple[list[Any], ScoreStats]:
        pairs = [(context, continuations) for _, _, context, continuations in todo]
        if scorer == "naive":
            return loglikelihood_naive(lm, pairs, progress=False)
        return loglikelihood(lm, pairs, batch_size=batch_size, progress=False)

    keyed = [["loglikelihood", scorer, context, continuations] for context, continuations in requests]
    return through_cache(cache, lm.fingerprint, keyed, score, CHUNK_BATCHES * batch_size, progress)


def cached_generate_until(
    lm: LoadedModel,
    contexts: list[str],
    until: list[str],
    max_new_tokens: int,
    cache: RequestCache | None,
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[list[str], ScoreStats]:
    """:func:`~autoglm_bench.scoring.generate_until` through the cache."""

    def score(todo: list[list[Any]]) -> tuple[list[Any], ScoreStats]:
        return generate_until(lm, [r[1] for r in todo], until, max_new_tokens, batch_size=batch_size, progress=False)

    keyed = [["generate_until", context, list(until), max_new_tokens] for context in contexts]
    return through_cache(cache, lm.fingerprint, keyed, score, CHUNK_BATCHES * batch_size, progress)


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
    raws = [json.dumps(r, ensure_ascii=False) for r in requests]
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
