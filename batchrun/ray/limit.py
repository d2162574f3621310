"""One limit shared by every worker of a scaled-out run: the provider sees one well-behaved client.

`SharedLimit` owns the job's RPM and TPM buckets (one set per key of a pool) and learns the limits from 429s, rate
headers and named limits, with the very `Throttle` a single machine uses. It runs in one Ray actor. Workers do not
call it per request: a worker's `Lease` holds a small stock of requests and tokens, asks for the next slice
before the stock runs out, gives back what it did not use, and reports what it sent and what the provider
answered, a few times a second. `LeasedThrottle` is the worker's throttle: its own in-flight ceiling, the
shared limit's rate.

Nothing here imports Ray: the actor is this class behind `ray.remote`, and tests drive it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..limits.controllers import Charge
from ..limits.hints import RateHints
from ..limits.throttle import Throttle
from ..providers.transport import Reply
from ..rows.request import Request
from ..spec.model import Limits
from ..spec.presets import TpmAccounting

LEASE_S = 0.1  # a worker's stock: about this long of what it has been using
REPORT_S = 0.05  # how often a worker reports what it sent and heard (when it has something to report)
HEARTBEAT_S = 0.25  # a worker with nothing to report still asks this often (a stop, a new accounting)
IDLE_S = 1.0  # a stock unused this long goes back to the shared limit
SLOT_S = 0.01  # sends are reported counted per slot of this many seconds


@dataclass
class Report:
    """What a worker saw since its last call: sends (seconds ago, how many), 429s (seconds since the request went
    out, the answer's body), tokens to give back (negative: to charge on top), the latest rate headers, and stock
    it returns unused."""

    sends: list[tuple[float, int]] = field(default_factory=list)
    limited: list[tuple[float, Any]] = field(default_factory=list)
    tokens: float = 0.0
    hints: RateHints | None = None
    returned_requests: int = 0
    returned_tokens: float = 0.0


@dataclass(frozen=True)
class Grant:
    """A slice of the shared limit. None: that limit is not known (nothing to hold back). `wait_s`: when to ask
    again if the slice fell short. `stop`: the run is stopping; finish what is in flight and take no more rows."""

    requests: int | None
    tokens: float | None
    wait_s: float = 0.0
    accounting: str = "actual"
    stop: bool = False


class SharedLimit:
    """The job's limits, per key: configured or learned, leased out in slices."""

    def __init__(
        self,
        limits: Limits,
        accounting: TpmAccounting,
        keys: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.messages: list[str] = []
        self.throttles = {key: Throttle(limits, accounting, self.messages.append, clock) for key in keys}
        self.stopping = False
        self.calls = 0
        self.sends = self.limited = 0

    def lease(self, key: str, want_requests: int, want_tokens: float, report: Report) -> Grant:
        """Learn from the report, then grant what the buckets hold now, up to what was asked."""
        self.calls += 1
        throttle, now = self.throttles[key], self.clock()
        self._learn(throttle, report, now)
        throttle.rates.tick(now)
        throttle._apply_rate()
        accounting = throttle.tokens.effective
        if self.stopping:
            return Grant(0, 0.0, HEARTBEAT_S, accounting, stop=True)
        if throttle.paused_until > now:
            return Grant(0, 0.0, throttle.paused_until - now, accounting)
        requests: int | None = None
        wait = 0.0
        if throttle.rpm is not None:  # (a bucket keeps the time by its own clock)
            bucket, at = throttle.rpm.bucket, throttle.rpm.clock()
            bucket.refill(at)
            requests = max(0, min(want_requests, math.floor(bucket.level)))
            bucket.take(requests)
            if requests < want_requests:
                wait = bucket.wait_for(1, at)
        tokens: float | None = None
        if throttle.tpm is not None:
            bucket, at = throttle.tpm.bucket, throttle.tpm.clock()
            bucket.refill(at)
            # all or nothing, as a local bucket: a request larger than the bucket goes once it is full (a debt)
            if want_tokens > 0 and bucket.level >= min(want_tokens, bucket.capacity):
                tokens = want_tokens
                bucket.take(tokens)
            else:
                tokens = 0.0
                if want_tokens > 0:
                    wait = max(wait, bucket.wait_for(want_tokens, at))
        return Grant(requests, tokens, wait, accounting)

    def _learn(self, throttle: Throttle, report: Report, now: float) -> None:
        for ago, n in report.sends:
            throttle.rates.sent.add(now - ago, n)
            self.sends += n
        for ago, body in report.limited:
            throttle.rate_limited(now - ago, Reply(429, {}, body, 0.0), now)
            self.limited += 1
        if report.hints is not None:
            throttle.hinted(report.hints, now)
        if throttle.tpm is not None and (report.tokens or report.returned_tokens):
            throttle.tpm.settle(report.tokens + report.returned_tokens)
        if throttle.rpm is not None and report.returned_requests:
            throttle.rpm.settle(report.returned_requests)

    def stop(self) -> None:
        """Every worker's next call hears that the run is stopping."""
        self.stopping = True

    def snapshot(self) -> dict[str, Any]:
        """Per key what the shared limit holds (as a throttle's snapshot), and what it has been told; the lines
        its throttles logged since the last call."""
        messages, self.messages[:] = list(self.messages), []
        return {
            "keys": {key: t.snapshot() for key, t in self.throttles.items()},
            "calls": self.calls,
            "sends": self.sends,
            "rate_limited": self.limited,
            "messages": messages,
        }


Call = Callable[[str, int, float, Report], Awaitable[Grant]]


def lease_from(actor: Any) -> Call:
    """How a worker asks the shared limit's actor (a `SharedLimit` behind `ray.remote`) for a slice."""

    async def call(key: str, requests: int, tokens: float, report: Report) -> Grant:
        grant: Grant = await actor.lease.remote(key, requests, tokens, report)
        return grant

    return call


class Lease:
    """A worker's stock of one key's shared limit: taken per request, refilled a slice at a time."""

    def __init__(self, key: str, call: Call, on_stop: Callable[[], None], clock: Callable[[], float] = time.monotonic):
        self.key, self.call, self.on_stop, self.clock = key, call, on_stop, clock
        self.requests = 0
        self.tokens = 0.0
        self.limited_requests = self.limited_tokens = True  # until the first grant says otherwise
        self.accounting = "actual"
        self.report = Report()
        self._sends: dict[int, int] = {}
        self._hints: RateHints | None = None
        self._recent: deque[tuple[float, float]] = deque()  # (when, tokens) of the last second's takes
        self._recent_tokens = 0.0
        self._want: float | None = None  # the tokens the request at the head of the queue waits for
        self._turn = asyncio.Lock()
        self._stocked = asyncio.Event()
        self._asked = asyncio.Event()
        self._last_take = clock()
        self.stopped = False

    async def take(self, tokens: float) -> None:
        """Wait until the stock holds one request and `tokens`, first come first served; take them."""
        async with self._turn:
            while not self._enough(tokens):
                self._want = tokens
                self._stocked.clear()
                self._asked.set()
                await self._stocked.wait()
            self._want = None
            now = self.clock()
            if self.limited_requests:
                self.requests -= 1
            if self.limited_tokens:
                self.tokens -= tokens
            self._recent.append((now, tokens))
            self._recent_tokens += tokens
            slot = int(now / SLOT_S)
            self._sends[slot] = self._sends.get(slot, 0) + 1
            self._last_take = now
            if (self.limited_requests or self.limited_tokens) and self._needs(now, waiting=False) != (0, 0.0):
                self._asked.set()

    def _enough(self, tokens: float) -> bool:
        return (not self.limited_requests or self.requests >= 1) and (not self.limited_tokens or self.tokens >= tokens)

    def _wanted(self, now: float) -> tuple[int, float]:
        """The stock to hold: LEASE_S of the last second's use (one request at least, and what the head waits for)."""
        recent = self._recent
        while recent and recent[0][0] < now - 1.0:
            self._recent_tokens -= recent.popleft()[1]
        used = len(recent)
        per_request = self._recent_tokens / used if used else (self._want or 0.0)
        requests = max(1, math.ceil(used * LEASE_S))
        tokens = max(self._want or 0.0, requests * per_request)
        return requests, tokens

    def limited_answer(self, sent_at: float, body: Any) -> None:
        self.report.limited.append((sent_at, body))
        self._asked.set()

    def hint(self, hints: RateHints) -> None:
        if hints != self._hints:
            self._hints = self.report.hints = hints

    def settle(self, tokens: float) -> None:
        self.report.tokens += tokens

    async def serve(self) -> None:
        """Keep the stock filled and the shared limit told, until cancelled (one such loop per lease)."""
        while True:
            await self._step()

    async def _step(self) -> None:
        now = self.clock()
        waiting = self._want is not None and not self._enough(self._want)
        idle = not waiting and now - self._last_take > IDLE_S and (self.requests > 0 or self.tokens > 0)
        need_r, need_t = (0, 0.0) if idle else self._needs(now, waiting)
        if waiting or need_r or need_t or idle or self.report.limited:
            grant = await self._exchange(need_r, need_t, give_back=idle)
            short = (grant.requests is not None and grant.requests < need_r) or (
                grant.tokens is not None and grant.tokens < need_t
            )
            if short and not grant.stop:  # the shared buckets are empty: every worker asking at once would only
                await asyncio.sleep(max(REPORT_S, grant.wait_s))  # load the actor; the bucket keeps what accrues
            return
        self._asked.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._asked.wait(), REPORT_S if self._sends else HEARTBEAT_S)
        if not self._asked.is_set():  # nothing asked for meanwhile: report the sends (or just hear the news)
            await self._exchange(0, 0.0)

    def _needs(self, now: float, waiting: bool) -> tuple[int, float]:
        """What to ask for: a stock of LEASE_S once it is below half of that (or empty with a request waiting)."""
        want_r, want_t = self._wanted(now)
        low_r = self.limited_requests and (self.requests < want_r / 2 or (waiting and self.requests < 1))
        low_t = self.limited_tokens and (self.tokens < want_t / 2 or (waiting and self.tokens < (self._want or 0)))
        if not (low_r or low_t):
            return 0, 0.0
        need_r = max(0, want_r - self.requests) if self.limited_requests else 0
        need_t = max(0.0, want_t - self.tokens) if self.limited_tokens else 0.0
        return need_r, need_t

    async def _exchange(self, need_r: int, need_t: float, *, give_back: bool = False) -> Grant:
        now = self.clock()
        report, self.report = self.report, Report()
        report.sends = [(now - slot * SLOT_S, n) for slot, n in self._sends.items()]
        self._sends = {}
        report.limited = [(now - sent_at, body) for sent_at, body in report.limited]
        if give_back:
            report.returned_requests = self.requests if self.limited_requests else 0
            report.returned_tokens = self.tokens if self.limited_tokens else 0.0
            self.requests, self.tokens = 0, 0.0
        grant = await self.call(self.key, need_r, need_t, report)
        self.accounting = grant.accounting
        self.limited_requests = grant.requests is not None
        self.limited_tokens = grant.tokens is not None
        self.requests += grant.requests or 0
        self.tokens += grant.tokens or 0.0
        if grant.stop and not self.stopped:
            self.stopped = True
            self.on_stop()
        self._stocked.set()
        return grant

    async def close(self) -> None:
        """Give back the stock and report the last sends: the worker is done."""
        await self._exchange(0, 0.0, give_back=True)


class LeasedThrottle(Throttle):
    """A worker's throttle: requests in flight held here (per worker), rate and tokens leased from the shared
    limit, and every 429, rate header and token settlement reported to it instead of learnt here."""

    def __init__(
        self,
        limits: Limits,
        accounting: TpmAccounting,
        lease: Lease,
        log: Callable[[str], None],
        concurrency_codes: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(
            limits.model_copy(update={"rpm": None, "tpm": None}), accounting, log, concurrency_codes=concurrency_codes
        )
        self.lease = lease

    async def take(self, request: Request) -> Charge | None:
        self.tokens.effective = self.lease.accounting
        charge = self.tokens.charge(request.prompt_tokens, request.max_output)
        await self.lease.take(charge.amount)
        return charge

    def wait_estimate(self, request: Request) -> float:
        if self.gate.inflight >= self.gate.limit:
            return math.inf
        lease = self.lease
        return 0.0 if lease._enough(request.prompt_tokens + request.max_output) else LEASE_S

    def rate_limited(self, sent_at: float, reply: Reply, now: float) -> None:
        self.lease.limited_answer(sent_at, reply.body)

    def hinted(self, hints: RateHints, now: float) -> None:
        self.lease.hint(hints)

    def settle(self, charge: Charge, reply: Reply, *, rate_limited: bool = False) -> None:
        if self.lease.limited_tokens:
            self.lease.settle(self.settlement(charge, reply, rate_limited=rate_limited))

    def _apply_rate(self) -> None:
        """The rate is the shared limit's."""

    async def tick_forever(self) -> None:
        """The lease's own loop (`Lease.serve`, run by the worker) moves the rate."""
        await asyncio.Event().wait()
