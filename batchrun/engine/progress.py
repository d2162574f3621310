"""What a run shows while it runs: a tqdm bar on a terminal, a plain line every few seconds in a log.

On a terminal the stats after the bar are fitted to its width (`fit`: the least useful dropped first, the failure
count last of all), and messages are printed above the bar, never glued to its line. The request, retry and 429
counts are the run's usage totals (every session's, from the final records), the very figures the closing summary
prints, so the two cannot disagree. Anywhere else (a pipe, a CI log, `nohup`) there is no
carriage-return bar at all: one line every LINE_EVERY_S.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ..store.usage import Usage

from ..text.words import plural

LINE_EVERY_S = 10.0
PHASE_LINE_S = 5.0  # a long phase's line in a log (the scan, the id check, validate)
# A phase this big says so in a log as it starts: it may last seconds (smaller ones only every PHASE_LINE_S).
BIG_PHASE_BYTES, BIG_PHASE_ROWS = 16_000_000, 100_000
BAR_MIN = 10  # columns the bar itself keeps, whatever the stats want
# The stats go inside the brackets, after the time; the bar takes whatever width is left (tqdm sizes it).
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:,}/{total:,} [{elapsed}<{remaining}{postfix}]"
BAR_FIXED = 32  # ": 100%||  [00:00<00:00, ]" and a little slack for longer times
BAR_TIGHT = 28  # the same, with times of minutes and hours ("1:00:00<00:00") and no slack
DESC_MIN = 8  # a long job name is cut to this (and "…") before the failure count is dropped


@dataclass(frozen=True, slots=True)
class Stat:
    """One figure after the bar; the lower `keep`, the longer it stays as the terminal narrows (0: failures)."""

    text: str
    keep: int


# Which stats go first as the terminal narrows: the token count, then the request rate, ..., the failures last.
KEEP = {"failed": 0, "429s": 1, "retries": 2, "tasks": 3, "repairs": 4, "req/s": 5, "tok": 6}


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
        # this session's attempts (the request rate; a Ray worker's counts for its driver)
        self.retries = 0
        self.repairs = 0  # structured output: answers that did not fit, asked about again
        self.rate_limited = 0
        self.requests = 0
        self.usage: Usage | None = None  # the run's totals (the ledger's): the 429 and retry counts shown
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

    def stats(self) -> list[Stat]:
        """The figures after the bar, in the order shown; each says how long it stays as the terminal narrows."""
        elapsed = max(1e-6, self.clock() - self._start)
        usage = self.usage  # None: a Progress without a ledger (a test's), this session's own counts
        rate_limited, retries = (
            (usage.rate_limited, usage.retries) if usage is not None else (self.rate_limited, self.retries)
        )
        parts = [Stat(f"{self.failed:,} failed", KEEP["failed"])] if self.failed else []
        if self.tasks is not None:
            parts.append(Stat(f"{self.tasks:,} {self.tasks_label}", KEEP["tasks"]))
        if self.repairs:
            parts.append(Stat(plural(self.repairs, "repair"), KEEP["repairs"]))
        parts += [
            Stat(f"{self.requests / elapsed:,.1f} req/s", KEEP["req/s"]),
            Stat(f"{rate_limited:,} 429s", KEEP["429s"]),
            Stat(plural(retries, "retry", "retries"), KEEP["retries"]),
            Stat(f"{_human(self.tokens)} tok", KEEP["tok"]),
        ]
        return parts

    def refresh(self) -> None:
        if self._bar is not None:
            width = shutil.get_terminal_size((80, 24)).columns
            desc, postfix = layout(self.stats(), width, self.desc, len(f"{self.total:,}"))
            if desc != self._bar.desc:
                self._bar.set_description_str(desc, refresh=False)
            self._bar.set_postfix_str(postfix, refresh=True)
        elif self.lines and self.clock() - self._last_line >= LINE_EVERY_S:
            self._last_line = self.clock()
            self._print(self.line())

    def line(self) -> str:
        """One self-contained line for a log: where the run is, how fast, and how long to go."""
        elapsed = max(1e-6, self.clock() - self._start)
        rate = (self.done - self._done_at_start) / elapsed
        share = self.done / self.total if self.total else 1.0
        eta = f", ~{duration((self.total - self.done) / rate)} to go" if rate > 0 and self.done < self.total else ""
        return (
            f"{self.desc}: {self.done:,}/{plural(self.total, 'row')} ({share:.0%}), {rate:,.1f} rows/s{eta}; "
            + ", ".join(stat.text for stat in self.stats())
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


def fit(stats: Sequence[Stat], budget: int) -> str:
    """As many of `stats` as fit in `budget` columns, shown in their order. They are dropped by `keep`, the
    highest first, until the rest fit: a stat is dropped whole, never cut mid-word, and none outlives one that is
    kept longer (the failures are the last to go)."""
    chosen: set[int] = set()
    used = 0
    for i in sorted(range(len(stats)), key=lambda i: stats[i].keep):
        extra = len(stats[i].text) + (2 if chosen else 0)
        if used + extra > budget:
            break
        chosen.add(i)
        used += extra
    return ", ".join(stat.text for i, stat in enumerate(stats) if i in chosen)


def layout(stats: Sequence[Stat], width: int, desc: str, total_width: int) -> tuple[str, str]:
    """The bar's description and stats at `width` columns. The bar keeps BAR_MIN columns for the other stats;
    the failure count may take all but one of them, and then cuts a long job name, before it is dropped."""
    fixed = BAR_FIXED + 2 * total_width
    postfix = fit(stats, width - fixed - BAR_MIN - len(desc))
    failures = [s for s in stats if s.keep == 0]
    if not failures or failures[0].text in postfix:
        return desc, postfix
    tight = BAR_TIGHT + 2 * total_width + 1  # the bar down to one column, times of minutes
    room = width - tight - len(failures[0].text)
    if room < len(desc):
        desc = desc[: max(DESC_MIN, room - 1)] + "…"
    return desc, fit(failures, width - tight - len(desc))


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
