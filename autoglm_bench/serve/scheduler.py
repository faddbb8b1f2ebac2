"""The batching scheduler: requests queue, and one worker thread runs them in batches.

Each request has a key (model, task, operation and its settings); only requests with equal keys share a
batch, so different models or tasks never share a forward pass. The next batch starts from the request that
ranks first among those whose model is loaded (``lease(key)`` is not None; a model that is not has its load
started and its requests wait, while other models' requests go on): the oldest one (policy ``fifo``) or the
one with the highest effective priority (policy ``priority``): its priority plus an ageing term that grows
with its wait, so that a request that has waited ``max_queue_wait_s`` goes before any newer one, whatever
their priorities. It takes up to ``batch_size`` queued requests with the head's key, in rank order, and
runs once it is full or the head has waited ``max_wait_s``. While a batch runs, new requests queue up, so a
busy server forms full batches without waiting.

The queue holds at most ``max_queue`` requests (more are refused with 503 and Retry-After), and a request
not answered by its deadline gets 504 (and leaves the queue, as does one whose client went away).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import math
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from .errors import BadRequest


@dataclass
class _Pending:
    key: Hashable
    payload: Any
    priority: float
    seq: int
    enqueued: float
    deadline: float
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchInfo:
    """What a request's batch was: its sequence number, size, and how long the request queued."""

    seq: int
    size: int
    queued_s: float


class Worker:
    """One daemon thread running submitted calls in order. Daemon: a batch still running when the server
    has given up waiting for it does not hold up the process's exit."""

    def __init__(self, name: str = "autoglm-batch"):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0  # submitted and not finished
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._idle:
            self._pending += 1
        self._jobs.put((future, fn, args))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every submitted call to finish; whether they did."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the waiting request
                    future.set_exception(exc)
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()


class Scheduler:
    """Batches submitted payloads and runs ``run_batch(key, model, payloads, deadline) -> results`` (one per
    payload, in order) on a single worker thread, ``model`` being what ``lease(key)`` leased (None without
    ``lease``) and ``deadline`` the latest of the batch's requests' deadlines (``time.monotonic()``). A result
    that is an exception is raised to its own request only.

    >>> scheduler = Scheduler(run_batch, batch_size=16, max_wait_s=0.005, policy="fifo")  # doctest: +SKIP
    >>> result, info = await scheduler.submit(("tiny_glm", "sst2", "choices"), payload)  # doctest: +SKIP
    """

    def __init__(
        self,
        run_batch: Callable[[Hashable, Any, list[Any], float], list[Any]],
        batch_size: int,
        max_wait_s: float,
        policy: str = "fifo",
        max_queue: int = 256,
        max_queue_wait_s: float = 30.0,
        priority_span: float = 200.0,
        timeout_s: float = 120.0,
        lease: Callable[[Hashable], Any] | None = None,
        on_batch: Callable[[int], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ):
        self.run_batch = run_batch
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.policy = policy
        self.max_queue = max_queue
        self.max_queue_wait_s = max_queue_wait_s
        self.priority_span = priority_span  # what ageing adds over max_queue_wait_s: the whole priority range
        self.timeout_s = timeout_s
        self.lease = lease or (lambda key: contextlib.nullcontext())
        self.on_batch = on_batch or (lambda size: None)
        self.on_queue = on_queue or (lambda depth: None)
        self._queue: list[_Pending] = []
        self._seq = itertools.count()
        self._batches = itertools.count()
        self._batch_s = 0.0  # recent batch duration (moving average), for Retry-After
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closed = False
        self.worker = Worker()

    def start(self) -> None:
        """Start dispatching on the running event loop."""
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    def wake(self) -> None:
        """Have the dispatcher look at the queue again (a model finished loading)."""
        if self._wake is not None:
            self._wake.set()

    def close(self) -> None:
        """Take no new requests (503); queued ones still run."""
        self._closed = True

    async def stop(self) -> None:
        """Stop dispatching: every queued request gets 503; a running batch is not waited for."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.fail(lambda key: True, BadRequest(503, "the server is shutting down"))
        self.worker.stop()

    def fail(self, matches: Callable[[Hashable], bool], error: BaseException) -> None:
        """Answer every queued request whose key ``matches`` with ``error`` (a model that failed to load)."""
        for item in [p for p in self._queue if matches(p.key)]:
            self._queue.remove(item)
            if not item.future.done():
                item.future.set_exception(error)
        self.on_queue(len(self._queue))

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(
        self, key: Hashable, payload: Any, priority: float = 0.0, deadline: float | None = None
    ) -> tuple[Any, BatchInfo]:
        """Queue one payload; returns its result and :class:`BatchInfo` once its batch has run. Refused with
        503 when the queue is full or the server is closing, 504 when ``deadline`` (default: ``timeout_s``
        from now) passes first."""
        assert self._wake is not None, "Scheduler.start() was not called"
        if self._closed:
            raise BadRequest(503, "the server is shutting down")
        if len(self._queue) >= self.max_queue:
            retry = max(1, min(60, math.ceil(len(self._queue) / self.batch_size * self._batch_s)))
            raise BadRequest(
                503, f"the queue is full ({len(self._queue)} requests); retry later", {"Retry-After": str(retry)}
            )
        now = time.monotonic()
        deadline = now + self.timeout_s if deadline is None else deadline
        future = asyncio.get_running_loop().create_future()
        item = _Pending(key, payload, priority, next(self._seq), now, deadline, future)
        self._queue.append(item)
        self.on_queue(len(self._queue))
        self._wake.set()
        try:
            result, info = await asyncio.wait_for(asyncio.shield(future), timeout=max(0.0, deadline - now))
        except asyncio.TimeoutError:
            self._drop(item)
            raise BadRequest(504, f"not answered within the request deadline ({self.timeout_s:g} s)") from None
        except asyncio.CancelledError:  # the client went away: its request leaves the queue
            self._drop(item)
            raise
        if isinstance(result, BaseException):
            raise result
        return result, info

    def _drop(self, item: _Pending) -> None:
        if item in self._queue:
            self._queue.remove(item)
            self.on_queue(len(self._queue))

    def _rank(self, item: _Pending, now: float) -> tuple:
        if self.policy != "priority":
            return (item.seq,)
        waited = now - item.enqueued
        if waited >= self.max_queue_wait_s:
            return (0, item.seq)  # overdue: before everything else, oldest first
        return (1, -(item.priority + self.priority_span * waited / self.max_queue_wait_s), item.seq)

    async def _sleep(self, timeout: float | None) -> None:
        assert self._wake is not None
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _dispatch(self) -> None:
        while True:
            if not self._queue:
                await self._sleep(None)
                continue
            now = time.monotonic()
            ranked = sorted(self._queue, key=lambda p: self._rank(p, now))
            head, lease, tried = None, None, set()
            for item in ranked:  # the first request whose model is loaded
                if item.key not in tried:
                    tried.add(item.key)
                    lease = self.lease(item.key)
                    if lease is not None:
                        head = item
                        break
            if head is None:
                await self._sleep(None)  # woken by a finished load or a new request
                continue
            group = [p for p in ranked if p.key == head.key][: self.batch_size]
            wait = head.enqueued + self.max_wait_s - now
            if len(group) < self.batch_size and wait > 0:
                lease.__exit__(None, None, None)
                await self._sleep(wait)
                continue
            await self._run(head.key, lease, group)

    async def _run(self, key: Hashable, lease: Any, group: list[_Pending]) -> None:
        taken = {id(p) for p in group}
        self._queue = [p for p in self._queue if id(p) not in taken]
        self.on_queue(len(self._queue))
        self.on_batch(len(group))
        start = time.monotonic()
        seq = next(self._batches)
        deadline = max(p.deadline for p in group)

        def work() -> list[Any]:
            with lease as model:
                return self.run_batch(key, model, [p.payload for p in group], deadline)

        try:
            results = await asyncio.wrap_future(self.worker.submit(work))
        except Exception as exc:  # the whole batch failed: each of its requests gets the error
            results = [exc] * len(group)
        seconds = time.monotonic() - start
        self._batch_s = seconds if not self._batch_s else 0.8 * self._batch_s + 0.2 * seconds
        for p, result in zip(group, results):
            if not p.future.done():
                p.future.set_result((result, BatchInfo(seq, len(group), start - p.enqueued)))
