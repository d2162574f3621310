"""What a lane's answer means, as values the run loop acts on: a lane never calls back up into the loop, so what
it may make the loop do is all here, and each step can be read (and tested) on its own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..errors import BatchrunError
    from ..providers.transport import Reply
    from ..retry import Decision
    from ..rows.request import BadRow, Request
    from . import Row


@dataclass(frozen=True, slots=True)
class Answered:
    """An answer classified, to act on as every lane's are: kept (its output judged, with structured output),
    retried, its key retired (refused), or recorded as failed out of attempts."""

    row: Row
    reply: Reply
    decision: Decision


@dataclass(frozen=True, slots=True)
class Done:
    """A final record to write as it stands: one row of a shared embeddings answer, or a task given up on with no
    attempt left."""

    row: Row
    reply: Reply
    decision: Decision | None = None  # None: a success
    part: Request | None = None  # the row of a shared request this record is for
    batch: dict[str, int] | None = None  # that row's place in the shared request: index, size


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Send the row again after its backoff (`immediately`: at once, e.g. a task the provider no longer knows)."""

    row: Row
    decision: Decision
    immediately: bool = False


@dataclass(frozen=True, slots=True)
class SendAgain:
    """Rows to send next, before the input's (a shared request split into its rows)."""

    rows: tuple[Row, ...]


@dataclass(frozen=True, slots=True)
class Failed:
    """Stop the run (resumable) for this reason, e.g. a poll URL every task is unknown at."""

    error: BatchrunError


@dataclass(frozen=True, slots=True)
class Held:
    """The provider holds the row now (a task submitted): its TPM charge stands until the lane settles it."""


@dataclass(frozen=True, slots=True)
class BadInput:
    """A row that cannot be built into a request, to record as a failure (a held task's row, input changed)."""

    bad: BadRow


Outcome = Answered | Done | RetryLater | SendAgain | Failed | Held | BadInput
Outcomes = Sequence[Outcome]
# How a lane's own loops (the task lane's poller) hand the run loop what they learn: a step that works out its
# outcomes, run and acted on under the loop's guard (an error there stops the run cleanly instead of escaping).
Deliver = Callable[[Callable[[], Outcomes]], None]
