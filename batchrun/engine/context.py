"""One run's context: what the session hands whichever loop runs the job (the online or task lanes' `RunLoop`, the
batch lane's `BatchRun`, the Ray driver), built once so that a loop that follows another (the batch lane's rows
sent online) is given the very same run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..spec.model import JobSpec
from ..store.cache import Cache
from ..store.checkpoint import Checkpoint
from ..store.resume import ResumeState
from .job import Prepared
from .progress import Progress


@dataclass(frozen=True, slots=True)
class RunContext:
    """The job, its run directory and where the run reports, for one session of one run."""

    prepared: Prepared  # the job checked against its input: spec, the input's scan, the row builder
    checkpoint: Checkpoint  # the run directory's writer (a Ray worker's: what it ships to the driver)
    state: ResumeState  # what earlier sessions left: rows done, tasks held, repair steps
    base_url: str  # the provider to call (or the in-process simulator standing in for it)
    keys: Sequence[tuple[str, str | None]]  # the API keys, each with the variable it came from; several: a pool
    progress: Progress  # the progress line, and the counts it shows
    log: Callable[[str], None]  # a message for the user (above the progress line)
    last_row: int | None = None  # submit --limit: rows after this one wait for a later run
    cache: Cache | None = None  # answers an earlier run paid for, by request (cache: on)

    @property
    def spec(self) -> JobSpec:
        return self.prepared.spec
