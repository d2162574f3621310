"""The terminal progress bar: rows done/total, failures, retries, request rate and tokens."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """A tqdm bar fed by the runner; with enabled=False it keeps the counters and draws nothing."""

    def __init__(self, total: int, done: int, *, enabled: bool, desc: str) -> None:
        self.failed = 0
        self.retries = 0
        self.rate_limited = 0
        self.requests = 0
        self.tokens = 0
        self._start = time.monotonic()
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm  # imported only when drawn: --no-progress runs are lighter

            self._bar = tqdm(
                total=total,
                initial=done,
                desc=desc,
                unit="row",
                dynamic_ncols=True,
                mininterval=0.25,
                smoothing=0.1,
                file=sys.stderr,
            )

    def row_done(self, *, failed: bool, tokens: int) -> None:
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

    def refresh(self) -> None:
        if self._bar is None:
            return
        elapsed = max(1e-6, time.monotonic() - self._start)
        self._bar.set_postfix_str(
            f"failed={self.failed} retries={self.retries} 429s={self.rate_limited} "
            f"req/s={self.requests / elapsed:.1f} tok={_human(self.tokens)}",
            refresh=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self.refresh()
            self._bar.close()
            self._bar = None


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"
