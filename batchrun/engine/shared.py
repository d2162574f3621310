"""What every run loop shares (the online and task lanes' `RunLoop`, the batch lane's `BatchRun`): the job and its
ledger, how a run stops and why, and usage.json flushed every second while it runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from ..errors import BatchrunError, Interrupted
from ..store.rundir import RunState
from .context import RunContext
from .ledger import Ledger

FLUSH_EVERY_S = 1.0


class RunControl:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        # what every loop reads at every turn, at hand
        prepared, self.spec, self.checkpoint, self.state = ctx.prepared, ctx.spec, ctx.checkpoint, ctx.state
        self.progress, self.log, self.last_row = ctx.progress, ctx.log, ctx.last_row
        self.ledger = Ledger(prepared, ctx.checkpoint, ctx.state, ctx.progress, ctx.cache)
        self.repairs = self.ledger.repairs  # structured output: judges answers and asks again
        self.budget = self.ledger.budget  # limits.max_cost: every row's worst case held against it
        # a row as a request: with structured output, the question it is at (its repair steps applied)
        self.build = self.repairs.build(prepared.builder.build) if self.repairs else prepared.builder.build
        self.stopping: RunState | None = None  # INTERRUPTED | STOPPED
        self.reason: str | None = None
        self.error: BatchrunError | None = None
        self.crash: Exception | None = None  # an unexpected exception, re-raised once the run is flushed

    async def preflight(self) -> bool:
        """What must hold before anything is sent. The duplicate-id check, in a worker thread: Ctrl-C stops it
        within moments, the repeats recorded so far kept. With a budget, a price for the model (none: exit 2).
        False: the run is stopping, nothing sent."""
        try:
            await asyncio.to_thread(self.ledger.refuse_repeated_ids)
            if self.budget is not None:
                self.budget.price(self.spec.model)
            if self.spec.schedule.avoid_peak and self.spec.provider.mode == "batch":
                self.log(
                    "schedule.avoid_peak holds online runs only: a Batch API answers in its own time, so this run "
                    "is not held"
                )
        except Interrupted:
            self.stop(RunState.INTERRUPTED, "interrupted")
        except BatchrunError as exc:
            self.failed(exc)
        return not self.stopping

    def stop(self, how: RunState, reason: str) -> None:
        """Stop taking rows, saying why; a STOPPED (an error) outranks an INTERRUPTED, and the first reason stands."""
        if self.stopping is RunState.STOPPED or (self.stopping and how is RunState.INTERRUPTED):
            return
        self.stopping, self.reason = how, reason
        self.stopped()

    def stopped(self) -> None:
        """Wake whatever waits, now that the run is stopping."""

    def failed(self, exc: BatchrunError) -> None:
        self.error = self.error or exc
        self.stop(RunState.STOPPED, str(exc))

    def crashed(self, exc: Exception) -> None:
        self.crash = self.crash or exc
        self.stop(RunState.STOPPED, f"internal error: {exc!r}")

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Around anything that acts on an answer: a checkpoint that cannot be written stops the run cleanly
        (resumable); anything else is a bug, and stops the run rather than leave a row silently unrecorded."""
        try:
            yield
        except BatchrunError as exc:
            self.failed(exc)
        except Exception as exc:
            self.crashed(exc)
        finally:
            self.wake()

    def wake(self) -> None:
        """Wake whatever waits for a slot or a row, now that an answer was acted on."""

    def flush(self, state: RunState, *, final: bool = False) -> None:
        self.ledger.flush(state, self.facts(), final=final)

    def facts(self) -> dict[str, Any]:
        """What the loop adds to usage.json beside the totals."""
        return {}

    def before_refresh(self) -> None:
        """Bring the progress line's loop-specific figures up to date."""

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            if not self.refresh_and_flush():
                return

    def refresh_and_flush(self) -> bool:
        """The progress line and usage.json brought up to date while the run goes; False: a write failed and the
        run is stopping."""
        self.before_refresh()
        self.progress.refresh()
        try:
            self.flush(RunState.RUNNING)
        except BatchrunError as exc:
            self.failed(exc)
            return False
        return True
