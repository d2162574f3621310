"""The task lane: Zhipu's asyncCompletions. Submit a row as a task, write its id down durably, then poll it
until it ends; a resumed run polls the ids it holds and never pays for those rows again.

Thousands of held tasks must not flood the provider: each task waits `poll_delay(polls)` between polls (~1.5 s
growing to ~12 s), the most overdue task goes first, and polls across all tasks are held to `limits.poll_rps`.
A 429 on a poll pauses every poll for the time the provider asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiolimiter import AsyncLimiter

from ..errors import FatalProviderError
from ..limits.controllers import Charge
from ..limits.throttle import Ticket
from ..providers.transport import Http, Reply
from ..providers.zhipu import EXPIRED, AsyncCompletions, TaskAction, judge_task, poll_delay, task_id
from ..records import Record, now_iso
from ..retry import Decision, Verdict, classify, error_details
from ..rows.images import ImageReader
from ..rows.request import BadRow, Request
from ..rows.sources import iter_rows
from ..text.words import plural
from . import LaneContext, Row
from .images import Fetcher
from .outcome import Answered, BadInput, Deliver, Done, Failed, Held, Outcome, Outcomes, RetryLater

MAX_POLLS_IN_FLIGHT = 64
UNCONFIRMED_LIMIT = 5  # unknown task ids, with no task ever found, that mean a wrong poll URL
HELD = Held()


@dataclass(eq=False)
class Task:
    """The task a row is held in at the provider."""

    row: Row
    task_id: str | None = None
    submitted_at: float = 0.0  # epoch seconds
    polls: int = 0
    charge: Charge | None = None  # the TPM charge, settled once the task's usage is known
    resubmitted: list[dict[str, Any]] = field(default_factory=list)  # tasks given up on (expired, failed), and why


def task_of(row: Row) -> Task:
    if row.lane is None:
        row.lane = Task(row)
    task: Task = row.lane
    return task


class TaskLane:
    connections = MAX_POLLS_IN_FLIGHT

    def __init__(self, ctx: LaneContext) -> None:
        self.ctx = ctx
        self.timeout_s = ctx.spec.retry.timeout_s
        self.http: Http | None = None
        self.deliver: Deliver | None = None
        self.path = AsyncCompletions(ctx.base_url, ctx.pool.members[0].auth)
        self.fetcher = Fetcher(ImageReader(ctx.spec) if ctx.spec.input.images else None)
        self.poller = Poller(self._poll, self._on_poll, ctx.spec.limits.poll_rps)
        self.max_pending = ctx.spec.limits.max_pending
        self.polls_answered = 0  # polls that found their task: proof the poll URL is right
        self.unconfirmed: list[tuple[Task, Reply]] = []  # unknown task ids seen before that proof

    def begin(self, http: Http) -> Outcomes:
        self.http = http
        return self._resume()

    def background(self, deliver: Deliver) -> list[Coroutine[Any, Any, None]]:
        self.deliver = deliver
        return [self.poller.run()]

    @property
    def held(self) -> int:
        return self.poller.pending

    def has_room(self, inflight: int) -> bool:
        return self.poller.pending + inflight < self.max_pending

    def skip(self, row: int) -> bool:
        return row in self.ctx.tasks

    def totals(self) -> dict[str, Any]:
        return {"tasks_pending": self.poller.pending}

    # --- submitting ----------------------------------------------------------------------------------------

    async def call(self, request: Request, auth: Callable[[], str | None]) -> Reply:
        assert self.http is not None, "the run has not begun"
        sent = await self.fetcher.ready(request, self.http, self.timeout_s)  # input.fetch_images
        if isinstance(sent, Reply):
            return sent
        return await self.path.call(self.http, sent, self.timeout_s, auth)

    async def answer(self, row: Row, reply: Reply, ticket: Ticket) -> Outcomes:
        decision = self._classify_submission(reply)
        if decision.verdict is not Verdict.OK:
            return (Answered(row, reply, decision),)
        task = task_of(row)
        task.charge = ticket.charge
        await self._hold(task, reply)
        return (HELD,)

    def _classify_submission(self, reply: Reply) -> Decision:
        if reply.status == 200 and isinstance(reply.body, dict) and error_details(reply.body)[0] is None:
            if task_id(reply.body) is None:
                return Decision(Verdict.RETRY, "no_task_id", "the submission was accepted without a task id")
            return Decision(Verdict.OK, "ok", "")
        return classify(reply.status, reply.body, reply.headers, reply.error, self.ctx.errors)

    async def _hold(self, task: Task, reply: Reply) -> None:
        """Write the task id down durably before waiting on it: a resumed run polls it instead of paying again."""
        task.task_id, task.submitted_at = task_id(reply.body), time.time()
        req = task.row.request
        entry: dict[str, Any] = {
            "row": req.row,
            "task_id": task.task_id,
            "custom_id": req.custom_id,
            "attempt": task.row.attempts,
            "rate_limited": task.row.rate_limited,  # its submissions answered 429: the record counts them
            "submitted_at": now_iso(),
            "t": round(task.submitted_at, 3),
        }
        if self.ctx.pool.pooled and task.row.member is not None:  # its polls must go out with the same key
            entry["key_env"] = task.row.member.env
        if task.resubmitted:  # so that a resumed run's record still says why the row was submitted again
            entry["resubmitted"] = task.resubmitted
        self.ctx.checkpoint.append_task(entry)
        await self.ctx.checkpoint.tasks_durable()
        self.poller.add(task)

    def _resume(self) -> Outcomes:
        """Poll the tasks an earlier session submitted; their rows are never submitted again unless the
        provider no longer knows the task."""
        held, pool = self.ctx.tasks, self.ctx.pool
        if not held:
            return ()
        self.ctx.log(f"polling {plural(len(held), 'task')} submitted by an earlier session")
        bad: list[Outcome] = []
        for raw in iter_rows(self.ctx.spec.input, skip=lambda row: row not in held):
            request = self.ctx.build(raw)
            if isinstance(request, BadRow):  # cannot happen with an unchanged input; never lose the row
                bad.append(BadInput(request))
                continue
            entry = held[raw.row]
            member = pool.by_env(entry.get("key_env")) or pool.live[0]
            attempts, limited = int(entry.get("attempt") or 1), int(entry.get("rate_limited") or 0)
            task = task_of(Row(request, attempts=attempts, rate_limited=limited, member=member))
            task.task_id, task.submitted_at = entry["task_id"], float(entry.get("t") or time.time())
            task.resubmitted = list(entry.get("resubmitted") or [])
            self.poller.add(task, delay=0.0)
        return bad

    # --- polling -------------------------------------------------------------------------------------------

    async def _poll(self, task: Task) -> Reply:
        assert task.task_id is not None
        member = task.row.member
        assert self.http is not None, "the run has not begun"
        return await self.path.poll(self.http, task.task_id, self.timeout_s, member.auth if member else None)

    def _on_poll(self, task: Task, reply: Reply) -> None:
        assert self.deliver is not None, "polls run in the lane's background loop"
        self.deliver(lambda: self._task_answer(task, reply))

    def _task_answer(self, task: Task, reply: Reply) -> Outcomes:
        verdict = judge_task(reply, self.ctx.errors)
        outcomes = self._task_found() if verdict.found else []
        if verdict.action is TaskAction.POLL:
            if verdict.pause:
                self.poller.pause(verdict.pause)
            self.poller.add(task)
            return outcomes
        assert verdict.decision is not None
        if verdict.action is TaskAction.EXPIRED:
            return [*outcomes, *self._expired(task, reply)]
        if task.charge is not None and task.row.member is not None:
            task.row.member.throttle.settle(task.charge, reply)
            task.charge = None
        if verdict.action is TaskAction.RESUBMIT:
            outcomes.append(self._give_up(task, reply, verdict.decision))
        else:
            outcomes.append(Answered(task.row, reply, verdict.decision))
        return outcomes

    def _expired(self, task: Task, reply: Reply) -> Outcomes:
        """An unknown task id: submit the row again. Until some poll has found a task, though, unknown ids of
        tasks just submitted may mean a wrong poll URL rather than expiry: hold them, and stop the run if several
        pile up. (Tasks from an earlier session may simply be gone, as an in-process simulator's are.)"""
        if self.polls_answered or task.submitted_at < self.ctx.t_wall0:
            return (self._give_up(task, reply, EXPIRED),)
        self.unconfirmed.append((task, reply))
        if len(self.unconfirmed) >= UNCONFIRMED_LIMIT:
            return (
                Failed(
                    FatalProviderError(
                        f"{len(self.unconfirmed)} tasks polled at {self.path.result_url}<id> were unknown to the "
                        f"provider (HTTP {reply.status}) and none was found: check provider.base_url"
                    )
                ),
            )
        return ()

    def _task_found(self) -> list[Outcome]:
        """A poll found its task: the poll URL is right, so the unknown ids held until now were expired."""
        self.polls_answered += 1
        if self.polls_answered > 1:
            return []
        given_up = [self._give_up(task, reply, EXPIRED) for task, reply in self.unconfirmed]
        self.unconfirmed.clear()
        return given_up

    def _give_up(self, task: Task, reply: Reply, decision: Decision) -> Outcome:
        """Submit the row again (noted in its record), within retry.max_attempts."""
        if task.row.attempts >= self.ctx.spec.retry.max_attempts:
            return Done(task.row, reply, decision)
        task.row.billed(reply)
        task.resubmitted.append(
            {"task_id": task.task_id, "reason": decision.code, "message": decision.message, "polls": task.polls}
        )
        task.task_id, task.polls = None, 0
        return RetryLater(task.row, decision, immediately=decision.code == EXPIRED.code)

    def annotate(self, row: Row, record: Record) -> None:
        """The wait is submission to result, not the last poll; polls and given-up tasks are the row's too."""
        task = task_of(row)
        record["task_id"] = task.task_id
        record["polls"] = task.polls + sum(r["polls"] for r in task.resubmitted)
        record["latency_s"] = round(max(0.0, time.time() - task.submitted_at), 3) if task.task_id else 0.0
        if task.resubmitted:
            record["resubmitted"] = task.resubmitted
        self.fetcher.annotate(record)


class Poller:
    """Every held task polled on its own backoff, the most overdue first, all under one budget of polls."""

    def __init__(
        self,
        poll: Callable[[Task], Awaitable[Reply]],
        on_answer: Callable[[Task, Reply], None],
        rps: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.poll, self.on_answer, self.clock, self.jitter = poll, on_answer, clock, jitter
        self.budget = AsyncLimiter(max(1.0, rps), max(1.0, rps) / rps)  # about one second's worth of burst
        self.slots = asyncio.Semaphore(MAX_POLLS_IN_FLIGHT)
        self.heap: list[tuple[float, int, Task]] = []
        self.seq = itertools.count()
        self.inflight = 0
        self.polls = 0
        self.paused_until = 0.0
        self.changed = asyncio.Event()
        self.flights: set[asyncio.Future[None]] = set()  # polls on the wire

    @property
    def pending(self) -> int:
        """Tasks submitted and not yet answered for good."""
        return len(self.heap) + self.inflight

    def add(self, item: Task, delay: float | None = None) -> None:
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
                flight = asyncio.ensure_future(self._poll(item))
                self.flights.add(flight)
                flight.add_done_callback(self.flights.discard)
        finally:
            for poll in self.flights:
                poll.cancel()

    async def _poll(self, item: Task) -> None:
        try:
            reply = await self.poll(item)
            self.polls += 1
            item.polls += 1
        finally:
            self.inflight -= 1
            self.slots.release()
        self.on_answer(item, reply)
