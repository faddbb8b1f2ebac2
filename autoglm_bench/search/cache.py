"""The evaluation cache: an SQLite table mapping (model fingerprint, fully rendered prompt with its answer
choices, example id) to the choice log-likelihoods, shared by every trial and every run that points at
the same file, so no (model, prompt, example) is ever scored twice."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path


class EvalCache:
    """Choice log-likelihoods keyed by :meth:`key`; safe for several processes (WAL, busy timeout).

    >>> cache = EvalCache(":memory:")
    >>> k = EvalCache.key("model-fp", "Review: fine\\nSentiment:", [" negative", " positive"], "validation-3")
    >>> cache.put([(k, "model-fp", "validation-3", [-2.5, -0.25])])
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
            "CREATE TABLE IF NOT EXISTS loglikelihoods "
            "(key TEXT PRIMARY KEY, model TEXT NOT NULL, example_id TEXT NOT NULL, lls TEXT NOT NULL)"
        )
        self.conn.commit()

    @staticmethod
    def key(fingerprint: str, context: str, continuations: list[str], example_id: str) -> str:
        """SHA-256 of the model fingerprint, the exact model input, the exact continuations and the example."""
        raw = json.dumps([fingerprint, context, continuations, example_id], ensure_ascii=False)
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, keys: list[str]) -> dict[str, list[float]]:
        """The cached entries among ``keys`` (missing keys are absent from the result)."""
        found: dict[str, list[float]] = {}
        for start in range(0, len(keys), 500):  # SQLite limits the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, lls in self.conn.execute(f"SELECT key, lls FROM loglikelihoods WHERE key IN ({marks})", chunk):
                found[key] = json.loads(lls)
        return found

    def put(self, entries: list[tuple[str, str, str, list[float]]]) -> None:
        """Store ``(key, fingerprint, example_id, lls)`` entries; committed before returning."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO loglikelihoods (key, model, example_id, lls) VALUES (?, ?, ?, ?)",
            [(k, fp, ex, json.dumps(lls)) for k, fp, ex, lls in entries],
        )
        self.conn.commit()

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM loglikelihoods").fetchone()[0]

    def close(self) -> None:
        self.conn.close()
