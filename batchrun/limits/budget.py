"""Never spend past a budget (`limits.max_cost: {CNY: 50}`).

Each row reserves its worst-case cost when it goes out (the prompt estimate plus max_tokens, at its model's price;
the batch price in the batch lane), and every attempt of it reserves again; the reservations are let go when the
row has its final record, whose usage (retried and repaired answers included) is then part of what was spent.
A row goes out only if what was spent, what is reserved and its own worst case fit in the budget, so what is
spent never passes the budget by more than the estimates were short; at the budget the run stops taking rows,
lets what is in flight finish, and stops (exit 1) saying what was spent and how to go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from ..errors import BatchrunError, SpecError
from ..rows.request import Request
from ..spec.pricing import Price, Prices, money
from ..spec.windows import multiplier_at


def worst_cost(price: Price, prompt_tokens: int, max_output: int, thinking: bool, at: float) -> float:
    """A request's worst case: every prompt token a cache miss, `max_output` answer tokens at the thinking price
    where answers may reason (and it is the dearer), all at the multiplier of the window it goes out in."""
    output = max_output if thinking and price.thinking_output is not None else 0
    cost = price.cost(prompt_tokens, max_output, 0, output if price.worst_output > price.output else 0)
    return cost * multiplier_at(price.windows, at)


class BudgetReached(BatchrunError):
    """The job has spent its budget: the run stopped taking rows (the rest stay pending, resumable)."""

    exit_code = 1


class Budget:
    def __init__(
        self,
        limits: Mapping[str, float],
        prices: Prices,
        spent: Callable[[], Mapping[str, float]],
        *,
        batch: bool = False,
        source: str = "job.yaml",
        thinking: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`thinking`: answers may reason (then an answer's tokens are held at the thinking price, where the price
        has one and it is the higher); `clock`: now, for the time-of-day window a request goes out in."""
        self.limits, self.prices, self.spent, self.batch, self.source = limits, prices, spent, batch, source
        self.thinking, self.clock = thinking, clock
        self.held: dict[int, tuple[str, float]] = {}  # row -> (currency, reserved)
        self.reserved: dict[str, float] = {}

    def price(self, model: str) -> Price:
        """The model's price (its batch price in the batch lane); a model without one cannot be held to a budget."""
        price = self.prices.batch(model) if self.batch else self.prices.get(model)
        if price is None:
            raise SpecError(
                f"{self.source}: limits.max_cost is set, but {model!r} has no price, so its cost cannot be held to "
                "the budget: add it to the spec's pricing: block (input and output per million tokens, and the "
                "currency)"
            )
        if price.currency not in self.limits:
            raise SpecError(
                f"{self.source}: limits.max_cost has no {price.currency} budget, the currency {model!r} is priced in: "
                f"add one, e.g. max_cost: {{{price.currency}: 50}}"
            )
        return price

    def worst(self, request: Request) -> tuple[str, float]:
        price = self.price(request.model)
        return price.currency, worst_cost(price, request.prompt_tokens, request.max_output, self.thinking, self.clock())

    def reserve(self, request: Request) -> bool:
        """Hold the request's worst case against the budget; False (nothing held) when it does not fit."""
        currency, cost = self.worst(request)
        spent = self.spent().get(currency, 0.0)
        if spent + self.reserved.get(currency, 0.0) + cost > self.limits[currency]:
            return False
        self.reserved[currency] = self.reserved.get(currency, 0.0) + cost
        _, before = self.held.get(request.row, (currency, 0.0))
        self.held[request.row] = (currency, before + cost)
        return True

    def release(self, row: int) -> None:
        """The row is final: its usage now counts as spent, and what it held is let go."""
        held = self.held.pop(row, None)
        if held is not None:
            currency, cost = held
            self.reserved[currency] = max(0.0, self.reserved.get(currency, 0.0) - cost)

    def reached(self) -> BudgetReached:
        spent = self.spent()
        parts = []
        for currency, limit in sorted(self.limits.items()):
            out = self.reserved.get(currency, 0.0)
            parts.append(
                f"spent {money(spent.get(currency, 0.0), currency)} of {money(limit, currency)}"
                + (f" ({money(out, currency)} more held by requests in flight)" if out else "")
            )
        return BudgetReached(
            f"budget reached: {'; '.join(parts)}; no more rows were sent. Raise limits.max_cost in {self.source} "
            "and run the same command to go on from here"
        )
