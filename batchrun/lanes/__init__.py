"""Lanes: the ways a row travels to its final record. The run loop admits rows and acts on decisions; a lane
sends one attempt and says what its answer means.

- `online`: one request, one answer (sync or stream; embeddings rows may share a request);
- `tasks`: Zhipu's asyncCompletions: submit, write the task id down, poll until the task ends.

Every lane keeps the same promises: one final record per row, resumable, and usage that matches the bill.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..errors import BatchrunError
    from ..limits.keypool import KeyPool, Member
    from ..limits.throttle import Ticket
    from ..providers.transport import Http, Reply
    from ..records import Record
    from ..retry import Decision, ErrorTable
    from ..rows.request import Request
    from ..spec.model import JobSpec
    from ..store.checkpoint import Checkpoint
    from ..store.resume import ResumeState


@dataclass(eq=False, slots=True)
class Row:
    """A row on its way (or several embeddings rows sharing one request): what its attempts so far have seen."""

    request: Request
    attempts: int = 0
    rate_limited: int = 0
    shared: dict[str, int] | None = None  # the failed shared request this row was split from
    retried_usage: dict[str, int] | None = None  # tokens billed for answers that were not kept (retried)
    member: Member | None = None  # the key (of the pool) its last attempt went out with
    lane: Any = None  # what the lane keeps for this row (the task lane: its task)

    def billed(self, reply: Reply) -> None:
        """Count the usage of an answer about to be thrown away (retried): the provider billed it all the same."""
        usage = reply.body.get("usage") if reply.status == 200 and isinstance(reply.body, dict) else None
        if not isinstance(usage, dict):
            return
        kept = self.retried_usage or {}
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                kept[key] = kept.get(key, 0) + value
        self.retried_usage = kept or None


class Host(Protocol):
    """What a lane may ask of the run loop."""

    spec: JobSpec
    errors: ErrorTable
    checkpoint: Checkpoint
    state: ResumeState
    pool: KeyPool
    log: Callable[[str], None]
    t_wall0: float  # when this session started (epoch seconds)

    @property
    def http(self) -> Http: ...

    def decide(self, row: Row, reply: Reply, decision: Decision) -> None: ...

    def record(
        self,
        row: Row,
        reply: Reply,
        decision: Decision | None,
        *,
        part: Request | None = None,
        batch: dict[str, int] | None = None,
    ) -> None: ...

    def retry_later(self, row: Row, decision: Decision, *, immediately: bool = False) -> None: ...

    def send_again(self, rows: list[Row]) -> None: ...

    def failed(self, exc: BatchrunError) -> None: ...

    def guard(self) -> AbstractContextManager[None]:
        """Around acting on an answer: errors stop the run cleanly instead of escaping."""
        ...

    def crashed(self, exc: Exception) -> None: ...

    def wake(self) -> None: ...


class Lane(Protocol):
    """One way to a final record. The run loop calls `send` for every admitted attempt."""

    connections: int  # HTTP connections the lane needs beyond the run's concurrency (polls)

    def background(self) -> list[Coroutine[Any, Any, None]]:
        """Loops to run beside the dispatcher for the length of the run (the task lane's poller)."""
        ...

    @property
    def held(self) -> int:
        """Rows the provider holds and the lane still waits on: the run is not over while any are."""
        ...

    def has_room(self, inflight: int) -> bool:
        """Whether another row may be admitted now (the task lane caps tasks outstanding)."""
        ...

    def skip(self, row: int) -> bool:
        """Rows the lane already holds from an earlier session: the dispatcher does not send them again."""
        ...

    async def call(self, request: Request, auth: Callable[[], str | None]) -> Reply:
        """One attempt on the wire, with the key `auth` gives: never raises for what the network or the provider
        does."""
        ...

    async def answer(self, row: Row, reply: Reply, ticket: Ticket) -> bool:
        """Act on one attempt's answer through the host. True when the provider now holds the row (its TPM
        charge then stands until the lane settles it)."""
        ...

    def annotate(self, row: Row, record: Record) -> None:
        """Add the lane's own keys to a row's final record."""
        ...

    def totals(self) -> dict[str, Any]:
        """The lane's own keys in usage.json (the task lane: `tasks_pending`)."""
        ...
