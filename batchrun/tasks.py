"""Async mode's poll scheduler: every pending task polled on its own backoff, all under one budget.

Thousands of pending tasks must not flood the provider: each task waits `poll_delay(polls)` between polls
(~1.5 s growing to ~12 s), the most overdue task goes first, and polls across all tasks are held to
`limits.poll_rps` by a token bucket. A 429 on a poll pauses every poll for the time the provider asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from aiolimiter import AsyncLimiter

from .providers.zhipu import poll_delay
from .transport import Reply

MAX_POLLS_IN_FLIGHT = 64


class Polled(Protocol):
    task_id: str | None
    polls: int


T = TypeVar("T", bound=Polled)


class Poller(Generic[T]):
    def __init__(self, poll: Callable[[str], Awaitable[Reply]], on_answer: Callable[[T, Reply], None],
                 rps: float, *, clock: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = random.random) -> None:
        self.poll, self.on_answer, self.clock, self.jitter = poll, on_answer, clock, jitter
        self.budget = AsyncLimiter(max(1.0, rps), max(1.0, rps) / rps)  # about one second's worth of burst
        self.slots = asyncio.Semaphore(MAX_POLLS_IN_FLIGHT)
        self.heap: list[tuple[float, int, T]] = []
        self.seq = itertools.count()
        self.inflight = 0
        self.polls = 0
        self.paused_until = 0.0
        self.changed = asyncio.Event()
        self.running: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        """Tasks submitted and not yet answered for good."""
        return len(self.heap) + self.inflight

    def add(self, item: T, delay: float | None = None) -> None:
        """Schedule the next poll of `item`: after `delay`, or on the task's own backoff."""
        wait = poll_delay(item.polls, self.jitter()) if delay is None else delay
        heapq.heappush(self.heap, (self.clock() + wait, next(self.seq), item))
        self.changed.set()

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, self.clock() + seconds)

    async def run(self) -> None:
        try:
            while True:
                if not self.heap:
                    self.changed.clear()
                    await self.changed.wait()
                    continue
                wait = max(self.heap[0][0], self.paused_until) - self.clock()
                if wait > 0:
                    self.changed.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), wait)
                    continue
                await self.slots.acquire()
                await self.budget.acquire()
                if not self.heap or max(self.heap[0][0], self.paused_until) > self.clock():
                    self.slots.release()  # a pause began while we waited for the budget
                    continue
                _, _, item = heapq.heappop(self.heap)
                self.inflight += 1
                task = asyncio.create_task(self._poll(item))
                self.running.add(task)
                task.add_done_callback(self.running.discard)
        finally:
            for task in self.running:
                task.cancel()

    async def _poll(self, item: T) -> None:
        try:
            assert item.task_id is not None
            reply = await self.poll(item.task_id)
            self.polls += 1
            item.polls += 1
        finally:
            self.inflight -= 1
            self.slots.release()
        self.on_answer(item, reply)
