"""Pure controllers that keep a provider's limit full without tripping it; every clock reading is passed in.

- `RateController`: the request rate, AIMD-style. Unlimited until the provider pushes back; a 429 sets the
  rate from what the provider actually admitted and cuts it multiplicatively, then it creeps up again.
  Configured limits and `x-ratelimit-limit-*` headers set a ceiling it never exceeds.
- `ConcurrencyController`: requests in flight, in the manner of Netflix's concurrency-limits (gradient):
  grows while latency stays near its floor, shrinks when latency climbs and on timeouts that signal load.
- `TokenAccounting`: what a request costs against TPM, and the correction once the answer says what the
  provider charged (the estimate + max_tokens at admission, or the actual tokens after the answer).
- `TokenBucket`: the continuous bucket hosted providers keep, and that batchrun keeps to stay under them
  (the limiter waits on it; the simulated provider answers 429 from it).

What a provider's answer says of its limits (headers, messages) is read in `hints`; these only act on it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import ClassVar

# The rate runs this far below a known limit: arrivals at the provider bunch a little, and a provider's
# bucket that is never quite emptied absorbs that instead of answering 429.
HEADROOM = 0.995
MEASURED_HEADROOM = 0.97  # a limit measured from 429s is known to within a few per cent


class SlotCounter:
    """Event counts in fixed time slots over a few seconds: O(1) to add, cheap to sum a range."""

    def __init__(self, slot_s: float = 0.01, history_s: float = 5.0) -> None:
        self.slot_s = slot_s
        self.size = int(history_s / slot_s) + 1
        self.counts = [0] * self.size
        self.stamps = [-1] * self.size  # which absolute slot each entry holds

    def add(self, t: float, n: int = 1) -> None:
        k = int(t / self.slot_s)
        i = k % self.size
        if self.stamps[i] != k:
            self.stamps[i], self.counts[i] = k, 0
        self.counts[i] += n

    def count(self, start: float, end: float) -> int:
        """Events from start to end, to slot precision (whole slots at both ends); older than the history
        counts as nothing."""
        first, last = int(start / self.slot_s), int(end / self.slot_s)
        first = max(first, last - self.size + 1)
        total = 0
        for k in range(first, last + 1):
            i = k % self.size
            if self.stamps[i] == k:
                total += self.counts[i]
        return total


class RateController:
    """Requests per second to allow; `rate is None` means no limit is known or needed yet.

    A 429 opens an episode: the rate brakes at once (hard while the limit is unknown, gently once learned).
    After MEASURE_S the episode closes. If the provider kept turning requests away, what it admitted
    meanwhile (requests sent minus those answered 429, by send time) is its limit, and the rate is set
    just below it. Under a configured or announced limit, a stray 429 or two (one row's bad luck, not a
    full bucket) restores the rate from before; otherwise the brake stands and the rate creeps back (AIMD).
    Between episodes the rate grows while it is the bottleneck: fast while the limit is unknown, slowly
    once measured.
    """

    MEASURE_S = 0.4
    LAG_S = 0.25  # a 429 for a request sent at t has arrived by t + LAG_S
    MIN_429S = 3  # fewer 429s than this in an episode is bad luck, not a limit
    MIN_ADMITTED = 3  # fewer admitted than this in an episode measures nothing
    STALE_S = 10.0  # a learned limit not met for this long while it holds the rate back: probe faster again
    BRAKE_UNKNOWN = 0.35
    BRAKE_LEARNED = 0.9
    GROW_PER_S: ClassVar[dict[str, float]] = {"unknown": 1.0, "bounded": 0.25, "learned": 0.02}
    QUIET_S: ClassVar[dict[str, float]] = {"unknown": 0.5, "bounded": 0.5, "learned": 2.0}  # after a 429
    TICK_S = 0.05
    MIN_RATE = 0.1

    def __init__(self, ceiling: float | None = None) -> None:
        self.ceiling = ceiling
        self.reset(-math.inf)

    def reset(self, now: float, grace: float = 0.0) -> None:
        """Forget what 429s taught, and ignore those for requests sent before `now + grace`: they had
        another explanation (the TPM accounting was wrong, and the provider's bucket is refilling)."""
        ceiling = self.ceiling
        self.rate: float | None = ceiling * HEADROOM if ceiling else None
        # unknown: no 429 yet; bounded: 429s, but no measurement (the brake went below the limit);
        # learned: an episode measured the limit
        self.state = "unknown"
        self.sent = SlotCounter()
        self.limited = SlotCounter()  # by send time, requests answered 429
        self._episode: float | None = None  # when the current 429 episode began
        self._episode_429s = 0
        self._before: float | None = None  # the rate before the episode's brake
        self._episode_floor = now + grace  # 429s for requests sent before this belong to a closed episode
        self._last_429 = -math.inf
        self._last_tick: float | None = None

    @property
    def learned(self) -> bool:
        return self.state == "learned"

    def set_ceiling(self, ceiling: float) -> None:
        """A limit the provider announced (headers) or the user configured: never exceed it."""
        if self.ceiling is not None and abs(ceiling - self.ceiling) < 1e-9:
            return
        self.ceiling = ceiling
        target = ceiling * HEADROOM
        self.rate = target if self.rate is None or self.state == "unknown" else min(self.rate, target)

    def on_sent(self, now: float) -> None:
        self.sent.add(now)

    def on_admitted(self, sent_at: float, now: float) -> None:
        """The provider accepted a request (any answer but a 429)."""
        self.tick(now)

    def on_rate_limited(self, sent_at: float, now: float) -> None:
        self.limited.add(sent_at)
        self._last_429 = now
        if self._episode is not None:
            self._episode_429s += 1
        elif sent_at >= self._episode_floor:
            self._episode, self._episode_429s, self._before = now, 1, self.rate
            trusted = self.state != "unknown" or self.ceiling is not None  # a known level needs only a touch
            brake = self.BRAKE_LEARNED if trusted else self.BRAKE_UNKNOWN
            # Brake from the rate in force; only with none yet, from what was being sent. (Braking from the
            # send rate when it is low for other reasons, rows waiting out their backoff, say, would ratchet
            # the rate down episode after episode in a storm of 429s.)
            current = self.send_rate(now, self.MEASURE_S) if self.rate is None else self.rate
            self._set(max(self.MIN_RATE, current * brake))
        self.tick(now, force=True)

    def send_rate(self, now: float, span: float) -> float:
        return self.sent.count(now - span, now) / span

    def tick(self, now: float, *, force: bool = False) -> None:
        """Advance episodes and growth; called on answers and on a timer, at most every TICK_S."""
        last = self._last_tick
        if not force and last is not None and now - last < self.TICK_S:
            return
        self._last_tick = now
        if self._episode is not None:
            if now - self._episode >= self.MEASURE_S + self.LAG_S:
                self._close_episode(now)
            return
        if last is None or self.rate is None:
            return
        if self.send_rate(now, 1.0) < 0.9 * self.rate:
            return  # the rate is not the bottleneck: no evidence that more would be admitted
        if self.state == "learned" and now - self._last_429 > self.STALE_S:
            self.state = "bounded"  # learned in a storm, or the provider raised the limit since
        if now - self._last_429 > self.QUIET_S[self.state]:
            self._set(self.rate * (1 + self.GROW_PER_S[self.state] * (now - last)))

    def _close_episode(self, now: float) -> None:
        end = now - self.LAG_S
        start = self._episode
        assert start is not None
        self._episode, self._episode_floor = None, end
        if self._episode_429s < self.MIN_429S and self.ceiling is not None and self.state == "unknown":
            self.rate = self._before  # under a known limit, a lone 429 is bad luck: undo the brake
            return
        sent = self.sent.count(start, end)
        limited = self.limited.count(start, end)
        if limited >= self.MIN_429S and sent - limited >= self.MIN_ADMITTED:
            # Turned away all along: what got through is the limit. Too few got through to tell (rows the
            # provider refuses whatever the rate, a storm): the brake stands, and the rate probes back up.
            self._set((sent - limited) / (end - start) * MEASURED_HEADROOM)
            self.state = "learned"
        elif self.state == "unknown":
            self.state = "bounded"

    def _set(self, rate: float) -> None:
        self.rate = rate if self.ceiling is None else min(rate, self.ceiling * HEADROOM)


class ConcurrencyController:
    """How many requests may be in flight, in the manner of Netflix's concurrency-limits gradient.

    Latency is averaged over short intervals; the lowest interval average seen lately is the no-queue
    baseline (an average, not a single sample, so a provider whose answer times spread widely is not
    mistaken for a queue). While recent latency stays within TOLERANCE of the baseline the limit grows:
    by half per interval in slow start, then by about its square root. When latency climbs, the limit
    shrinks in proportion; a timeout the Throttle judges to be load cuts it by a tenth, once per window of
    requests (429s are the rate's business). It grows only while it is used: a limit nobody reaches proves
    nothing.
    """

    INTERVAL_S = 0.25
    TOLERANCE = 1.5
    # Slow start grows by half per interval, not double: when a limit nobody has named is met, what is in flight
    # beyond it (the overshoot of the last step, times the latency) comes back 429 before any brake can act.
    SLOW_START_GROWTH = 1.5
    PROBE_S = 10.0  # a concurrency ceiling the provider set is probed one higher after this long without a hit
    FLOOR_DRIFT = 1.002  # per interval: a baseline that got slower for good is accepted within ~30 s

    def __init__(self, initial: int, maximum: int, minimum: int = 1) -> None:
        self.maximum, self.minimum = maximum, minimum
        self.limit = float(max(minimum, min(initial, maximum)))
        self.slow_start = True
        self.floor: float | None = None
        self._sum = 0.0
        self._count = 0
        self._peak_inflight = 0
        self._interval_start: float | None = None
        self._interval = self.INTERVAL_S
        self._last_cut = -math.inf
        self.ceiling: int | None = None  # the provider's own limit on requests in flight, once it has said so
        self._last_limit = -math.inf

    @property
    def value(self) -> int:
        return int(self.limit)

    def on_success(self, latency: float, inflight: int, now: float) -> None:
        self._sum += latency
        self._count += 1
        self._peak_inflight = max(self._peak_inflight, inflight)
        if self._interval_start is None:
            self._interval_start = now
        elif now - self._interval_start >= self._interval and self._count >= 5:
            average = self._sum / self._count
            self._adjust(average, now)
            self._interval = max(self.INTERVAL_S, 2 * average)  # at least two round trips, as TCP grows per RTT
            self._sum, self._count, self._peak_inflight, self._interval_start = 0.0, 0, 0, now

    def _adjust(self, average: float, now: float) -> None:
        self.floor = average if self.floor is None else min(average, self.floor * self.FLOOR_DRIFT)
        gradient = max(0.5, min(1.0, self.TOLERANCE * self.floor / max(average, 1e-9)))
        if gradient < 1.0:
            self.slow_start = False
            self.limit = max(self.minimum, self.limit * gradient + math.sqrt(self.limit))
        elif self._peak_inflight >= 0.8 * self.limit:
            grown = self.limit * self.SLOW_START_GROWTH if self.slow_start else self.limit + math.sqrt(self.limit)
            if self.ceiling is not None and self.limit >= self.ceiling and now - self._last_limit >= self.PROBE_S:
                self.ceiling, self._last_limit = min(self.maximum, self.ceiling + 1), now  # raised since?
            self.limit = min(self.maximum, grown)
        if self.ceiling is not None:
            self.limit = min(self.limit, float(self.ceiling))

    def on_limit(self, inflight: int, now: float) -> None:
        """The provider refused a request sent with `inflight` out for having too many in flight (Zhipu's
        1302): its limit is below that. Hold under it; probe one higher only after PROBE_S without a refusal."""
        ceiling = max(self.minimum, inflight - 1)
        self.ceiling = ceiling if self.ceiling is None else min(self.ceiling, ceiling)
        self._last_limit = now
        self.slow_start = False
        self.limit = min(self.limit, float(self.ceiling))

    def on_rate_limited(self) -> None:
        """A 429: the rate is at the provider's limit, and more in flight only sends more into it."""
        self.slow_start = False

    def on_congestion(self, sent_at: float, now: float) -> None:
        """A timeout that signals load: back off, once per window, as TCP does.

        Only a request sent after the last cut can cut again: the rest of a wave that was in flight together
        (a block of rows that all time out 30 s later, say) tells nothing the first one did not."""
        if sent_at <= self._last_cut:
            return
        self._last_cut = now
        self.slow_start = False
        self.limit = max(self.minimum, self.limit * 0.9)


class TokenBucket:
    """A continuous token bucket holding `burst_s` seconds of its rate.

    A charge larger than what is left is taken in full, leaving a debt the refill pays off first: a request
    bigger than the bucket is admitted once the bucket is full, and nothing is ever under-charged."""

    def __init__(self, per_second: float, now: float, *, burst_s: float = 1.0, full: bool = True) -> None:
        self.burst_s = burst_s
        self.rate = per_second
        self.capacity = max(1.0, per_second * burst_s)
        self.level = self.capacity if full else 0.0
        self.stamp = now

    @classmethod
    def per_minute(cls, limit: float, now: float) -> TokenBucket:
        return cls(limit / 60.0, now)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + max(0.0, now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` (at most a full bucket) is there; 0 when it is now. Takes nothing."""
        self.refill(now)
        need = min(amount, self.capacity) - self.level
        return 0.0 if need <= 0 else need / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give(self, amount: float, now: float) -> None:
        """Give back `amount` (a negative amount charges more) once the real charge is known."""
        self.refill(now)
        self.level = min(self.capacity, self.level + amount)

    def drain(self, now: float) -> None:
        """Leave nothing to spend until the bucket refills."""
        self.refill(now)
        self.level = min(self.level, 0.0)

    def retune(self, per_second: float, now: float) -> None:
        """A new rate; a smaller bucket keeps at most its new capacity (a level carried over from a faster
        rate would otherwise let a burst through that the provider refuses)."""
        self.refill(now)
        self.rate = per_second
        self.capacity = max(1.0, per_second * self.burst_s)
        self.level = min(self.level, self.capacity)

    def reset_s(self) -> float:
        """Seconds until the bucket is full again (what x-ratelimit-reset-* report)."""
        return max(0.0, (self.capacity - self.level) / self.rate)


@dataclass(frozen=True, slots=True)
class Charge:
    """What one request was charged against TPM at admission, to settle when its answer says more."""

    prompt_estimate: int
    max_output: int
    amount: float


class TokenAccounting:
    """How TPM is counted: 'reserve' (prompt + max_tokens at admission, OpenAI's way), 'actual' (the tokens
    used, after the answer), or 'auto' (actual until 429s show the provider reserves max_tokens)."""

    AUTO_429S = 3  # 429s within AUTO_WINDOW_S that make 'auto' switch to 'reserve'
    AUTO_WINDOW_S = 5.0

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.effective = "reserve" if mode == "reserve" else "actual"
        self.scale = 1.0  # provider's prompt tokens / our estimate, learned from answers
        self._recent_429s: deque[float] = deque()

    def charge(self, prompt_estimate: int, max_output: int) -> Charge:
        """Both modes reserve prompt + max_tokens up front: nothing in flight can overshoot the limit."""
        return Charge(prompt_estimate, max_output, prompt_estimate * self.scale + max_output)

    def settle(self, charge: Charge, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        """Tokens to give back (positive) or to charge on top (negative) once the usage is known."""
        if prompt_tokens is None:
            return 0.0
        if charge.prompt_estimate > 0:
            self.scale = 0.95 * self.scale + 0.05 * (prompt_tokens / charge.prompt_estimate)
        charged = prompt_tokens + (charge.max_output if self.effective == "reserve" else (completion_tokens or 0))
        return charge.amount - charged

    def release(self, charge: Charge, *, rate_limited: bool) -> float:
        """Tokens to give back for an answer without usage: all if the provider charges the tokens used
        (a failed answer used none); none if it charged prompt + max_tokens on admission. A 429 gives
        nothing back either way: the provider had no room, and refunding would only send the next
        request into the same full bucket."""
        return charge.amount if self.effective == "actual" and not rate_limited else 0.0

    def on_rate_limited(self, now: float) -> bool:
        """Returns True when 'auto' has just switched to 'reserve'."""
        if self.mode != "auto" or self.effective == "reserve":
            return False
        self._recent_429s.append(now)
        while self._recent_429s and self._recent_429s[0] < now - self.AUTO_WINDOW_S:
            self._recent_429s.popleft()
        if len(self._recent_429s) >= self.AUTO_429S:
            self.effective = "reserve"
            return True
        return False
