"""The run loop: rows in, final records out, resumably. A lane (online, or Zhipu's async tasks) sends each
attempt and says what its answer means; the loop admits rows under the limits, retries, stops and flushes.

One dispatcher takes rows (retries first, then the input), waits for a concurrency slot and the rate limits,
and starts one attempt each. Final records are written the moment a row is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from .. import halt
from ..errors import BatchrunError, FatalProviderError
from ..lanes import Lane, LaneContext, Row
from ..lanes.batchchat import BatchChatLane
from ..lanes.online import OnlineLane
from ..lanes.outcome import Answered, BadInput, Done, Failed, Held, Outcomes, RetryLater, SendAgain
from ..lanes.tasks import TaskLane
from ..limits.budget import BudgetReached
from ..limits.keypool import KeyPool, Member
from ..limits.throttle import Throttle, Ticket
from ..providers import make_auth
from ..providers.transport import Http, Network, Reply
from ..retry import PROXY_AUTH, Decision, Verdict, backoff_delay, endpoint_sign, proxy_failure
from ..rows.request import BadRow, Request, batched
from ..rows.sources import RawRow, iter_rows
from ..spec.presets import PRESETS
from ..store.rundir import RunState
from ..text.words import plural
from .context import RunContext
from .schedule import PriceHold
from .shared import FLUSH_EVERY_S, RunControl

STOP_GRACE_S = 5.0
ENDPOINT_PROOF_ROWS = 8  # rows whose first answers all say the endpoint is wrong: stop the run


class RunLoop(RunControl):
    def __init__(
        self,
        ctx: RunContext,
        *,
        throttle: Callable[[str, frozenset[str]], Throttle] | None = None,
        source: Callable[[Callable[[int], bool]], Iterator[RawRow]] | None = None,
    ) -> None:
        """`throttle` (a scaled-out worker's): each key's throttle, by its variable and the codes that mean too
        many in flight; `source`: the rows to take (by default the whole input), given which to pass over."""
        super().__init__(ctx)
        log = ctx.log
        spec = self.spec
        errors = PRESETS[spec.provider.name].errors
        # A submission holds no slot while its task runs: what an async provider's "too many in flight" counts
        # is unknown (running tasks, most likely, which limits.max_pending caps), so there it is a plain 429.
        in_flight_codes = errors.concurrency if spec.provider.mode != "async" else frozenset()
        throttle = throttle or (
            lambda env, codes: Throttle(spec.limits, spec.limits.tpm_accounting, log, concurrency_codes=codes)
        )
        self.source = source or functools.partial(iter_rows, spec.input)
        self.pool = KeyPool(
            [Member(env, make_auth(key, spec.provider.auth), throttle(env, in_flight_codes)) for env, key in ctx.keys]
        )
        lane = LaneContext(
            spec=spec,
            base_url=ctx.base_url,
            errors=errors,
            pool=self.pool,
            checkpoint=ctx.checkpoint,
            tasks=ctx.state.tasks,
            build=self.build,
            log=log,
            t_wall0=time.time(),
        )
        lanes: dict[str, Callable[[LaneContext], Lane]] = {"async": TaskLane, "batch-chat": BatchChatLane}
        self.lane = lanes.get(spec.provider.mode, OnlineLane)(lane)
        self.ready: deque[Row] = deque()  # retries whose backoff is over
        self.backoffs: set[asyncio.TimerHandle] = set()
        self.attempts: set[asyncio.Future[None]] = set()  # attempts on the wire
        self._wake = asyncio.Event()
        self.interrupts = 0
        self.dispatcher: asyncio.Task[None] | None = None
        # Until some answer shows the endpoint is there, answers that say it is not are parked, not acted on: if
        # the first rows all get them, the run stops with every row still pending.
        self.unproven: list[tuple[Row, Reply, Ticket, str]] | None = []
        # schedule.avoid_peak: no row goes out while the model's price is above its cheapest window's
        self.schedule = PriceHold(spec, lambda: self.ledger.pending, log) if spec.schedule.avoid_peak else None

    # --- the run -------------------------------------------------------------------------------------

    async def run(self) -> None:
        if not await self.preflight():
            return
        provider = self.spec.provider
        network = Network(provider.proxy, provider.ca_bundle, trust_env=provider.simulate is None)
        slots = sum(m.throttle.concurrency.maximum for m in self.pool.members)
        http = Http(slots + self.lane.connections, network)
        ticks = [m.throttle.tick_forever() for m in self.pool.members]
        self.act(self.lane.begin(http))  # the tasks an earlier session left (a row of them that no longer builds)
        loops = [self.flush_forever(), *ticks, *self.lane.background(self._deliver)]
        background = [asyncio.ensure_future(loop) for loop in loops]
        self.dispatcher = asyncio.create_task(self._dispatch())
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await self.dispatcher
            if self.unproven and not self.stopping:  # the rows ran out (submit --limit) before the proof did
                self._wrong_endpoint()
            if self.attempts:
                # at the budget, what is in flight is paid for: let it finish (and be recorded) in its own time
                grace = (
                    self.spec.retry.timeout_s + STOP_GRACE_S if isinstance(self.error, BudgetReached) else STOP_GRACE_S
                )
                _, pending = await asyncio.wait(self.attempts, timeout=grace if self.interrupts < 2 else 0)
                for attempt in pending:
                    attempt.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for handle in self.backoffs:
                handle.cancel()
            for loop in background:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await http.close()

    async def _dispatch(self) -> None:
        rows = self._rows()
        exhausted = False
        while not self.stopping:
            if not self.lane.has_room(self.pool.inflight):
                start = time.monotonic()
                await self._sleep()
                self.pool.members[0].throttle.pace.wait("max_pending", time.monotonic() - start)
                continue
            if self.ready:
                row = self.ready.popleft()
            elif not exhausted:
                nxt = next(rows, None)
                if nxt is None:
                    exhausted = True
                    continue
                if isinstance(nxt, BadRow):
                    self._record_bad(nxt)
                    if self.progress.failed % 256 == 0:
                        await asyncio.sleep(0)
                    continue
                row = Row(nxt, attempts=self.repairs.steps(nxt.row) if self.repairs else 0)
            else:
                if self.pool.inflight == 0 and not self.backoffs and not self.lane.held:
                    return
                await self._sleep()
                continue
            if self.schedule is not None:
                await self.schedule.until_cheap()  # the row waits in hand (pending: never sent), or is cancelled
            if self.budget is not None and not self._within_budget(row):
                return
            if not self.pool.live:  # every key refused: the run is stopping
                return
            member = row.member = self.pool.pick(row.request)
            ticket = await member.throttle.admit(row.request)
            attempt = asyncio.ensure_future(self._attempt(row, ticket))
            self.attempts.add(attempt)
            attempt.add_done_callback(self.attempts.discard)

    def _within_budget(self, row: Row) -> bool:
        """Hold the row's worst case against limits.max_cost; at the budget, stop taking rows (the row stays
        pending) and let what is in flight finish."""
        assert self.budget is not None
        try:
            if self.budget.reserve(row.request):
                return True
            self.failed(self.budget.reached())
        except BatchrunError as exc:  # a row's own model has no price
            self.failed(exc)
        return False

    async def _sleep(self) -> None:
        self._wake.clear()
        await self._wake.wait()

    def wake(self) -> None:
        self._wake.set()

    def _rows(self) -> Iterator[Request | BadRow]:
        """The input's rows without a final record (nor a task held for them), embeddings rows alike batched."""
        build, done, skip_held = self.build, self.state.done, self.lane.skip
        skip = (lambda row: row in done or skip_held(row)) if self.state.tasks else done.__contains__
        raws = self.source(skip)
        last = self.last_row
        if last is not None:
            raws = itertools.takewhile(lambda raw: raw.row <= last, raws)
        built: Iterator[Request | BadRow] = (build(raw) for raw in raws)
        if self.ledger.cache is not None:  # answers an earlier run paid for are recorded, not asked again
            built = self._replay(built)
        return batched(built, self.spec.limits.batch_size)

    def _replay(self, built: Iterator[Request | BadRow]) -> Iterator[Request | BadRow]:
        """The rows the response cache cannot answer. Those it can are recorded here, without a turn of the event
        loop in between (a million of them take a minute): so the stop flag is looked at on each (Ctrl-C stops the
        replay at once, the rows replayed so far recorded), and the progress line and usage.json kept fresh."""
        cached, clock = self.ledger.from_cache, time.monotonic
        last = clock()
        for hits, r in enumerate(built):
            if not (isinstance(r, Request) and cached(r)):
                yield r
            elif halt.stopped():
                self.stop(RunState.INTERRUPTED, "interrupted")
                return
            elif hits % 1024 == 0 and clock() - last >= FLUSH_EVERY_S:
                last = clock()
                if not self.refresh_and_flush():
                    return

    async def _attempt(self, row: Row, ticket: Ticket) -> None:
        row.attempts += 1
        reply: Reply | None = None
        held = False
        member = row.member
        assert member is not None
        try:
            with self.guard():
                reply = await self.lane.call(row.request, member.auth)
                if reply.status == 429:
                    row.rate_limited += 1
                repairs = self.repairs.steps(row.request.row) if self.repairs else 0  # asked again, not retried
                self.progress.attempt(retried=row.attempts > 1 + repairs, rate_limited=reply.status == 429)
                if self.unproven is not None and self._park(row, reply, ticket):
                    return
                held = self.act(await self.lane.answer(row, reply, ticket))
        finally:
            member.throttle.done(ticket, reply, settle=not held)
            self.wake()  # after the slot is free: the dispatcher may be waiting for the last one

    def _park(self, row: Row, reply: Reply, ticket: Ticket) -> bool:
        """Hold an answer that says the endpoint is wrong until another proves it right (then act on every held
        one) or the first rows all say so (then stop: exit 1, the rows still pending)."""
        assert self.unproven is not None
        sign = endpoint_sign(reply.status, reply.body, reply.error)
        if sign is None:
            held, self.unproven = self.unproven, None
            for parked_row, parked_reply, parked_ticket, _ in held:
                self._later(self.lane.answer(parked_row, parked_reply, parked_ticket))
            return False
        self.unproven.append((row, reply, ticket, sign))
        if len({parked.request.row for parked, _, _, _ in self.unproven}) >= min(
            ENDPOINT_PROOF_ROWS, max(1, self.ledger.pending)
        ):
            self._wrong_endpoint()
        return True

    def _wrong_endpoint(self) -> None:
        """Stop the run: every row sent so far got an answer that says the endpoint is wrong."""
        assert self.unproven
        rows = {parked.request.row for parked, _, _, _ in self.unproven}
        signs = sorted({seen for _, _, _, seen in self.unproven})
        if all(proxy_failure(reply.error) for _, reply, _, _ in self.unproven):  # the signs name the proxy
            self.failed(
                FatalProviderError(
                    f"the first {len(rows)} rows' requests all failed at the proxy ({'; '.join(signs)}): check that "
                    "proxy, or fix the setting named (NO_PROXY exempts a host); no row was recorded, so the same "
                    "command resumes once it is fixed"
                )
            )
            return
        self.failed(
            FatalProviderError(
                f"the first {len(rows)} rows' requests to {self.ctx.base_url} all failed as if the endpoint were wrong "
                f"({'; '.join(signs)}): check provider.base_url (and the model name); no row was recorded, so the "
                "same command resumes once it is fixed"
            )
        )

    def _later(self, step: Coroutine[Any, Any, Outcomes]) -> None:
        async def run() -> None:
            with self.guard():
                self.act(await step)

        flight = asyncio.ensure_future(run())
        self.attempts.add(flight)
        flight.add_done_callback(self.attempts.discard)

    # --- what answers mean -----------------------------------------------------------------------------

    def act(self, outcomes: Outcomes) -> bool:
        """Carry out what a lane says its answers mean, in order. True when one says the provider now holds its
        row (the attempt's TPM charge then stands until the lane settles it)."""
        held = False
        for outcome in outcomes:
            match outcome:
                case Answered(row, reply, decision):
                    self._decide(row, reply, decision)
                case Done(row, reply, decision, part, batch):
                    self._record(row, reply, decision, part=part, batch=batch)
                case RetryLater(row, decision, immediately):
                    self._retry_later(row, decision, immediately=immediately)
                case SendAgain(rows):
                    self.ready.extend(rows)
                case Failed(error):
                    self.failed(error)
                case Held():
                    held = True
                case BadInput(bad):
                    self._record_bad(bad)
        return held

    def _deliver(self, step: Callable[[], Outcomes]) -> None:
        """What a lane's own loop learns (a task's poll answered): worked out and acted on under the guard."""
        with self.guard():
            self.act(step())

    def _decide(self, row: Row, reply: Reply, decision: Decision) -> None:
        """Act on a classified answer: record it, retry the row, or stop the run."""
        if decision.verdict is Verdict.OK:
            if self.repairs is not None and not row.request.parts:
                self._check_output(row, reply)
            else:
                self._record(row, reply, None)
        elif decision.verdict is Verdict.STOP_RUN:
            self._refused(row, decision, reply.status)
        elif decision.verdict is Verdict.RETRY and row.attempts < self.spec.retry.max_attempts:
            row.billed(reply)
            self._retry_later(row, decision)
        else:
            parts = row.request.parts
            for i, part in enumerate(parts):
                self._record(row, reply, decision, part=part, batch={"index": i, "size": len(parts)})
            if not parts:
                self._record(row, reply, decision)

    def _check_output(self, row: Row, reply: Reply) -> None:
        """Structured output: keep an answer that fits the schema; ask again about one that does not (repairs.py),
        or, out of repairs, record the row as invalid_output with the answer kept."""
        assert self.repairs is not None
        judged = self.repairs.judge(reply.body)
        if judged.problem is None:
            self.ledger.record(row, reply, None, self.lane.annotate, output=judged.value)
            return
        nxt = self.repairs.next_request(row.request, judged, reply.body)
        if nxt is not None:
            row.request = nxt
            self.progress.repaired()
            self.ready.append(row)
            self.wake()
            return
        decision, path = self.repairs.failure(judged)
        self.ledger.record(row, reply, decision, self.lane.annotate, path=path)

    def _retry_later(self, row: Row, decision: Decision, *, immediately: bool = False) -> None:
        retry = self.spec.retry
        delay = (
            0.0
            if immediately
            else backoff_delay(
                row.attempts,
                base=retry.backoff_s,
                cap=retry.max_backoff_s,
                retry_after=decision.retry_after,
                jitter=random.random(),
            )
        )

        def ready() -> None:
            self.backoffs.discard(handle)
            self.ready.append(row)
            self.wake()

        handle = asyncio.get_running_loop().call_later(delay, ready)
        self.backoffs.add(handle)

    # --- records -------------------------------------------------------------------------------------

    def _record(
        self,
        row: Row,
        reply: Reply,
        decision: Decision | None,
        *,
        part: Request | None = None,
        batch: dict[str, int] | None = None,
    ) -> None:
        self.ledger.record(row, reply, decision, self.lane.annotate, part=part, batch=batch)

    def _record_bad(self, bad: BadRow) -> None:
        try:
            self.ledger.record_bad(bad)
        except BatchrunError as exc:
            self.failed(exc)

    # --- stopping ------------------------------------------------------------------------------------

    def _refused(self, row: Row, decision: Decision, status: int | None) -> None:
        """The provider refused the key or its account (401/403, no money, no quota). In a key pool that key is
        retired and the row goes to another; the run stops (resumable) when no key is left. A proxy that wants
        credentials refuses every key alike: the run stops, no key retired."""
        if decision.code == PROXY_AUTH:
            self.failed(FatalProviderError(decision.message))
            return
        member = row.member
        key_problem = status in (401, 403)
        what = (
            f"refused the key ({decision.message})"
            if key_problem
            else f"refused the account ({decision.code}: {decision.message})"
        )
        if self.pool.pooled and member is not None:
            if self.pool.retire(member, f"{status} {decision.code}"):
                left = len(self.pool.live)
                self.log(f"the provider {what} in ${member.env}: that key is retired, {plural(left, 'key')} left")
            if self.pool.live:
                self._retry_later(row, decision, immediately=True)
                return
        if self.stopping is RunState.STOPPED:
            return
        if self.pool.pooled:
            why = f"the provider refused every key of the pool ({self._retired()}); check them, then resume"
        elif decision.fix:  # the provider's table says what to do about this code
            why = f"the provider answered {decision.code} ({decision.message}); {decision.fix}"
        elif key_problem:
            why = f"the provider {what}; check ${self.spec.provider.api_key_env}"
        else:
            why = f"the provider {what}; top up or wait for the quota to reset"
        self.error = FatalProviderError(why)
        self.stop(RunState.STOPPED, why)

    def _retired(self) -> str:
        return ", ".join(f"${m.env}: {m.retired}" for m in self.pool.members if m.retired)

    def stopped(self) -> None:
        self.wake()
        if self.dispatcher is not None:
            self.dispatcher.cancel()
        if self.stopping is RunState.STOPPED and self.pool.inflight:  # Ctrl-C says so itself
            paid = isinstance(self.error, BudgetReached)  # at a budget or quota: what is in flight is paid for
            grace = STOP_GRACE_S + (self.spec.retry.timeout_s if paid else 0)
            self.log(f"stopping: waiting up to {grace:,.0f} s for {plural(self.pool.inflight, 'request')} in flight")

    def interrupt(self, terminal: bool = True) -> None:
        """Ctrl-C / SIGTERM: stop taking rows and let in-flight requests finish; a second one cancels them."""
        self.interrupts += 1
        if self.interrupts == 1:
            again = " (Ctrl-C again to stop at once)" if terminal else ""  # a SIGTERM comes from no keyboard
            inflight = self.pool.inflight
            self.log(
                f"stopping: waiting up to {STOP_GRACE_S:.0f} s for {plural(inflight, 'request')} in flight{again}"
                if inflight
                else "stopping"  # a start-up phase, a replay from the cache: nothing to wait for
            )
            self.stop(RunState.INTERRUPTED, "interrupted")
        else:
            for attempt in self.attempts:
                attempt.cancel()

    # --- usage.json ----------------------------------------------------------------------------------

    def before_refresh(self) -> None:
        if self.spec.provider.mode == "async":
            self.progress.tasks = self.lane.held

    def facts(self) -> dict[str, Any]:
        members = self.pool.members
        keys = {m.env: {**m.throttle.snapshot(), "retired": m.retired} for m in members} if self.pool.pooled else {}
        return {
            "throttle": members[0].throttle.snapshot(),
            **({"key_throttles": keys} if keys else {}),
            **self.lane.totals(),
            **(self.schedule.facts() if self.schedule is not None else {}),
        }
