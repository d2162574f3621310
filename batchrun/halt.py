"""One stop flag for a command or a run, which every long phase checks as it goes (the input's scan, the
duplicate-id check, validate's pass, a replay from the response cache), so that Ctrl-C and SIGTERM stop each of
them within moments, whatever thread it runs in, and the phase can say how far it got.

The flag lives in a context variable: a phase sent to a worker thread (`asyncio.to_thread` copies the context)
sees the same flag as the command that started it, and code run outside any `watching()` never stops.
"""

from __future__ import annotations

import contextlib
import contextvars
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .errors import Interrupted

# (phase, done, total, unit): how far a phase is; `unit` "B" (bytes of the input) or "row"
Report = Callable[[str, int, "int | None", str], None]


class StopFlag:
    """Set from a signal handler, read from any thread: a plain attribute (a lock could be re-entered by a second
    signal arriving while the first is handled)."""

    __slots__ = ("asked",)

    def __init__(self) -> None:
        self.asked = False

    def set(self) -> None:
        self.asked = True

    def is_set(self) -> bool:
        return self.asked


@dataclass
class Watch:
    report: Report | None = None
    stop: StopFlag = field(default_factory=StopFlag)


_watch: contextvars.ContextVar[Watch | None] = contextvars.ContextVar("batchrun_watch", default=None)


def step(phase: str, done: int, total: int | None = None, unit: str = "row") -> None:
    """Where a long phase is: reported, and the place it stops when asked to (raises Interrupted)."""
    watch = _watch.get()
    if watch is None:
        return
    if watch.stop.asked:
        raise Interrupted(f"interrupted while {phase}")
    if watch.report is not None:
        watch.report(phase, done, total, unit)


def stopped() -> bool:
    """Whether a stop was asked for (for a loop that cannot afford a call per row, or sqlite's progress handler)."""
    watch = _watch.get()
    return watch is not None and watch.stop.asked


@contextlib.contextmanager
def watching(report: Report | None = None, on_signal: Callable[[bool], None] | None = None) -> Iterator[StopFlag]:
    """Within: Ctrl-C and SIGTERM set the stop flag (on the main thread: elsewhere, whoever owns the process
    handles its signals). `on_signal(from_keyboard)` is then called too (a run loop's graceful stop, handed to its
    event loop); without it a signal also raises KeyboardInterrupt, so a synchronous command stops where it is."""
    watch = Watch(report)
    token = _watch.set(watch)

    def handle(signum: int, frame: object) -> None:
        watch.stop.set()
        if on_signal is None:
            raise KeyboardInterrupt
        on_signal(signum == signal.SIGINT)

    before = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            before.append((sig, signal.signal(sig, handle)))
    try:
        yield watch.stop
    finally:
        for sig, old in before:
            signal.signal(sig, old)
        _watch.reset(token)
