"""Admission control: RPM and TPM token buckets (`controllers.TokenBucket`, waited on here) and a concurrency gate,
steered by the pure controllers in `controllers` from what each answer says (read by `hints`).

Buckets hold about one second of their rate, as hosted providers' own buckets do: a bucket holding a
full minute would let the first second burst to the whole RPM and collect 429s.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..providers.transport import Reply
from ..retry import ErrorTable, error_details
from ..rows.request import Request
from ..spec.model import Limits
from ..spec.presets import TpmAccounting
from .binding import Pace
from .controllers import HEADROOM, Charge, ConcurrencyController, RateController, TokenAccounting, TokenBucket
from .hints import RateHints, exhausted_until, named_limit, rate_hints

INITIAL_CONCURRENCY = 32
MAX_CONCURRENCY = 256  # in flight by default: ~850 requests/s at 0.3 s latency; limits.concurrency raises it
BURST_S = 1.0


class Bucket:
    """A `TokenBucket` on the event loop's clock: `take` waits, first come first served, until the amount is
    there. Retunable while running, with settlement of over- or under-charges."""

    def __init__(self, per_second: float, *, burst: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # burst=False starts empty-handed: a rate learned from 429s must not open with a burst
        self.bucket = TokenBucket(per_second, clock(), burst_s=BURST_S, full=burst)
        self._turn = asyncio.Lock()
        self._changed = asyncio.Event()

    @property
    def per_second(self) -> float:
        return self.bucket.rate

    async def take(self, amount: float) -> None:
        """Acquire any amount: more than the bucket holds waits for a full bucket and leaves a debt."""
        async with self._turn:
            while (wait := self.bucket.wait_for(amount, self.clock())) > 0:
                self._changed.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)  # a retune or refund may shorten it
            self.bucket.take(amount)

    def drain(self) -> None:
        self.bucket.drain(self.clock())

    def retune(self, per_second: float) -> None:
        self.bucket.retune(per_second, self.clock())
        self._changed.set()

    def settle(self, amount: float) -> None:
        """Give back `amount` (or charge -amount on top) once the provider's real charge is known."""
        self.bucket.give(amount, self.clock())
        self._changed.set()


class ConcurrencyGate:
    """Caps requests in flight; the limit may change while running."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.inflight = 0
        self._changed = asyncio.Event()

    async def enter(self) -> None:
        while self.inflight >= self.limit:
            self._changed.clear()
            await self._changed.wait()
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
        self._changed.set()

    def resize(self, limit: int) -> None:
        if limit != self.limit:
            self.limit = max(1, limit)
            self._changed.set()


@dataclass(slots=True)
class Ticket:
    """One admitted request: when it went out and what it was charged."""

    sent_at: float
    charge: Charge | None
    inflight: int  # requests out, this one included, when it was sent


class Throttle:
    """Admits requests at the rate, token and concurrency limits in force, and learns from each answer."""

    def __init__(
        self,
        limits: Limits,
        tpm_accounting: TpmAccounting,
        log: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
        concurrency_codes: frozenset[str] = frozenset(),
    ) -> None:
        self.configured = limits
        self.concurrency_codes = concurrency_codes
        self.in_flight = ErrorTable(concurrency=concurrency_codes)  # reads a code, or a status (http_429), as one
        self.log, self.clock = log, clock
        self.rates = RateController(limits.rpm / 60 if limits.rpm else None)
        self.tokens = TokenAccounting(tpm_accounting)
        self.concurrency = ConcurrencyController(
            limits.concurrency or INITIAL_CONCURRENCY, limits.concurrency or MAX_CONCURRENCY
        )
        self.gate = ConcurrencyGate(self.concurrency.value)
        self.rpm: Bucket | None = None
        self.tpm: Bucket | None = Bucket(limits.tpm / 60 * HEADROOM) if limits.tpm else None
        self.paused_until = 0.0
        self.pace = Pace(rpm_source="given" if limits.rpm else None, tpm_source="given" if limits.tpm else None)
        self._answered_sent_at = -math.inf  # the latest send time of a request the provider answered (not 429)

    async def admit(self, request: Request) -> Ticket:
        pace, start = self.pace, self.clock()
        pace.began(start)
        await self.gate.enter()
        pace.wait("concurrency", self.clock() - start)
        charge = await self.take(request)
        now = self.clock()
        self.rates.on_sent(now)
        pace.admitted(now)
        return Ticket(now, charge, self.gate.inflight)

    async def take(self, request: Request) -> Charge | None:
        """Wait for the request's share of the rate and token limits; returns its TPM charge (None: no TPM).
        How long each gate held it is kept in `pace`: what bound the run (binding.py)."""
        pace, start = self.pace, self.clock()
        wait = self.paused_until - start
        if wait > 0:
            await asyncio.sleep(wait)
            pace.wait("paused", self.clock() - start)
        self._apply_rate()
        if self.rpm is not None:
            start = self.clock()
            await self.rpm.take(1)
            pace.wait("rpm", self.clock() - start)
        charge = None
        if self.tpm is not None:
            charge = self.tokens.charge(request.prompt_tokens, request.max_output)
            start = self.clock()
            await self.tpm.take(charge.amount)
            pace.wait("tpm", self.clock() - start)
        return charge

    def wait_estimate(self, request: Request) -> float:
        """About how long `admit(request)` would wait now (inf: every slot is taken); for a key pool's choice."""
        if self.gate.inflight >= self.gate.limit:
            return math.inf
        now = self.clock()
        wait = max(0.0, self.paused_until - now)
        if self.rpm is not None:
            wait = max(wait, self.rpm.bucket.wait_for(1, now))
        if self.tpm is not None:
            wait = max(
                wait,
                self.tpm.bucket.wait_for(self.tokens.charge(request.prompt_tokens, request.max_output).amount, now),
            )
        return wait

    def done(self, ticket: Ticket, reply: Reply | None, *, settle: bool = True) -> None:
        """Release the ticket's slot and learn from the answer (None: the attempt was cancelled).

        `settle=False` leaves the TPM charge standing: an async task's tokens are known only from its result."""
        self.gate.leave()
        if reply is None:
            return
        now = self.clock()
        status = reply.status
        if status is not None:
            self.pace.answer(reply.elapsed, rate_limited=status == 429)
        code = self.in_flight.in_flight(status, reply.body)
        if code is not None:  # too many in flight (Zhipu's 1302, DeepSeek's 429): a concurrency limit, not a rate
            first = self.concurrency.ceiling is None
            self.concurrency.on_limit(ticket.inflight, now)
            if first:
                self.log(
                    f"the provider limits requests in flight (429 {code}): holding at most "
                    f"{self.concurrency.value}; set limits.concurrency to start there next time"
                )
        elif status == 429:
            # The rate's alone (cutting concurrency too would collapse it in a storm that no rate avoids). A
            # provider limiting requests in flight without a code that says so is held this way as well: what
            # it admits is its limit over the latency. Slow start ends here: doubling past a limit only sends
            # more into it.
            self.concurrency.on_rate_limited()
            self.rate_limited(ticket.sent_at, reply, now)
        elif status is None and reply.error == "timeout":
            # A request sent later has been answered: the provider is serving, and this row is slow on its
            # own (a long generation, a stuck connection). Only a timeout with nothing answered since is load.
            if self._answered_sent_at < ticket.sent_at:
                self.concurrency.on_congestion(ticket.sent_at, now)
        else:
            if status is not None:
                self._answered_sent_at = max(self._answered_sent_at, ticket.sent_at)
            self.rates.on_admitted(ticket.sent_at, now)
            if status is not None and status < 500:
                # the provider's work, not its queue (DeepSeek's keep-alives): a wait there is no slower provider
                self.concurrency.on_success(reply.elapsed - reply.queued, self.gate.inflight + 1, now)
        if ticket.charge is not None and settle:
            self.settle(ticket.charge, reply, rate_limited=status == 429)
        hints = rate_hints(reply.headers) if status is not None else None
        if hints is not None:
            self.hinted(hints, now)
        self.gate.resize(self.concurrency.value)

    def rate_limited(self, sent_at: float, reply: Reply, now: float) -> None:
        """Learn from a 429 that is not about requests in flight: a limit it names, the rate, the TPM accounting."""
        named = named_limit(error_details(reply.body)[1] or "")
        if named is not None:
            self._apply_named(*named)
        self.rates.on_rate_limited(sent_at, now)
        if self.tpm is not None and self.tokens.on_rate_limited(now):
            self.rates.reset(now, grace=BURST_S)
            self.tpm.drain()  # the provider's bucket is empty: so is ours now
            self.log(
                "429s while under the TPM limit: counting max_tokens against TPM from now on "
                "(set limits.tpm_accounting: reserve to start that way)"
            )

    def hinted(self, hints: RateHints, now: float) -> None:
        """What the x-ratelimit-* headers of an answer say."""
        self._apply_hints(hints, now)

    async def tick_forever(self) -> None:
        """Let time alone move the rate (an episode ends even when no answers come back to end it)."""
        while True:
            await asyncio.sleep(RateController.TICK_S)
            self.rates.tick(self.clock())
            self._apply_rate()

    def settle(self, charge: Charge, reply: Reply, *, rate_limited: bool = False) -> None:
        """Square a TPM charge with the usage the answer reports (or give back what was not used)."""
        if self.tpm is not None:
            self.tpm.settle(self.settlement(charge, reply, rate_limited=rate_limited))

    def settlement(self, charge: Charge, reply: Reply, *, rate_limited: bool = False) -> float:
        """Tokens to give back (negative: to charge on top) for `charge`, from what the answer says it used."""
        usage = reply.body.get("usage") if isinstance(reply.body, dict) and reply.status == 200 else None
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            return self.tokens.settle(charge, usage["prompt_tokens"], _int_or_none(usage.get("completion_tokens")))
        return self.tokens.release(charge, rate_limited=rate_limited)

    def _apply_named(self, kind: str, per_minute: float) -> None:
        """A 429 that named the limit it hit: that limit is the ceiling from now on, and the provider's bucket is
        empty, so ours starts empty too (a full one would send a second burst into the same wall)."""
        if kind == "requests":
            known = self.rates.ceiling
            ceiling = min(per_minute, self.configured.rpm or math.inf) / 60
            if known is None or abs(known - ceiling) > 1e-9:
                self.log(
                    f"a 429 named the provider's limit, {per_minute:,.0f} requests per minute: holding just under "
                    f"it (set limits.rpm: {per_minute:.0f} to start there next time)"
                )
                self.rates.set_ceiling(ceiling)
                if per_minute < (self.configured.rpm or math.inf):
                    self.pace.rpm_source = "named"
                # The 429s still to come for requests already out say nothing the message did not: the limit is
                # known exactly, and the rate need not measure it.
                self.rates.reset(self.clock())
                self._apply_rate()
                if self.rpm is not None:
                    self.rpm.drain()
        elif self.tpm is None or (
            not self.configured.tpm and abs(self.tpm.per_second * 60 - per_minute * HEADROOM) > 1
        ):
            self.log(
                f"a 429 named the provider's limit, {per_minute:,.0f} tokens per minute: holding just under it "
                f"(set limits.tpm: {per_minute:.0f} to start there next time)"
            )
            self._apply_hints(RateHints(limit_tokens=per_minute), self.clock())
            self.pace.tpm_source = "named"
            if self.tpm is not None:
                self.tpm.drain()

    def _apply_hints(self, hints: RateHints, now: float) -> None:
        if hints.limit_requests:
            ceiling = hints.limit_requests / 60
            if self.configured.rpm:
                ceiling = min(ceiling, self.configured.rpm / 60)
            if hints.limit_requests < (self.configured.rpm or math.inf) and self.pace.rpm_source != "named":
                self.pace.rpm_source = "headers"
            self.rates.set_ceiling(ceiling)
        if hints.limit_tokens:
            per_second = hints.limit_tokens / 60 * HEADROOM
            if self.configured.tpm:
                per_second = min(per_second, self.configured.tpm / 60 * HEADROOM)
            if hints.limit_tokens < (self.configured.tpm or math.inf) and self.pace.tpm_source != "named":
                self.pace.tpm_source = "headers"
            if self.tpm is None:
                self.tpm = Bucket(per_second)
            elif abs(self.tpm.per_second - per_second) > 1e-6:
                self.tpm.retune(per_second)
        if hints.remaining_tokens is not None and hints.remaining_tokens <= 0 and self.tpm is not None:
            self.tpm.drain()  # the provider's bucket is empty (another client of the key, say): so is ours
        until = exhausted_until(hints, now, self._known_rpm(), tokens_paced=self.tpm is not None)
        if until is not None:
            self.paused_until = max(self.paused_until, until)

    def _known_rpm(self) -> float | None:
        """The RPM the provider is held to: configured or announced, else measured from its 429s."""
        rates = self.rates
        per_second = rates.ceiling or (rates.rate if rates.learned else None)
        return per_second * 60 if per_second else None

    def _apply_rate(self) -> None:
        rate = self.rates.rate
        if rate is None:
            if self.rpm is not None:  # release anyone waiting on the old bucket before dropping it
                self.rpm.retune(1e9)
            self.rpm = None
        elif self.rpm is None:
            self.rpm = Bucket(rate, burst=self.rates.ceiling is not None and not self.rates.learned)
        elif abs(self.rpm.per_second - rate) > 1e-9:
            self.rpm.retune(rate)

    def snapshot(self) -> dict[str, Any]:
        """What the throttle has learned, for usage.json and the benchmark."""
        return {
            "rpm": round(self.rates.rate * 60, 1) if self.rates.rate else None,
            "rpm_learned": self.rates.learned,
            "tpm": round(self.tpm.per_second * 60) if self.tpm else None,
            "tpm_accounting": self.tokens.effective,
            "concurrency": self.concurrency.value,
            "rpm_ceiling": round(self.rates.ceiling * 60, 1) if self.rates.ceiling else None,
            "concurrency_ceiling": self.concurrency.ceiling,
            "pace": self.pace.facts(),
            "given": {
                "rpm": self.configured.rpm,
                "tpm": self.configured.tpm,
                "concurrency": self.configured.concurrency,
                "max_pending": self.configured.max_pending,
            },
        }


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None
