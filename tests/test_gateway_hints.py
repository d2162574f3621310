"""Rate-limit hints as gateways send them: LiteLLM's proxy relays the provider's headers renamed `llm_provider-*`
(an upstream 429's Retry-After arrives only as `llm_provider-retry-after`), and its virtual-key limits send
`x-ratelimit-remaining-requests` with no reset header. Both are honoured: pure rules first, then real runs
against the simulated provider answering as LiteLLM does (`simulate.gateway`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from batchrun.errors import SpecError
from batchrun.limits.hints import RateHints, exhausted_until, rate_hints
from batchrun.limits.throttle import Throttle, Ticket
from batchrun.providers.transport import Reply
from batchrun.retry import classify, retry_after_seconds
from batchrun.spec.model import Limits
from batchrun.spec.parse import load_spec
from batchrun.spec.simulator import SimulateSpec

from .helpers import make_job, read_jsonl, submit, write_jsonl
from .simserver import SimServer

# --- Retry-After -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"llm_provider-retry-after": "7"}, 7.0),  # LiteLLM relaying an upstream 429
        ({"llm_provider-retry-after-ms": "1500"}, 1.5),
        ({"llm_provider-retry-after-ms": "250", "llm_provider-retry-after": "1"}, 0.25),  # ms first, as for the plain
        ({"Retry-After-Ms": "300"}, 0.3),
        ({"LLM_Provider-Retry-After": "4"}, 4.0),  # any case, even in a plain dict
        ({"retry-after": "2", "llm_provider-retry-after": "9"}, 9.0),  # gateway and provider: the longer wait
        ({"retry-after": "30.5", "llm_provider-retry-after": "1"}, 30.5),  # LiteLLM's own limiter: to the minute
        ({"llm_provider-retry-after": "soon"}, None),
        ({"llm_provider-x-request-id": "abc"}, None),
    ],
)
def test_gateway_retry_after_forms(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(headers) == (pytest.approx(seconds) if seconds is not None else None)


def test_a_relayed_429_carries_its_wait_in_the_decision() -> None:
    decision = classify(429, {"error": {"message": "upstream rate limit"}}, {"llm_provider-retry-after": "3"})
    assert decision.retry_after == 3.0


# --- x-ratelimit-* ---------------------------------------------------------------------------------------------


def test_relayed_rate_headers_are_read_like_the_plain_ones() -> None:
    hints = rate_hints(
        {
            "llm_provider-x-ratelimit-limit-requests": "500",
            "llm_provider-x-ratelimit-remaining-requests": "0",
            "llm_provider-x-ratelimit-reset-requests": "120ms",
            "llm_provider-x-ratelimit-limit-tokens": "30000",
        }
    )
    assert hints == RateHints(500, 0, pytest.approx(0.12), 30000, None, None)


def test_a_gateway_and_its_provider_the_tighter_limit_and_the_one_with_less_left() -> None:
    hints = rate_hints(
        {
            "x-ratelimit-limit-requests": "100",  # a LiteLLM virtual key's limit: no reset header
            "x-ratelimit-remaining-requests": "0",
            "llm_provider-x-ratelimit-limit-requests": "5000",  # the provider's, relayed
            "llm_provider-x-ratelimit-remaining-requests": "4000",
            "llm_provider-x-ratelimit-reset-requests": "12ms",
            "x-ratelimit-limit-tokens": "90000",
            "x-ratelimit-remaining-tokens": "80000",
            "llm_provider-x-ratelimit-limit-tokens": "40000",
            "llm_provider-x-ratelimit-remaining-tokens": "100",
            "llm_provider-x-ratelimit-reset-tokens": "2s",
        }
    )
    assert hints == RateHints(100, 0, None, 40000, 100, 2.0)


def test_remaining_without_a_limit_is_a_hint_too() -> None:
    assert rate_hints({"x-ratelimit-remaining-requests": "0"}) == RateHints(remaining_requests=0)
    assert rate_hints({"llm_provider-x-request-id": "a", "content-type": "application/json"}) is None


@pytest.mark.parametrize(
    ("hints", "rpm", "until"),
    [
        (RateHints(limit_requests=30, remaining_requests=0), None, 102.0),  # no reset: one request's refill
        (RateHints(limit_requests=6000, remaining_requests=0), None, 100.01),
        (RateHints(remaining_requests=0), 120.0, 100.5),  # the RPM from elsewhere (configured, learned)
        (RateHints(remaining_requests=0), None, 160.0),  # no RPM known: the whole minute
        (RateHints(limit_requests=30, remaining_requests=0, reset_requests_s=0.5), None, 100.5),  # reset sooner
        (RateHints(limit_requests=30, remaining_requests=0, reset_requests_s=20.0), None, 102.0),  # refill sooner
        (RateHints(remaining_requests=0, reset_requests_s=7.0), None, 107.0),
        (RateHints(limit_requests=30, remaining_requests=1), None, None),
        (RateHints(limit_requests=30), None, None),
        (RateHints(limit_tokens=1000, remaining_tokens=0, reset_tokens_s=3.0), None, 103.0),
        (RateHints(limit_tokens=1000, remaining_tokens=0), None, 160.0),
        (RateHints(remaining_requests=0, reset_requests_s=1.0, remaining_tokens=0, reset_tokens_s=4.0), None, 104.0),
    ],
)
def test_exhausted_until(hints: RateHints, rpm: float | None, until: float | None) -> None:
    assert exhausted_until(hints, 100.0, rpm) == (pytest.approx(until) if until is not None else None)


def test_exhausted_tokens_are_left_to_a_tpm_bucket_when_there_is_one() -> None:
    hints = RateHints(limit_tokens=1000, remaining_tokens=0, reset_tokens_s=3.0)
    assert exhausted_until(hints, 100.0, tokens_paced=True) is None


def answered(throttle: Throttle, headers: dict[str, str], now: float) -> None:
    throttle.gate.inflight = 1
    throttle.done(Ticket(now - 0.1, None, 1), Reply(200, headers, {"choices": [{}]}, 0.1))


def test_the_throttle_pauses_when_no_requests_remain_and_no_reset_is_given() -> None:
    """LiteLLM's virtual-key headers: limit and remaining, never a reset. Out of requests, the next one waits one
    request's refill at that limit (it used to go at once, into a 429)."""
    throttle = Throttle(Limits(), "auto", log=lambda _: None, clock=lambda: 50.0)
    answered(throttle, {"x-ratelimit-limit-requests": "30", "x-ratelimit-remaining-requests": "0"}, 50.0)
    assert throttle.paused_until == pytest.approx(52.0)
    assert throttle.rates.ceiling == pytest.approx(0.5)
    later = Throttle(Limits(rpm=120), "auto", log=lambda _: None, clock=lambda: 50.0)
    answered(later, {"x-ratelimit-remaining-requests": "0"}, 50.0)  # no limit said: the configured one
    assert later.paused_until == pytest.approx(50.5)


def test_the_throttle_reads_relayed_limits_and_empties_its_tpm_bucket_when_the_providers_is() -> None:
    throttle = Throttle(Limits(), "auto", log=lambda _: None, clock=lambda: 50.0)
    answered(
        throttle,
        {"llm_provider-x-ratelimit-limit-tokens": "60000", "llm_provider-x-ratelimit-remaining-tokens": "0"},
        50.0,
    )
    assert throttle.tpm is not None and throttle.tpm.bucket.level <= 0
    assert throttle.paused_until == 0.0  # the TPM bucket paces what comes next, by each request's size


# --- over real HTTP, against the simulator answering as LiteLLM does ----------------------------------------------


def test_a_run_behind_litellm_waits_as_the_relayed_retry_after_asks(tmp_path: Path) -> None:
    """The upstream's 429 asks for 2 s; LiteLLM relays it as llm_provider-retry-after only. The row's next attempt
    comes no sooner (it used to come at once, the job's backoff being 0)."""
    rows = [{"id": "limited", "prompt": "wait for it #sim:429=1 #sim:retry-after=2"}, {"id": "fine", "prompt": "x"}]
    with SimServer(SimulateSpec(latency=0.0, gateway="litellm")) as sim:
        result = submit(make_job(tmp_path, sim.base_url, rows))
        assert result.exit_code == 0, result.output
        stats = sim.stats()
    assert stats["responses"] == {"200": 2, "429": 1}
    assert stats["retried_after_429"] == 1
    assert stats["min_retry_gap_s"] >= 1.5  # asked 2 s; never an upper bound on a shared machine
    done = {r["custom_id"]: r for r in read_jsonl(tmp_path / "runs/job/results.jsonl")}
    assert (done["limited"]["attempts"], done["limited"]["rate_limited"]) == (2, 1)


def test_a_run_behind_a_litellm_key_limit_pauses_when_none_remain(tmp_path: Path) -> None:
    """A LiteLLM virtual key limited to 30 RPM answers `remaining-requests: 0` with no reset. One request at a
    time, each waits the 2 s the key takes to refill: no request is turned away (it used to send the next at
    once, and collect a 429)."""
    with SimServer(SimulateSpec(latency=0.0, gateway="litellm-key", rpm=30)) as sim:
        job = make_job(tmp_path, sim.base_url, n=3, limits={"concurrency": 1})
        start = time.monotonic()
        result = submit(job)
        took = time.monotonic() - start
        assert result.exit_code == 0, result.output
        stats = sim.stats()
    assert stats["responses"] == {"200": 3}
    assert took >= 2 * 1.5  # two pauses of 2 s: a lower bound only


@pytest.mark.parametrize(
    ("gateway", "expected"),
    [
        ("litellm", None),
        ("litellm-key", None),
        ("nginx", "provider.simulate.gateway must be one of none, litellm, litellm-key, got 'nginx'"),
    ],
)
def test_the_gateway_is_a_simulate_option_of_the_spec(tmp_path: Path, gateway: str, expected: str | None) -> None:
    write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    spec: dict[str, Any] = {"name": "simulated", "simulate": {"gateway": gateway}}
    job = make_job(tmp_path, "", input="in.jsonl", provider=spec)
    if expected is None:
        simulate = load_spec(job).provider.simulate
        assert simulate is not None and simulate.gateway == gateway
    else:
        with pytest.raises(SpecError, match=expected):
            load_spec(job)
