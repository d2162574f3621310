"""`schedule: {avoid_peak: true}`: the run sends nothing while its model's price is above the cheapest its
time-of-day windows reach, says when it goes on and why, and goes on by itself in the cheap window. What is in
flight when a window closes finishes; Ctrl-C while holding stops the run at once (the wait is cancelled)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..spec.model import JobSpec
from ..spec.pricing import Prices
from ..spec.windows import Hold, Window, hold, next_change


class PriceHold:
    def __init__(
        self,
        spec: JobSpec,
        rows_left: Callable[[], int],
        log: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        price = Prices.of(spec.pricing, spec.provider.name, spec.provider.batch_price_share).get(spec.model)
        self.windows: tuple[Window, ...] = price.windows if price is not None else ()
        self.rows_left, self.log, self.clock = rows_left, log, clock
        self.steady_until = 0.0  # the price stays as cheap as it gets until then: no need to look again
        self.holding: Hold | None = None  # while the run holds: why, and until when
        if not self.windows:
            self.log(
                f"schedule.avoid_peak: {spec.model}'s price has no time-of-day windows (see `batchrun prices "
                f"{spec.model}`): nothing to wait for"
            )
            self.steady_until = float("inf")

    def facts(self) -> dict[str, str]:
        """For usage.json while the run holds (`batchrun status` says so): why, and until when."""
        held = self.holding
        return {} if held is None else {"holding": held.text(self.rows_left(), self.clock()).split("; holding")[0]}

    async def until_cheap(self) -> None:
        """Return when a row may go out: at once inside the cheapest window, else once it opens (the wait is
        cancelled when the run stops)."""
        while True:
            now = self.clock()
            if now < self.steady_until:
                return
            held = hold(self.windows, now)
            if held is None:
                if self.holding is not None:
                    self.log(f"the price is at its cheapest now: going on, {self.rows_left():,} rows left")
                    self.holding = None
                change = next_change(self.windows, now)
                self.steady_until = change if change is not None else float("inf")
                return
            if self.holding is None:
                self.log(held.text(self.rows_left(), now))
            self.holding = held
            await asyncio.sleep(max(0.01, held.until - now))
