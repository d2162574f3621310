"""Lanes: the ways a row travels to its final record. The run loop admits rows and acts on decisions; a lane
sends one attempt and says what its answer means, as outcomes (outcome.py) the loop acts on.

- `online`: one request, one answer (sync or stream; embeddings rows may share a request);
- `tasks`: Zhipu's asyncCompletions: submit, write the task id down, poll until the task ends.

Every lane keeps the same promises: one final record per row, resumable, and usage that matches the bill.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..limits.keypool import KeyPool, Member
    from ..limits.throttle import Ticket
    from ..providers.transport import Http, Reply
    from ..records import Record
    from ..retry import ErrorTable
    from ..rows.request import BadRow, Request
    from ..rows.sources import RawRow
    from ..spec.model import JobSpec
    from ..store.checkpoint import Checkpoint
    from .outcome import Deliver, Outcomes


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


@dataclass(frozen=True, slots=True)
class LaneContext:
    """What a lane reads of its run. Nothing here calls back into the run loop: a lane says what an answer means
    by the outcomes it returns (outcome.py), and the loop acts on them."""

    spec: JobSpec  # the job
    base_url: str  # the provider to call
    errors: ErrorTable  # what the provider's error codes mean
    pool: KeyPool  # the keys: a task's polls go out with the key it was submitted with
    checkpoint: Checkpoint  # where the task lane writes a task id down before waiting on it
    tasks: Mapping[int, dict[str, Any]]  # tasks earlier sessions submitted, by row (gone once the row is recorded)
    build: Callable[[RawRow], Request | BadRow]  # a row as a request (structured output: its repairs applied)
    log: Callable[[str], None]  # a message for the user
    t_wall0: float  # when this session started (epoch seconds)


class Lane(Protocol):
    """One way to a final record. The run loop calls `call`, then `answer`, for every admitted attempt."""

    connections: int  # HTTP connections the lane needs beyond the run's concurrency (polls)

    def begin(self, http: Http) -> Outcomes:
        """The run has begun: the HTTP session to call with. What the lane takes up from earlier sessions (the task
        lane: the tasks they left) comes back as outcomes (a held task's row that no longer builds)."""
        ...

    def background(self, deliver: Deliver) -> list[Coroutine[Any, Any, None]]:
        """Loops to run beside the dispatcher for the length of the run (the task lane's poller); what they learn
        goes to the run loop through `deliver`."""
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

    async def answer(self, row: Row, reply: Reply, ticket: Ticket) -> Outcomes:
        """What one attempt's answer means, for the run loop to act on (`Held`: the provider now holds the row)."""
        ...

    def annotate(self, row: Row, record: Record) -> None:
        """Add the lane's own keys to a row's final record."""
        ...

    def totals(self) -> dict[str, Any]:
        """The lane's own keys in usage.json (the task lane: `tasks_pending`)."""
        ...
