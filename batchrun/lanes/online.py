"""The online lane: one request, one answer (sync or stream). Embeddings rows alike may share one request: its
answer is split back into one record per row, and a request failed by one bad input is sent again row by row."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from ..limits.throttle import Ticket
from ..providers.openai import ChatCompletions, ChatCompletionsStream, split_embeddings
from ..providers.transport import Http, Reply
from ..records import Record
from ..retry import Decision, Verdict, classify
from ..rows.images import ImageReader
from ..rows.request import Request
from . import LaneContext, Row
from .images import Fetcher
from .outcome import Answered, Deliver, Done, Outcomes, SendAgain


class OnlineLane:
    connections = 0

    def __init__(self, ctx: LaneContext) -> None:
        self.ctx = ctx
        self.timeout_s = ctx.spec.retry.timeout_s
        self.queue_s = ctx.spec.retry.queue_s  # how long the provider may hold a request queued (DeepSeek's)
        self.http: Http | None = None
        auth, endpoint = ctx.pool.members[0].auth, ctx.spec.endpoint
        # Each request streams when its body asks (mode stream, or a line's own "stream": true).
        self.plain, self.stream = (
            ChatCompletions(ctx.base_url, auth, endpoint),
            ChatCompletionsStream(ctx.base_url, auth, endpoint),
        )
        self.fetcher = Fetcher(ImageReader(ctx.spec) if ctx.spec.input.images else None)

    def begin(self, http: Http) -> Outcomes:
        self.http = http
        return ()

    def background(self, deliver: Deliver) -> list[Coroutine[Any, Any, None]]:
        return []

    @property
    def held(self) -> int:
        return 0

    def has_room(self, inflight: int) -> bool:
        return True

    def skip(self, row: int) -> bool:
        return False

    async def call(self, request: Request, auth: Callable[[], str | None]) -> Reply:
        assert self.http is not None, "the run has not begun"
        path = self.stream if request.stream else self.plain
        sent = await self.fetcher.ready(request, self.http, self.timeout_s)  # input.fetch_images
        if isinstance(sent, Reply):
            return sent
        return await path.call(self.http, sent, self.timeout_s, auth, self.queue_s)

    async def answer(self, row: Row, reply: Reply, ticket: Ticket) -> Outcomes:
        decision = classify(reply.status, reply.body, reply.headers, reply.error, self.ctx.errors)
        parts = row.request.parts
        if parts and decision.verdict is Verdict.FAIL_ROW:
            return (self._split(row),)
        if parts and decision.verdict is Verdict.OK:
            return self._shared_answer(row, reply, parts)
        return (Answered(row, reply, decision),)

    def _split(self, row: Row) -> SendAgain:
        """One bad input fails the whole request: send the rows one by one to find it. The first row's record
        carries the shared request's attempts, so that the request counts stay true."""
        singles = tuple(Row(part) for part in row.request.parts)
        singles[0].shared = {"attempts": row.attempts, "rate_limited": row.rate_limited}
        return SendAgain(singles)

    def _shared_answer(self, row: Row, reply: Reply, parts: tuple[Request, ...]) -> Outcomes:
        answers = split_embeddings(reply.body, [p.prompt_tokens for p in parts])
        if answers is None:
            mismatch = Decision(
                Verdict.RETRY,
                "embedding_count_mismatch",
                f"the answer does not hold one embedding for each of the {len(parts)} inputs",
            )
            return (Answered(row, reply, mismatch),)
        return [
            Done(row, replace(reply, body=body), part=part, batch={"index": i, "size": len(parts)})
            for i, (part, body) in enumerate(zip(parts, answers, strict=True))
        ]

    def annotate(self, row: Row, record: Record) -> None:
        self.fetcher.annotate(record)

    def totals(self) -> dict[str, Any]:
        return {}
