"""Ark's batch chat (`provider.mode: batch-chat`): ordinary chat requests to `{base}/batch/chat/completions`, each
answered synchronously but slowly, at the batch price. It is the online lane with another path and its defaults
(a day's timeout, a thousand in flight: spec/lanechecks.py; a 429 is waited out within the timeout rather than
counted against the row's attempts, as Ark's SDK does), records marked `batch_chat` (usage prices them at the
batch share), and Ark's daily token quota per model (`limits.tpd`): the run stops before passing it, and a 429
that says the quota is spent stops it too, rather than asking again all day. Either way the rows left stay
pending, and the same command goes on once the quota is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..limits.budget import BudgetReached
from ..limits.throttle import Ticket
from ..providers.openai import ChatCompletions
from ..providers.transport import Reply
from ..records import Record
from ..retry import classify, error_details
from ..spec.presets import PRESETS
from . import LaneContext, Row
from .online import OnlineLane
from .outcome import Failed, Outcomes, RetryLater

DAY_S = 86_400
BEIJING_S = 8 * 3600  # Ark's day is taken as Beijing's (UTC+8): when its quota resets is not documented
# in a 429's code or message: the daily quota, not a rate (Ark's code is unverified; its TPM one names "TPM")
QUOTA_WORDS = ("tpd", "daily", "per day")


class DailyQuotaReached(BudgetReached):
    """Ark's daily batch token quota is spent: no row is taken; those in flight are paid for and finish."""


def beijing_day(epoch_s: float) -> int:
    """The day number (since 1970-01-01) in Beijing time, which Ark's daily quota is taken to count by."""
    return int((epoch_s + BEIJING_S) // DAY_S)


def quota_refusal(status: int | None, body: Any) -> str | None:
    """The message of a 429 that says the daily quota is spent (a rate limit's is None)."""
    if status != 429:
        return None
    code, message = error_details(body)
    text = f"{code or ''} {message}".lower()
    return f"{code}: {message}" if any(word in text for word in QUOTA_WORDS) else None


class TokensPerDay:
    """Tokens answered per model per Beijing day, in this session, against `limits.tpd`."""

    def __init__(self, limit: float | None, clock: Callable[[], float] = time.time) -> None:
        self.limit, self.clock = limit, clock
        self.used: dict[tuple[str, int], int] = {}

    def add(self, model: str, usage: Any) -> None:
        total = usage.get("total_tokens") if isinstance(usage, dict) else None
        if isinstance(total, int) and not isinstance(total, bool):
            key = (model, beijing_day(self.clock()))
            self.used[key] = self.used.get(key, 0) + total

    def spent(self, model: str) -> bool:
        return self.limit is not None and self.used.get((model, beijing_day(self.clock())), 0) >= self.limit


class BatchChatLane(OnlineLane):
    def __init__(self, ctx: LaneContext) -> None:
        super().__init__(ctx)
        api = PRESETS[ctx.spec.provider.name].batch
        assert api is not None and api.chat_path is not None  # batch-chat is offered only with a path
        self.plain = ChatCompletions(ctx.base_url, ctx.pool.members[0].auth, path=api.chat_path)
        self.tpd = TokensPerDay(ctx.spec.limits.tpd)
        self.stopped = False

    async def answer(self, row: Row, reply: Reply, ticket: Ticket) -> Outcomes:
        model = row.request.model
        refused = quota_refusal(reply.status, reply.body)
        if refused is not None:
            return self._stop(f"Ark refused a request for its daily batch quota of {model} ({refused})")
        if reply.status == 429 and self._waiting(row):  # Ark's queue is full: wait as its SDK does, not fail
            decision = classify(reply.status, reply.body, reply.headers, reply.error, self.ctx.errors)
            return (RetryLater(row, decision),)
        outcomes = await super().answer(row, reply, ticket)
        if reply.status == 200 and isinstance(reply.body, dict):
            self.tpd.add(model, reply.body.get("usage"))
        if self.tpd.spent(model):
            limit = self.tpd.limit or 0
            return [*outcomes, *self._stop(f"limits.tpd: {limit:,.0f} tokens of {model} answered today")]
        return outcomes

    def _waiting(self, row: Row) -> bool:
        """Whether a row Ark keeps answering 429 is still within its wait (retry.timeout_s from its first 429):
        Ark's SDK retries a 429 until its read timeout, so a busy hour does not use up the row's attempts."""
        now = time.monotonic()
        if not isinstance(row.lane, float):
            row.lane = now  # when it was first refused
        return now - row.lane < self.timeout_s

    def _stop(self, why: str) -> Outcomes:
        if self.stopped:
            return ()
        self.stopped = True
        return (
            Failed(
                DailyQuotaReached(
                    f"{why}: the rows left stay pending; the same command goes on once the quota is back (Ark's "
                    "day is taken as Beijing's), or raise the quota and limits.tpd"
                )
            ),
        )

    def annotate(self, row: Row, record: Record) -> None:
        record["batch_chat"] = True  # answered at the batch price (usage counts it in batch_*)
        super().annotate(row, record)  # a fetched image's bytes and digest
