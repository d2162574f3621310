"""The throughput controllers are pure: driven here by a fake clock, never by real time."""

from __future__ import annotations

import asyncio
import random

import pytest

from batchrun.limits.controllers import (
    HEADROOM,
    ConcurrencyController,
    RateController,
    SlotCounter,
    TokenAccounting,
    TokenBucket,
)
from batchrun.limits.hints import named_limit, parse_duration, rate_hints
from batchrun.limits.throttle import Throttle, Ticket
from batchrun.providers.transport import Reply
from batchrun.rows.request import Request
from batchrun.spec.model import Limits


def test_slot_counter_counts_ranges_and_forgets_old_slots() -> None:
    c = SlotCounter(slot_s=0.1, history_s=1.0)
    for t in (0.05, 0.15, 0.15, 0.95):
        c.add(t)
    assert c.count(0.0, 0.2) == 3
    assert c.count(0.0, 1.0) == 4
    c.add(1.15)  # eleven slots later: reuses the slot that held 0.05
    assert c.count(0.0, 0.2) == 2
    assert c.count(1.1, 1.2) == 1


@pytest.mark.parametrize(
    ("text", "seconds"), [("6m0s", 360.0), ("1m30.5s", 90.5), ("20ms", 0.02), ("1s", 1.0), ("2", 2.0), ("1h2m", 3720.0)]
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_bad_durations() -> None:
    assert parse_duration("soon") is None
    assert parse_duration("5x") is None


def test_rate_hints() -> None:
    hints = rate_hints(
        {
            "x-ratelimit-limit-requests": "6000",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "150000",
        }
    )
    assert hints is not None
    assert (hints.limit_requests, hints.remaining_requests, hints.limit_tokens) == (6000, 0, 150000)
    assert hints.reset_requests_s == pytest.approx(0.12)
    assert rate_hints({"content-type": "application/json"}) is None


def test_configured_ceiling_and_stray_429() -> None:
    rc = RateController(ceiling=100.0)
    assert rc.rate == pytest.approx(100 * HEADROOM)
    rc.on_sent(0.0)
    rc.on_rate_limited(0.0, 0.01)
    assert rc.rate is not None and rc.rate < 100 * HEADROOM  # braked at once
    rc.tick(2.0)
    assert rc.rate == pytest.approx(100 * HEADROOM)  # a lone 429 is bad luck: the brake is undone


def run_against_bucket(
    limit: float, seconds: float, offered: float = 400.0, seed: int = 1
) -> tuple[RateController, int, int]:
    """Closed loop with a fake clock: a client offering `offered` requests/s, paced by the controller,
    against a provider bucket holding one second of `limit`. 429s answer at once, the rest later."""
    rng = random.Random(seed)
    rc = RateController()
    provider = TokenBucket.per_minute(limit * 60, now=0.0)
    t, dt, sent, limited = 0.0, 0.001, 0, 0
    credit = 0.0
    pending: list[tuple[float, float]] = []  # (answer time, send time) of admitted requests
    while t < seconds:
        t += dt
        rate = rc.rate if rc.rate is not None else offered
        credit = min(credit + min(rate, offered) * dt, 1.0)
        while credit >= 1.0:
            credit -= 1.0
            rc.on_sent(t)
            sent += 1
            if provider.wait_for(1, t) > 0:
                limited += 1
                rc.on_rate_limited(t, t + 0.002)
            else:
                provider.take(1)
                pending.append((t + rng.uniform(0.15, 0.45), t))
        due = [p for p in pending if p[0] <= t]
        pending = [p for p in pending if p[0] > t]
        for answered, sent_at in due:
            rc.on_admitted(sent_at, answered)
        rc.tick(t)
    return rc, sent, limited


def test_unknown_limit_is_learned_from_bare_429s() -> None:
    rc, sent, limited = run_against_bucket(limit=100.0, seconds=30.0)
    assert rc.learned
    assert rc.rate is not None and 85 <= rc.rate <= 110
    assert limited / sent <= 0.03
    assert (sent - limited) / 30.0 >= 85  # admitted throughput


def test_reset_forgets_and_ignores_older_429s() -> None:
    rc, _, _ = run_against_bucket(limit=50.0, seconds=5.0)
    assert rc.state != "unknown" and rc.rate is not None
    rc.reset(now=10.0)
    assert rc.rate is None and not rc.learned
    rc.on_rate_limited(sent_at=9.0, now=10.1)  # sent before the reset: no new episode
    assert rc.rate is None


def test_concurrency_slow_start_doubles_while_used_and_flat() -> None:
    cc = ConcurrencyController(initial=8, maximum=1000)
    t = 0.0
    for _ in range(3):
        for _ in range(20):
            t += 0.02
            cc.on_success(0.1, inflight=cc.value, now=t)
    assert cc.value >= 32 and cc.slow_start


def test_concurrency_does_not_grow_unused() -> None:
    cc = ConcurrencyController(initial=8, maximum=1000)
    for i in range(200):
        cc.on_success(0.1, inflight=2, now=i * 0.02)
    assert cc.value == 8


def test_concurrency_shrinks_when_latency_climbs() -> None:
    cc = ConcurrencyController(initial=64, maximum=1000)
    t = 0.0
    for latency in [0.1] * 40 + [0.5] * 200:  # queueing: latency five times the baseline
        t += 0.02
        cc.on_success(latency, inflight=cc.value, now=t)
    assert not cc.slow_start and cc.value < 64


def test_concurrency_backs_off_once_per_window() -> None:
    cc = ConcurrencyController(initial=100, maximum=1000)
    cc.on_congestion(sent_at=0.5, now=2.0)
    for i in range(50):  # the rest of the wave sent before the cut, timing out one by one: no more cuts
        cc.on_congestion(sent_at=0.5 + i * 0.02, now=2.0 + i * 0.1)
    assert cc.value == 90
    cc.on_congestion(sent_at=2.1, now=3.6)  # sent after the cut: a new window
    assert cc.value == 81


def test_a_limit_on_requests_in_flight_becomes_a_ceiling_probed_slowly() -> None:
    cc = ConcurrencyController(initial=32, maximum=256)
    cc.on_limit(inflight=21, now=1.0)  # refused with 21 out: the provider's limit is at most 20
    assert cc.ceiling == 20 and cc.value == 20
    cc.on_limit(inflight=25, now=1.1)  # a refusal of a request sent earlier, with more out, says nothing new
    assert cc.ceiling == 20
    t = 1.0
    for latency in [0.1] * 100 + [0.16] * 100:  # latency steady, then a little up: neither may pass the ceiling
        t += 0.02
        cc.on_success(latency, inflight=cc.value, now=t)
        assert cc.value <= 20
    while t < 12.0:  # ten seconds without a refusal: one step above, to find out whether the limit was raised
        t += 0.02
        cc.on_success(0.1, inflight=cc.value, now=t)
    assert cc.ceiling == 21 and cc.value == 21


def test_token_accounting_settles_what_the_provider_charged() -> None:
    reserve, actual = TokenAccounting("reserve"), TokenAccounting("actual")
    for acc in (reserve, actual):
        charge = acc.charge(prompt_estimate=1000, max_output=512)
        assert charge.amount == 1512
    c = reserve.charge(1000, 512)
    assert reserve.settle(c, prompt_tokens=1000, completion_tokens=40) == 0  # max_tokens stays charged
    c = actual.charge(1000, 512)
    assert actual.settle(c, prompt_tokens=1000, completion_tokens=40) == 472  # the unused part comes back
    assert actual.release(c, rate_limited=False) == 1512  # failed answers cost nothing when billed on usage
    assert reserve.release(c, rate_limited=False) == 0
    assert actual.release(c, rate_limited=True) == 0  # a 429 keeps its charge: the bucket was full


def test_token_accounting_learns_the_providers_prompt_count() -> None:
    acc = TokenAccounting("reserve")
    for _ in range(200):
        acc.settle(acc.charge(100, 10), prompt_tokens=130, completion_tokens=5)
    assert acc.scale == pytest.approx(1.3, rel=0.01)
    assert acc.charge(100, 10).amount == pytest.approx(140, rel=0.01)


def test_auto_accounting_switches_to_reserve_on_a_cluster_of_429s() -> None:
    acc = TokenAccounting("auto")
    assert acc.effective == "actual"
    assert not acc.on_rate_limited(0.0)
    assert not acc.on_rate_limited(10.0)  # far apart: not a cluster
    assert not acc.on_rate_limited(10.5)
    assert acc.on_rate_limited(11.0)
    assert acc.effective == "reserve"


def reply(status: int, headers: dict[str, str] | None = None, body: object = None) -> Reply:
    return Reply(status, headers or {}, body, 0.3)


def test_throttle_takes_limits_from_headers_and_settles_tpm() -> None:
    async def scenario() -> None:
        throttle = Throttle(Limits(tpm=60_000), "actual", log=lambda m: None)
        request = Request(1, "a", "m", b"{}", prompt_tokens=100, max_output=400)
        ticket = await throttle.admit(request)
        assert ticket.charge is not None and ticket.charge.amount == 500
        assert throttle.tpm is not None
        spent = lambda: throttle.tpm.bucket.capacity - throttle.tpm.bucket.level  # type: ignore[union-attr]  # noqa: E731
        assert spent() == pytest.approx(500, abs=1)
        throttle.done(
            ticket,
            reply(
                200,
                {"x-ratelimit-limit-requests": "600"},
                {"choices": [{}], "usage": {"prompt_tokens": 100, "completion_tokens": 20}},
            ),
        )
        assert spent() == pytest.approx(120, abs=1)  # 380 unused tokens came back
        assert throttle.rates.ceiling == pytest.approx(10.0)
        assert throttle.gate.inflight == 0

    asyncio.run(scenario())


def test_a_timeout_cuts_concurrency_only_when_nothing_sent_later_was_answered() -> None:
    """Rows that hang on their own (later requests come back fine) leave concurrency alone, and so do 429s
    (the rate's business); a timeout with nothing answered since is load."""
    clock = [0.0]

    async def scenario() -> None:
        throttle = Throttle(Limits(concurrency=32), "actual", log=lambda m: None, clock=lambda: clock[0])
        request = Request(1, "a", "m", b"{}", prompt_tokens=10, max_output=10)
        hanging = [await throttle.admit(request) for _ in range(10)]
        clock[0] = 0.5
        quick = await throttle.admit(request)
        clock[0] = 0.6
        throttle.done(quick, reply(200, body={"choices": [{}]}))
        throttle.done(await throttle.admit(request), reply(429))
        clock[0] = 30.0
        for ticket in hanging:
            throttle.done(ticket, Reply(None, {}, None, 30.0, "timeout"))
        assert throttle.concurrency.value == 32
        lone = await throttle.admit(request)  # sent after the last answer, and nothing answered since
        clock[0] = 60.0
        throttle.done(lone, Reply(None, {}, None, 30.0, "timeout"))
        assert throttle.concurrency.value == 28

    asyncio.run(scenario())


def test_a_storm_of_429s_does_not_ratchet_the_rate_down() -> None:
    """Rows the provider turns away whatever the rate (retried at once, so few are sent meanwhile) brake the
    rate a tenth per episode, never down to nothing; a learned limit not met for a while is probed again."""
    rc, _, _ = run_against_bucket(limit=100.0, seconds=10.0)
    assert rc.learned and rc.rate is not None
    before = rc.rate
    t = 100.0
    for _ in range(5):  # five episodes, each of a few sends that all come back 429
        for _ in range(4):
            t += 0.01
            rc.on_sent(t)
            rc.on_rate_limited(t, t + 0.002)
        t += 1.0
        rc.tick(t)
    assert rc.rate >= before * 0.9**5 * 0.99
    credit = 0.0
    for _ in range(int(20 / 0.01)):  # then 20 s of sending as fast as the rate allows, and no 429
        t += 0.01
        credit += rc.rate * 0.01
        while credit >= 1:
            credit -= 1
            rc.on_sent(t)
        rc.tick(t)
    assert rc.state == "bounded" and rc.rate > 2 * before  # probing fast again, not at 2 %/s


def test_token_bucket_debt_refunds_and_retunes() -> None:
    bucket = TokenBucket(10.0, now=0.0)  # 10 per second, holds 10
    assert bucket.wait_for(25, 0.0) == 0.0  # more than it holds: admitted when full, in full
    bucket.take(25)
    assert bucket.level == -15 and bucket.wait_for(1, 0.0) == pytest.approx(1.6)
    bucket.give(100, 0.0)
    assert bucket.level == 10  # a refund never fills past capacity
    bucket.retune(2.0, 0.0)
    assert bucket.capacity == 2 and bucket.level == 2  # a smaller bucket keeps at most its capacity
    bucket.drain(0.0)
    assert bucket.wait_for(1, 0.0) == pytest.approx(0.5)
    assert TokenBucket(10.0, now=0.0, full=False).wait_for(1, 0.0) == pytest.approx(0.1)


def test_limiter_bucket_waits_its_turn_and_wakes_on_a_refund() -> None:
    async def scenario() -> list[str]:
        from batchrun.limits.throttle import Bucket

        bucket = Bucket(1.0)  # one per second, holds one
        order: list[str] = []

        async def taker(name: str) -> None:
            await bucket.take(1)
            order.append(name)

        await bucket.take(1)
        waiting = [asyncio.ensure_future(taker(n)) for n in ("first", "second")]
        await asyncio.sleep(0.05)
        assert order == []  # empty for about a second
        bucket.settle(2)  # a refund: both may go now, in the order they came
        await asyncio.wait_for(asyncio.gather(*waiting), 5)
        return order

    assert asyncio.run(scenario()) == ["first", "second"]


@pytest.mark.parametrize(
    ("message", "found"),
    [
        (
            "Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 500, Used 500, "
            "Requested 1. Please try again in 120ms.",
            ("requests", 500.0),
        ),
        ("Rate limit reached on tokens per min (TPM): Limit 30000, Used 29500, Requested 900.", ("tokens", 30000.0)),
        ("Rate limit reached, please retry later", None),
        ("您当前使用该API的并发数过高", None),
        ("on requests per min (RPM): Limit 0", None),
    ],
)
def test_named_limit_reads_openai_style_429_messages(message: str, found: tuple[str, float] | None) -> None:
    assert named_limit(message) == found


def _limited(message: str) -> Reply:
    return Reply(429, {}, {"error": {"code": "rate_limit_exceeded", "message": message}}, 0.1)


def test_a_429_naming_the_limit_sets_the_ceiling_at_once_and_ends_slow_start() -> None:
    logged: list[str] = []
    throttle = Throttle(Limits(), "auto", log=logged.append, clock=lambda: 10.0)
    assert throttle.rates.rate is None and throttle.concurrency.slow_start
    throttle.gate.inflight = 1
    throttle.done(Ticket(9.8, None, 1), _limited("Rate limit reached on requests per min (RPM): Limit 600, Used 600"))
    assert throttle.rates.ceiling == 10.0 and throttle.rates.rate == pytest.approx(10.0 * HEADROOM)
    assert not throttle.concurrency.slow_start
    assert throttle.rpm is not None and throttle.rpm.bucket.level <= 0  # the provider's bucket is empty: ours too
    # 429s still to come for requests sent before it teach nothing more: the rate stays at the named limit
    for _ in range(20):
        throttle.gate.inflight = 1
        throttle.done(Ticket(9.9, None, 1), _limited("Rate limit reached on requests per min (RPM): Limit 600"))
    assert throttle.rates.rate == pytest.approx(10.0 * HEADROOM)
    assert len(logged) == 1 and "600 requests per minute" in logged[0] and "limits.rpm: 600" in logged[0]


def test_a_429_naming_the_token_limit_starts_a_tpm_bucket() -> None:
    throttle = Throttle(Limits(), "auto", log=lambda _: None, clock=lambda: 5.0)
    throttle.gate.inflight = 1
    throttle.done(Ticket(4.9, None, 1), _limited("Rate limit reached on tokens per min (TPM): Limit 60000, Used 1"))
    assert throttle.tpm is not None and throttle.tpm.per_second == pytest.approx(1000 * HEADROOM)


def test_a_429_naming_nothing_still_ends_slow_start() -> None:
    throttle = Throttle(Limits(), "auto", log=lambda _: None, clock=lambda: 5.0)
    throttle.gate.inflight = 1
    throttle.done(Ticket(4.9, None, 1), _limited("Rate limit reached, please retry later"))
    assert not throttle.concurrency.slow_start and throttle.rates.ceiling is None
