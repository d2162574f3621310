"""What a run shows while it runs: a tqdm bar on a terminal, a plain line every few seconds in a log.

On a terminal the stats after the bar are fitted to its width (the least useful dropped first), and messages
are printed above the bar, never glued to its line. Anywhere else (a pipe, a CI log, `nohup`) there is no
carriage-return bar at all: one line every LINE_EVERY_S.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

LINE_EVERY_S = 10.0
PHASE_LINE_S = 5.0  # a long phase's line in a log (the scan, the id check, validate)
# A phase this big says so in a log as it starts: it may last seconds (smaller ones only every PHASE_LINE_S).
BIG_PHASE_BYTES, BIG_PHASE_ROWS = 16_000_000, 100_000
BAR_MIN = 10  # columns the bar itself keeps, whatever the stats want
# The stats go inside the brackets, after the time; the bar takes whatever width is left (tqdm sizes it).
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
BAR_FIXED = 32  # ": 100%||  [00:00<00:00, ]" and a little slack for longer times


class Progress:
    """Counters fed by the run loop, drawn as a bar (a terminal), as periodic lines (not a terminal) or not at
    all (enabled=False)."""

    def __init__(
        self,
        total: int,
        done: int,
        *,
        enabled: bool,
        desc: str,
        failed: int = 0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.done, self.desc = total, done, desc
        self.failed = failed  # of the whole run, as the closing summary counts them
        self.retries = 0
        self.repairs = 0  # structured output: answers that did not fit, asked about again
        self.rate_limited = 0
        self.requests = 0
        self.tokens = 0
        self.tasks: int | None = None  # async mode: tasks submitted and not yet collected; batch mode: rows out
        self.tasks_label = "tasks out"
        self.clock = clock
        self._start = clock()
        self._done_at_start = done
        self._last_line = self._start
        self._stream = stream or sys.stderr
        self._bar: Any = None
        self.lines = enabled and not _is_terminal(self._stream)
        if enabled and not self.lines:
            from tqdm import tqdm  # imported only when drawn: --no-progress runs are lighter

            self._bar = tqdm(
                total=total,
                initial=done,
                desc=desc,
                unit="row",
                bar_format=BAR_FORMAT,
                dynamic_ncols=True,
                mininterval=0.25,
                smoothing=0.1,
                file=self._stream,
            )

    def row_done(self, *, failed: bool, tokens: int) -> None:
        self.done += 1
        self.tokens += tokens
        if failed:
            self.failed += 1
        if self._bar is not None:
            self._bar.update(1)

    def attempt(self, *, retried: bool, rate_limited: bool) -> None:
        self.requests += 1
        if retried:
            self.retries += 1
        if rate_limited:
            self.rate_limited += 1

    def repaired(self) -> None:
        self.repairs += 1

    def stats(self) -> list[str]:
        """The figures after the bar, most useful first."""
        elapsed = max(1e-6, self.clock() - self._start)
        parts = [f"{self.failed:,} failed"] if self.failed else []
        if self.tasks is not None:
            parts.append(f"{self.tasks:,} {self.tasks_label}")
        if self.repairs:
            parts.append(f"{self.repairs:,} repairs")
        parts += [
            f"{self.requests / elapsed:,.1f} req/s",
            f"{self.rate_limited:,} 429s",
            f"{self.retries:,} retries",
            f"{_human(self.tokens)} tok",
        ]
        return parts

    def refresh(self) -> None:
        if self._bar is not None:
            width = shutil.get_terminal_size((80, 24)).columns
            budget = width - BAR_FIXED - BAR_MIN - len(self.desc) - 2 * len(str(self.total))
            self._bar.set_postfix_str(fit(self.stats(), budget), refresh=True)
        elif self.lines and self.clock() - self._last_line >= LINE_EVERY_S:
            self._last_line = self.clock()
            self._print(self.line())

    def line(self) -> str:
        """One self-contained line for a log: where the run is, how fast, and how long to go."""
        elapsed = max(1e-6, self.clock() - self._start)
        rate = (self.done - self._done_at_start) / elapsed
        share = self.done / self.total if self.total else 1.0
        eta = f", ~{duration((self.total - self.done) / rate)} to go" if rate > 0 and self.done < self.total else ""
        return f"{self.desc}: {self.done:,}/{self.total:,} rows ({share:.0%}), {rate:,.1f} rows/s{eta}; " + ", ".join(
            self.stats()
        )

    @contextlib.contextmanager
    def above(self) -> Iterator[None]:
        """Around a message printed while the bar is drawn: the bar is cleared first and redrawn after."""
        if self._bar is None:
            yield
            return
        from tqdm import tqdm

        with tqdm.external_write_mode(file=self._stream):
            yield

    def close(self, done: int | None = None) -> None:
        """Stop drawing; `done` is what the run directory holds, so that the bar's last state and the closing
        summary agree whatever happened in between (an interrupt, rows recorded while stopping)."""
        if done is not None:
            self.done = done
        if self._bar is not None:
            if done is not None and done != self._bar.n:
                self._bar.n = done
            self.refresh()
            self._bar.close()
            self._bar = None

    def _print(self, text: str) -> None:
        with contextlib.suppress(OSError):  # a closed pipe must not stop the run
            print(text, file=self._stream, flush=True)


class Phases:
    """What a long phase before or beside the run shows (the input's scan, the id check, validate's pass): a bar
    on a terminal, gone when the phase ends; in a log, a line as a big phase starts, then one every
    PHASE_LINE_S. Fed by `halt.step` (its `report`)."""

    def __init__(self, *, enabled: bool, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.enabled = enabled
        self.clock = clock
        self._stream = stream or sys.stderr
        self.lines = not _is_terminal(self._stream)
        self.phase: str | None = None
        self._bar: Any = None
        self._last_line = 0.0

    def __call__(self, phase: str, done: int, total: int | None, unit: str) -> None:
        if not self.enabled:
            return
        if phase != self.phase:
            self.close()
            self.phase = phase
            if not self.lines:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=total, desc=phase, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000,
                    leave=False, dynamic_ncols=True, mininterval=0.25, file=self._stream,
                )  # fmt: skip
            elif (total or 0) >= (BIG_PHASE_BYTES if unit == "B" else BIG_PHASE_ROWS):
                self._line(phase, done, total, unit)
            else:
                self._last_line = self.clock()
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        elif self.clock() - self._last_line >= PHASE_LINE_S:
            self._line(phase, done, total, unit)

    def _line(self, phase: str, done: int, total: int | None, unit: str) -> None:
        self._last_line = self.clock()
        if unit == "B":
            done_s, total_s = f"{done / 1e6:,.1f} MB", f"{(total or 0) / 1e6:,.1f} MB"
        else:
            done_s, total_s = f"{done:,} rows", f"{total or 0:,} rows"
        share = f"{done / total:.0%} " if total else ""
        with contextlib.suppress(OSError):
            text = f"{phase}: {share}({done_s} of {total_s})" if total else f"{phase}: {done_s}"
            print(text, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.phase = None


def fit(parts: list[str], budget: int) -> str:
    """As many of `parts` as fit in `budget` columns, whole, in order: a stat is dropped, never cut mid-word."""
    shown: list[str] = []
    used = 0
    for part in parts:
        extra = len(part) + (2 if shown else 0)
        if used + extra > budget:
            break
        shown.append(part)
        used += extra
    return ", ".join(shown)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def duration(seconds: float) -> str:
    """A time to go, in the unit that keeps the figure small; one formatter for the progress line's ETA and
    `estimate`, so both say a time the same way."""
    if seconds < 120:
        return f"{seconds:,.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"
