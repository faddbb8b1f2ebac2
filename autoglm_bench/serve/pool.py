"""The model pool: each model loads on a thread of its own, never on the worker that runs batches, so a
loaded model keeps answering while another loads; one unused for ``idle_release_s`` is released; under a
memory budget, idle models are released (least recently used first) *before* the next one loads, so the
budget holds at the peak.

A batch leases its model (:meth:`ModelPool.lease`); a leased model is never released. :func:`load_served`
is the one function that constructs models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..config import VLM_KINDS
from .specs import ModelSpec, Served

log = logging.getLogger("autoglm_bench.serve")


def model_bytes(model: Any) -> int:
    """Bytes held by a torch module's parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def load_served(spec: ModelSpec) -> tuple[Served, int]:
    """Load a model spec (the pool's loader) through :func:`autoglm_bench.lm.load`: weights on the configured
    device, in eval mode, and their bytes. The only place the service constructs models."""
    from ..lm import load
    from ..lm.hf import load_classifier

    if spec.checkpoint is None:
        lm = load(spec.cfg)
    elif spec.head:
        n = len(spec.checkpoint.task.choices or [])
        model, tokenizer = load_classifier(spec.cfg, str(spec.weights), n, lora=spec.checkpoint.peft.method == "lora")
        return Served(spec, head=model, tokenizer=tokenizer, device=model.device), model_bytes(model)
    elif spec.checkpoint.peft.method == "lora":
        lm = load(spec.cfg, adapter=str(spec.weights))
    else:
        kind = "hf_vlm" if spec.cfg.kind in VLM_KINDS else "causal"  # the saved whole model
        lm = load(dataclasses.replace(spec.cfg, kind=kind, path=str(spec.weights)))
    return Served(spec, lm=lm, tokenizer=lm.tokenizer, device=lm.device), model_bytes(lm.model)


@dataclass
class _Entry:
    value: Any = None
    bytes: int = 0
    users: int = 0  # leases held
    evicting: bool = False  # to be released to make room: no new leases
    last_used: float = field(default_factory=time.monotonic)


class ModelPool:
    """Named loaders -> loaded models, shared by every request.

    ``loaders[name]()`` returns ``(model, bytes)``. :meth:`lease` pins a loaded model for a batch, or
    returns None and starts loading it on a thread; ``on_loaded(name, error_or_None)`` reports each such
    load's end (from that thread). :meth:`release_idle` (called periodically by the server) drops models
    idle for ``idle_release_s``. ``on_change(name, loaded_bytes_or_None, reason)`` reports every load and
    release.

    >>> pool = ModelPool({"tiny": lambda: (lm.load(cfg), 0)}, idle_release_s=60)  # doctest: +SKIP
    >>> with pool.acquire("tiny") as lm: ...  # doctest: +SKIP
    """

    def __init__(
        self,
        loaders: dict[str, Callable[[], tuple[Any, int]]],
        idle_release_s: float,
        memory_budget_bytes: int | None = None,
        on_change: Callable[[str, int | None, str], None] | None = None,
        on_loaded: Callable[[str, BaseException | None], None] | None = None,
    ):
        self.loaders = loaders
        self.idle_release_s = idle_release_s
        self.budget = memory_budget_bytes
        self.on_change = on_change or (lambda name, size, reason: None)
        self.on_loaded = on_loaded or (lambda name, error: None)
        self._entries: dict[str, _Entry] = {}
        self._sizes: dict[str, int] = {}  # bytes at each model's last load: what the next load will need
        self._requested: set[str] = set()  # loads started and not finished
        self._cond = threading.Condition()  # guards the above; notified when a lease ends
        self._budget_turn = threading.Lock()  # under a budget, one load at a time (each makes room for itself)

    @property
    def loaded(self) -> dict[str, int]:
        """Loaded model names and their bytes, least recently used first."""
        with self._cond:
            entries = sorted(self._entries.items(), key=lambda kv: kv[1].last_used)
            return {name: e.bytes for name, e in entries}

    @property
    def memory_bytes(self) -> int:
        return sum(self.loaded.values())

    def peek(self, name: str) -> Any:
        """The loaded model ``name``, or None (nothing is loaded or leased)."""
        with self._cond:
            entry = self._entries.get(name)
            return None if entry is None or entry.evicting else entry.value

    # ------------------------------------------------------------ leases

    @contextmanager
    def acquire(self, name: str) -> Iterator[Any]:
        """The model ``name``, loaded on the calling thread if it is not, leased until the block ends."""
        while (lease := self._pin(name)) is None:
            self.load(name)
        with lease as value:
            yield value

    def lease(self, name: str) -> _Lease | None:
        """A lease on the loaded model ``name`` (a context manager giving the model), or None: it is not
        loaded (or is being released to make room), and its load has been started."""
        lease = self._pin(name)
        if lease is None:
            self.request_load(name)
        return lease

    def _pin(self, name: str) -> _Lease | None:
        with self._cond:
            entry = self._entries.get(name)
            if entry is None or entry.evicting:
                return None
            entry.users += 1
            entry.last_used = time.monotonic()
            return _Lease(self, entry)

    def _unpin(self, entry: _Entry) -> None:
        with self._cond:
            entry.users -= 1
            entry.last_used = time.monotonic()
            self._cond.notify_all()

    # ------------------------------------------------------------ loading

    def request_load(self, name: str) -> bool:
        """Load ``name`` on a thread of its own (once, however often it is asked while pending), so loads of
        different models do not wait for each other (under a memory budget they take turns). False: it is
        loaded already (``on_loaded`` will not be called for this request)."""
        with self._cond:
            entry = self._entries.get(name)
            if entry is not None and not entry.evicting:
                return False
            if name in self._requested:
                return True
            self._requested.add(name)
        # daemon: a load in progress does not hold up the process's exit
        loading = threading.Thread(target=self._load_in_background, args=(name,), name=f"autoglm-load-{name}")
        loading.daemon = True
        loading.start()
        return True

    def _load_in_background(self, name: str) -> None:
        error: BaseException | None = None
        try:
            self.load(name)
        except Exception as exc:  # reported to the requests waiting for this model (503), not the server
            log.exception("loading model %r failed", name)
            error = exc
        finally:
            with self._cond:
                self._requested.discard(name)
        self.on_loaded(name, error)

    def load(self, name: str) -> Any:
        """Load ``name`` on the calling thread, unless it is loaded. Under a memory budget, idle models are
        released first, least recently used first, until the model fits (as much as it took at its last load;
        all of them when it was never loaded); models in use are waited for."""
        with self._budget_turn if self.budget is not None else contextlib.nullcontext():
            with self._cond:
                entry = self._entries.get(name)
                if entry is not None and not entry.evicting:
                    return entry.value
                self._make_room(name)
            value, size = self.loaders[name]()  # outside the lock: loaded models keep being leased meanwhile
            with self._cond:
                self._entries[name] = _Entry(value=value, bytes=size)
                self._sizes[name] = size
        self.on_change(name, size, "load")
        return value

    def _make_room(self, name: str) -> None:
        if self.budget is None:
            return
        need = self._sizes.get(name)
        total = sum(e.bytes for e in self._entries.values())
        victims = []
        for other, entry in sorted(self._entries.items(), key=lambda kv: kv[1].last_used):
            if need is not None and total + need <= self.budget:
                break
            entry.evicting = True
            victims.append(other)
            total -= entry.bytes
        self._cond.wait_for(lambda: all(self._entries[v].users == 0 for v in victims if v in self._entries))
        for victim in victims:
            if victim in self._entries:
                self._release(victim, "budget")

    # ------------------------------------------------------------ releasing

    def release_idle(self, now: float | None = None) -> list[str]:
        """Release every model unused for ``idle_release_s``; returns their names."""
        now = time.monotonic() if now is None else now
        with self._cond:
            idle = [n for n, e in self._entries.items() if e.users == 0 and now - e.last_used >= self.idle_release_s]
            for name in idle:
                self._release(name, "idle")
        return idle

    def release_all(self) -> None:
        with self._cond:
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


class _Lease:
    """A loaded model pinned for one batch: ``with lease as model: ...``; the pool may release it after."""

    def __init__(self, pool: ModelPool, entry: _Entry):
        self.pool = pool
        self.entry = entry
        self.open = True

    def __enter__(self) -> Any:
        return self.entry.value

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.open:
            self.open = False
            self.pool._unpin(self.entry)
