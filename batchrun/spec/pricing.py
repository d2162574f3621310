"""Prices per million tokens, and what a run's tokens cost at them.

Every built-in price carries its source and date (prices change often); a spec's `pricing:` block or
`--prices FILE` overrides them. A model without a price is reported as unpriced, never as free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import SpecError
from ..text.words import suggestion
from .yamlfile import load_yaml


@dataclass(frozen=True)
class Price:
    input: float  # per million prompt tokens
    output: float  # per million completion tokens
    currency: str
    source: str

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000

    def describe(self) -> str:
        return f"{self.input:g} / {self.output:g} {self.currency} per 1M tokens ({self.source})"

    def scaled(self, share: float) -> Price:
        """The price of the provider's Batch API: `share` of the online price."""
        if share == 1.0:
            return self
        return Price(self.input * share, self.output * share, self.currency, f"{self.source}; batch: {share:.0%}")


def _cny(inp: float, out: float, source: str) -> Price:
    return Price(inp, out, "CNY", source)


def _usd(inp: float, out: float, source: str) -> Price:
    return Price(inp, out, "USD", source)


BUILT_IN: dict[str, Price] = {
    # From docs/providers.md; check before relying on them.
    "glm-4-flash": _cny(0, 0, "bigmodel.cn pricing, 2025"),
    "glm-4-plus": _cny(5, 5, "bigmodel.cn pricing, 2025"),
    "qwen-plus": _cny(0.8, 2, "Aliyun Model Studio pricing, 2025"),
    "qwen-turbo": _cny(0.3, 0.6, "Aliyun Model Studio pricing, 2025 (unverified)"),
    "ernie-3.5-8k": _cny(0.8, 2, "Qianfan pricing, 2024 (unverified)"),
    "ernie-speed-8k": _cny(0, 0, "Qianfan pricing, 2024 (unverified)"),
    "ernie-lite-8k": _cny(0, 0, "Qianfan pricing, 2024 (unverified)"),
    "deepseek-chat": _cny(2, 8, "DeepSeek pricing, 2025"),
    "gpt-4o-mini": _usd(0.15, 0.6, "OpenAI pricing page, 2024-07"),
    "gpt-4o": _usd(2.5, 10, "OpenAI pricing page, 2024-08"),
    # The simulated provider's models, so that a demo shows the arithmetic; not anyone's real price.
    "sim-small": _cny(1, 2, "simulated provider: a made-up price"),
    "sim-large": _cny(4, 8, "simulated provider: a made-up price"),
}


class Tokens(Protocol):
    prompt_tokens: int
    completion_tokens: int
    batch_prompt_tokens: int  # of those, the tokens a Batch API answered (billed at its price)
    batch_completion_tokens: int


def money(value: float | None, currency: str = "") -> str:
    if value is None:
        return "no price"
    return f"{value:,.4f} {currency}".strip() if value < 1 else f"{value:,.2f} {currency}".strip()


class Prices:
    """Looks a model's price up: overrides first, then the built-in table; names compare case-insensitively."""

    def __init__(self, overrides: Mapping[str, Price] | None = None, batch_share: float = 0.5) -> None:
        self.table = {k.lower(): v for k, v in BUILT_IN.items()}
        self.table.update({k.lower(): v for k, v in (overrides or {}).items()})
        self.batch_share = batch_share  # the provider's Batch API price, as a share of its online price

    def get(self, model: str) -> Price | None:
        return self.table.get(model.lower())

    def batch(self, model: str) -> Price | None:
        """The model's price through the provider's Batch API."""
        price = self.get(model)
        return price.scaled(self.batch_share) if price is not None else None

    def cost(self, model: str, tokens: Tokens) -> float | None:
        """What the tokens cost: those a Batch API answered at its price, the rest online (None: no price)."""
        price, batch = self.get(model), self.batch(model)
        if price is None or batch is None:
            return None
        bp, bc = tokens.batch_prompt_tokens, tokens.batch_completion_tokens
        return price.cost(tokens.prompt_tokens - bp, tokens.completion_tokens - bc) + batch.cost(bp, bc)

    def spent(self, models: Mapping[str, Tokens]) -> tuple[dict[str, float], list[str]]:
        """Cost per currency (CNY and USD never added together), and the models with tokens but no price."""
        costs: dict[str, float] = {}
        missing = []
        for name, m in models.items():
            price, cost = self.get(name), self.cost(name, m)
            if price is None or cost is None:
                if m.prompt_tokens or m.completion_tokens:
                    missing.append(name)
            else:
                costs[price.currency] = costs.get(price.currency, 0.0) + cost
        return costs, missing

    def spent_line(self, models: Mapping[str, Tokens]) -> str:
        return spent_text(*self.spent(models))


def spent_text(costs: Mapping[str, float], missing: list[str]) -> str:
    """`1.2340 CNY, 0.0100 USD (no price for m)`: what `spent` found, for a person."""
    spent = ", ".join(money(v, c) for c, v in sorted(costs.items())) or "nothing priced yet"
    return spent + (f" (no price for {', '.join(missing)})" if missing else "")


def parse_prices(data: Any, source: str, prefix: str = "") -> dict[str, Price]:
    """`{model: {input: 0.8, output: 2, currency: CNY, source: "..."}}`, prices per million tokens; errors read
    `source: prefix model.key: what is wrong`, as the job spec's do."""
    if not isinstance(data, Mapping):
        got = "nothing" if data is None else f"a {type(data).__name__}"
        raise SpecError(
            f"{source}: {prefix.rstrip('.') or 'prices'}: must map model names to {{input, output, currency}} "
            f"(per million tokens), e.g. glm-4-flash: {{input: 0.1, output: 0.1, currency: CNY}}; got {got}"
        )
    prices: dict[str, Price] = {}
    for model, entry in data.items():
        at = f"{source}: {prefix}{model}"
        if not isinstance(entry, Mapping):
            raise SpecError(f"{at}: must be a mapping with input, output and currency")
        unknown = sorted(set(entry) - {"input", "output", "currency", "source"})
        if unknown:
            meant = suggestion(unknown[0], ("input", "output", "currency", "source"))
            raise SpecError(f"{at}: unknown key {unknown[0]!r}{meant} (allowed: input, output, currency, source)")
        values = []
        for key in ("input", "output"):
            value = entry.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                got = "nothing" if value is None else repr(value)
                raise SpecError(f"{at}.{key}: must be a price per million tokens (a number >= 0), got {got}")
            values.append(float(value))
        currency = entry.get("currency")
        if not isinstance(currency, str) or not currency.strip():
            raise SpecError(f"{at}.currency: must be a currency code such as CNY or USD")
        prices[str(model)] = Price(
            values[0], values[1], currency.strip().upper(), str(entry.get("source") or f"set in {source}")
        )
    return prices


def load_prices(path: str | Path) -> dict[str, Price]:
    return parse_prices(load_yaml(Path(path), "prices"), str(path))
