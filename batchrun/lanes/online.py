"""The online lane: one request, one answer (sync or stream). Embeddings rows alike may share one request: its
answer is split back into one record per row, and a request failed by one bad input is sent again row by row."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from ..limits.throttle import Ticket
from ..providers.openai import ChatCompletions, ChatCompletionsStream, split_embeddings
from ..providers.transport import Reply
from ..records import Record
from ..retry import Decision, Verdict, classify
from ..rows.request import Request
from . import Host, Row


class OnlineLane:
    connections = 0

    def __init__(self, host: Host, base_url: str, auth: Callable[[], str | None]) -> None:
        self.host = host
        endpoint = host.spec.endpoint
        # Each request streams when its body asks (mode stream, or a line's own "stream": true).
        self.plain, self.stream = (
            ChatCompletions(base_url, auth, endpoint),
            ChatCompletionsStream(base_url, auth, endpoint),
        )

    def background(self) -> list[Coroutine[Any, Any, None]]:
        return []

    @property
    def held(self) -> int:
        return 0

    def has_room(self, inflight: int) -> bool:
        return True

    def skip(self, row: int) -> bool:
        return False

    async def call(self, request: Request, auth: Callable[[], str | None]) -> Reply:
        path = self.stream if request.stream else self.plain
        return await path.call(self.host.http, request, self.host.spec.retry.timeout_s, auth)

    async def answer(self, row: Row, reply: Reply, ticket: Ticket) -> bool:
        decision = classify(reply.status, reply.body, reply.headers, reply.error, self.host.errors)
        parts = row.request.parts
        if parts and decision.verdict is Verdict.FAIL_ROW:
            self._split(row)
        elif parts and decision.verdict is Verdict.OK:
            self._shared_answer(row, reply, parts)
        else:
            self.host.decide(row, reply, decision)
        return False

    def _split(self, row: Row) -> None:
        """One bad input fails the whole request: send the rows one by one to find it. The first row's record
        carries the shared request's attempts, so that the request counts stay true."""
        singles = [Row(part) for part in row.request.parts]
        singles[0].shared = {"attempts": row.attempts, "rate_limited": row.rate_limited}
        self.host.send_again(singles)

    def _shared_answer(self, row: Row, reply: Reply, parts: tuple[Request, ...]) -> None:
        answers = split_embeddings(reply.body, [p.prompt_tokens for p in parts])
        if answers is None:
            self.host.decide(
                row,
                reply,
                Decision(
                    Verdict.RETRY,
                    "embedding_count_mismatch",
                    f"the answer does not hold one embedding for each of the {len(parts)} inputs",
                ),
            )
            return
        for i, (part, body) in enumerate(zip(parts, answers, strict=True)):
            self.host.record(row, replace(reply, body=body), None, part=part, batch={"index": i, "size": len(parts)})

    def annotate(self, row: Row, record: Record) -> None:
        return None

    def totals(self) -> dict[str, Any]:
        return {}
