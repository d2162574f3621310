"""A key pool: several keys (accounts) for one job, each with its own throttle (configured or learned limits, its
own in-flight ceiling), so the pool's throughput is the sum of its keys' limits. Each row goes to the key that can
take it soonest; a key the provider refuses (401/403, no money or quota) is retired and the rest carry on.

A pool of one is just the job's key: every run has one, so the run loop has one path."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from ..rows.request import Request
from .throttle import Throttle


@dataclass(eq=False)
class Member:
    env: str  # the environment variable holding the key: what logs, records and reports name (never the key)
    auth: Callable[[], str | None]
    throttle: Throttle
    retired: str | None = None  # why the provider refused it


class KeyPool:
    def __init__(self, members: list[Member]) -> None:
        assert members, "a pool holds at least the job's one key"
        self.members = members
        self._turn = itertools.count()

    @property
    def live(self) -> list[Member]:
        return [m for m in self.members if m.retired is None]

    @property
    def pooled(self) -> bool:
        return len(self.members) > 1

    @property
    def inflight(self) -> int:
        return sum(m.throttle.gate.inflight for m in self.members)

    def pick(self, request: Request) -> Member:
        """The live key that can send `request` soonest; among equals the least loaded, taking turns."""
        live = self.live
        if len(live) == 1:
            return live[0]
        start = next(self._turn) % len(live)
        turn = live[start:] + live[:start]
        return min(
            turn,
            key=lambda m: (m.throttle.wait_estimate(request), m.throttle.gate.inflight / m.throttle.gate.limit),
        )

    def retire(self, member: Member, why: str) -> bool:
        """Take a refused key out; True if it was live (the first refusal of it)."""
        if member.retired is not None:
            return False
        member.retired = why
        return True

    def by_env(self, env: str | None) -> Member | None:
        return next((m for m in self.live if m.env == env), None)
