"""What a provider's answer says of its limits: `x-ratelimit-*` headers (a gateway's and those it relays), the limit
a 429's message names, and until when a window said to be empty refuses. Pure: the clock reading is passed in.

Kept apart from the controllers (`controllers`) so that they act on what was said without knowing how it was
put. A 429's Retry-After is read in `retry`, below the providers that need it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|ns|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration (`6m0s`, `1m30.5s`, `20ms`) or a bare number of seconds."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


_NAMED_LIMIT = re.compile(r"\b(requests|tokens) per min(?:ute)?\b[^:]*:\s*Limit (\d+)", re.IGNORECASE)


def named_limit(message: str) -> tuple[str, float] | None:
    """("requests" | "tokens", per minute) when a 429's message names the limit it hit, as OpenAI's do:
    `Rate limit reached ... on requests per min (RPM): Limit 500, Used 500, Requested 1.`"""
    found = _NAMED_LIMIT.search(message)
    if found is None or int(found.group(2)) <= 0:
        return None
    return found.group(1).lower(), float(found.group(2))


@dataclass(frozen=True, slots=True)
class RateHints:
    """What `x-ratelimit-*` headers say: limits per minute, what remains, and seconds until reset."""

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests_s: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens_s: float | None = None


# A gateway's own headers, then those it relays from the provider behind it: LiteLLM's proxy renames every
# upstream header `llm_provider-<name>` (and passes the six x-ratelimit-* on as they are, or puts a virtual
# key's own limits in their place).
RATE_HEADER_PREFIXES = ("x-ratelimit-", "llm_provider-x-ratelimit-")
WINDOW_S = 60.0  # the limits are per minute: a window has refilled within this


def rate_hints(headers: Mapping[str, str]) -> RateHints | None:
    """The hints of every limiter that answered (a gateway's and its provider's): for each of requests and
    tokens, the tighter limit, and what remains and when it resets from the one with less left."""
    found = [
        (prefix, kind)
        for prefix in RATE_HEADER_PREFIXES
        for kind in ("requests", "tokens")
        if f"{prefix}limit-{kind}" in headers or f"{prefix}remaining-{kind}" in headers
    ]
    if not found:
        return None

    def number(name: str) -> float | None:
        try:
            return float(headers[name])
        except (KeyError, ValueError):
            return None

    def duration(name: str) -> float | None:
        value = headers.get(name)
        return parse_duration(value) if value else None

    picked: dict[str, tuple[float | None, float | None, float | None]] = {}
    for prefix, kind in found:
        limit, left = number(f"{prefix}limit-{kind}"), number(f"{prefix}remaining-{kind}")
        reset = duration(f"{prefix}reset-{kind}")
        if kind not in picked:
            picked[kind] = (limit, left, reset)
            continue
        known_limit, known_left, known_reset = picked[kind]
        tighter = min((x for x in (limit, known_limit) if x is not None), default=None)
        if left is not None and (known_left is None or left < known_left):
            known_left, known_reset = left, reset
        picked[kind] = (tighter, known_left, known_reset)
    none = (None, None, None)
    return RateHints(*picked.get("requests", none), *picked.get("tokens", none))


def exhausted_until(
    hints: RateHints, now: float, rpm: float | None = None, *, tokens_paced: bool = False
) -> float | None:
    """When an answer says nothing is left (remaining 0): the time before which the next request would be refused;
    None when something is left, or the answer does not say.

    Requests: a reset header says when the whole window is full again, but one request is back sooner, after
    60 s / RPM of a bucket that refills as it goes (OpenAI's kind); so the sooner of the two. Without a reset
    (LiteLLM's virtual-key limits send only limit and remaining), that one request's refill at the RPM the answer
    names, else `rpm` (configured or learned); knowing no RPM at all, the whole minute, the only wait sure to be
    long enough. A window that refills all at once (LiteLLM's calendar minute) may still refuse the next request:
    its 429 then carries the Retry-After that says the rest.
    Tokens: with a TPM bucket of its own the caller empties that instead (`tokens_paced`: the refill then depends
    on each request's size); without one, until the reset, else the whole minute."""
    until = None
    if hints.remaining_requests is not None and hints.remaining_requests <= 0:
        known = hints.limit_requests or rpm
        refill = WINDOW_S / known if known else None
        reset = hints.reset_requests_s
        if reset is None:
            wait = refill if refill is not None else WINDOW_S
        else:
            wait = reset if refill is None else min(reset, refill)
        until = now + wait
    if hints.remaining_tokens is not None and hints.remaining_tokens <= 0 and not tokens_paced:
        tokens = now + (hints.reset_tokens_s if hints.reset_tokens_s is not None else WINDOW_S)
        until = tokens if until is None else max(until, tokens)
    return until
