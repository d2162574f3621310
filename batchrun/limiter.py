"""Rate limits as token buckets (aiolimiter) plus a concurrency gate.

Buckets hold about one second of the per-minute limit, as hosted providers' own buckets do: a bucket
holding a full minute would let the first second burst to the whole RPM and collect 429s.
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter


def _bucket(per_minute: float) -> AsyncLimiter:
    """A bucket refilling at per_minute/60 per second, holding one second of it (at least one unit)."""
    per_second = per_minute / 60.0
    capacity = max(1.0, per_second)
    return AsyncLimiter(capacity, capacity / per_second)


class RateLimiter:
    """RPM and TPM buckets; either may be absent (no limit)."""

    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self.rpm = _bucket(rpm) if rpm else None
        self.tpm = _bucket(tpm) if tpm else None

    async def acquire(self, tokens: int) -> None:
        if self.rpm is not None:
            await self.rpm.acquire(1)
        if self.tpm is not None:
            # A request larger than the bucket is charged in bucket-sized parts, never under-charged.
            cap = self.tpm.max_rate
            remaining = float(tokens)
            while remaining > cap:
                await self.tpm.acquire(cap)
                remaining -= cap
            if remaining > 0:
                await self.tpm.acquire(remaining)


class ConcurrencyGate:
    """Caps requests in flight; the limit can change while running (for adaptive concurrency)."""

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
