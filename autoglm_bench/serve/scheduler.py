"""The batching scheduler: requests queue, and one worker thread runs them in batches.

Each request has a key (model, task, operation and its settings); only requests with equal keys share a
batch, so different models or tasks never share a forward pass. The next batch starts from the request at
the head of the queue: the oldest one (policy ``fifo``) or the one with the highest priority, the oldest
among equals (policy ``priority``). It takes up to ``batch_size`` queued requests with the head's key, in
the same order, and runs once it is full or the head has waited ``max_wait_s``. While a batch runs, new
requests queue up, so a busy server forms full batches without waiting.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Pending:
    key: Hashable
    payload: Any
    priority: float
    seq: int
    enqueued: float
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchInfo:
    """What a request's batch was: its sequence number, size, and how long the request queued."""

    seq: int
    size: int
    queued_s: float


class Scheduler:
    """Batches submitted payloads and runs ``run_batch(key, payloads) -> results`` (one per payload, in order)
    on a single worker thread. A result that is an exception is raised to its own request only.

    >>> scheduler = Scheduler(run_batch, batch_size=16, max_wait_s=0.005, policy="fifo")  # doctest: +SKIP
    >>> result, info = await scheduler.submit(("tiny_glm", "sst2", "choices"), payload)  # doctest: +SKIP
    """

    def __init__(
        self,
        run_batch: Callable[[Hashable, list[Any]], list[Any]],
        batch_size: int,
        max_wait_s: float,
        policy: str = "fifo",
        on_batch: Callable[[int], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ):
        self.run_batch = run_batch
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.policy = policy
        self.on_batch = on_batch or (lambda size: None)
        self.on_queue = on_queue or (lambda depth: None)
        self._queue: list[_Pending] = []
        self._seq = itertools.count()
        self._batches = itertools.count()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autoglm-batch")

    def start(self) -> None:
        """Start dispatching on the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for item in self._queue:
            item.future.cancel()
        self._queue.clear()
        self._executor.shutdown(wait=True)

    async def run_in_worker(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the worker thread, between batches (model loads, task data)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, key: Hashable, payload: Any, priority: float = 0.0) -> tuple[Any, BatchInfo]:
        """Queue one payload; returns its result and :class:`BatchInfo` once its batch has run."""
        assert self._wake is not None, "Scheduler.start() was not called"
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(key, payload, priority, next(self._seq), time.monotonic(), future))
        self.on_queue(len(self._queue))
        self._wake.set()
        result, info = await future
        if isinstance(result, BaseException):
            raise result
        return result, info

    def _order(self, item: _Pending) -> tuple:
        return (-item.priority, item.seq) if self.policy == "priority" else (item.seq,)

    async def _dispatch(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            head = min(self._queue, key=self._order)
            group = sorted((p for p in self._queue if p.key == head.key), key=self._order)[: self.batch_size]
            wait = head.enqueued + self.max_wait_s - time.monotonic()
            if len(group) < self.batch_size and wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
                continue
            taken = {id(p) for p in group}
            self._queue = [p for p in self._queue if id(p) not in taken]
            self.on_queue(len(self._queue))
            self.on_batch(len(group))
            start = time.monotonic()
            seq = next(self._batches)
            try:
                results = await loop.run_in_executor(
                    self._executor, self.run_batch, head.key, [p.payload for p in group]
                )
            except Exception as exc:  # the whole batch failed: each of its requests gets the error
                results = [exc] * len(group)
            for p, result in zip(group, results):
                if not p.future.done():
                    p.future.set_result((result, BatchInfo(seq, len(group), start - p.enqueued)))
