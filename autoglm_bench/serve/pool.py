"""The model pool: models load on first use and are released when idle too long, or least recently used
first when loading another one would exceed the memory budget. A model some request is using (acquired and
not yet released) is never released; the pool may stay over its budget until that request ends."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


def model_bytes(model: Any) -> int:
    """Bytes held by a torch module's parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class _Entry:
    value: Any = None
    bytes: int = 0
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)


class ModelPool:
    """Named loaders -> loaded models, shared by every request.

    ``loaders[name]()`` returns ``(model, bytes)``. :meth:`acquire` is a context manager holding the model
    for the duration of a request; :meth:`release_idle` (called periodically by the server) drops models idle
    for ``idle_release_s``. ``on_change(name, loaded_bytes_or_None, reason)`` reports every load and release.

    >>> pool = ModelPool({"tiny": lambda: (lm.load(cfg), 0)}, idle_release_s=60)  # doctest: +SKIP
    >>> with pool.acquire("tiny") as lm: ...  # doctest: +SKIP
    """

    def __init__(
        self,
        loaders: dict[str, Callable[[], tuple[Any, int]]],
        idle_release_s: float,
        memory_budget_bytes: int | None = None,
        on_change: Callable[[str, int | None, str], None] | None = None,
    ):
        self.loaders = loaders
        self.idle_release_s = idle_release_s
        self.budget = memory_budget_bytes
        self.on_change = on_change or (lambda name, size, reason: None)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.RLock()  # guards _entries; a load happens under it (one load at a time)

    @property
    def loaded(self) -> dict[str, int]:
        """Loaded model names and their bytes, least recently used first."""
        with self._lock:
            entries = sorted(self._entries.items(), key=lambda kv: kv[1].last_used)
            return {name: e.bytes for name, e in entries}

    @property
    def memory_bytes(self) -> int:
        return sum(self.loaded.values())

    @contextmanager
    def acquire(self, name: str) -> Iterator[Any]:
        """The model ``name``, loaded if it is not; held (never released) until the block ends."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                value, size = self.loaders[name]()
                entry = self._entries[name] = _Entry(value=value, bytes=size)
                self.on_change(name, size, "load")
                self._enforce_budget(keep=name)
            entry.users += 1
            entry.last_used = time.monotonic()
        try:
            yield entry.value
        finally:
            with self._lock:
                entry.users -= 1
                entry.last_used = time.monotonic()
                if name in self._entries:
                    self._enforce_budget(keep=name)  # what stayed over the budget while in use goes now

    def _enforce_budget(self, keep: str) -> None:
        if self.budget is None:
            return
        for name in list(self.loaded):  # least recently used first
            if self.memory_bytes <= self.budget:
                return
            if name != keep and self._entries[name].users == 0:
                self._release(name, "budget")

    def release_idle(self, now: float | None = None) -> list[str]:
        """Release every model unused for ``idle_release_s``; returns their names."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [n for n, e in self._entries.items() if e.users == 0 and now - e.last_used >= self.idle_release_s]
            for name in idle:
                self._release(name, "idle")
        return idle

    def release_all(self) -> None:
        with self._lock:
            for name in list(self._entries):
                self._release(name, "shutdown")

    def _release(self, name: str, reason: str) -> None:
        del self._entries[name]
        gc.collect()  # the weights go now, not at some later collection
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
        self.on_change(name, None, reason)
