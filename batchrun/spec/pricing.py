"""Prices per million tokens, and what a run's tokens cost at them.

Every built-in price carries its source and date (prices change often); a spec's `pricing:` block or
`--prices FILE` overrides them. A model without a price is reported as unpriced, never as free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import SpecError
from ..text.words import suggestion
from .presets import batch_cache_share, batch_share
from .windows import DAYS, Window, multiplier_at, parse_windows
from .yamlfile import load_yaml


@dataclass(frozen=True)
class Price:
    input: float  # per million prompt tokens
    output: float  # per million completion tokens
    currency: str
    source: str
    cached_input: float | None = None  # per million prompt tokens the provider's prompt cache hit (None: input)
    thinking_output: float | None = None  # per million completion tokens of an answer that reasoned (None: output)
    windows: tuple[Window, ...] = ()  # time-of-day multipliers, by when an answer came back

    def cost(self, prompt_tokens: int, completion_tokens: int, cached: int = 0, thinking: int = 0) -> float:
        """Prompt tokens (of them `cached` hit the provider's cache) and completion tokens (of them `thinking`
        belong to answers that reasoned), at this price and no window's multiplier."""
        cached_price = self.input if self.cached_input is None else self.cached_input
        thinking_price = self.output if self.thinking_output is None else self.thinking_output
        return (
            (prompt_tokens - cached) * self.input
            + cached * cached_price
            + (completion_tokens - thinking) * self.output
            + thinking * thinking_price
        ) / 1_000_000

    @property
    def worst_output(self) -> float:
        """The dearest an answer's completion token can be (the thinking price, where it is the higher)."""
        return max(self.output, self.thinking_output if self.thinking_output is not None else self.output)

    def describe(self) -> str:
        extras = "".join(
            f", {label} {value:g}"
            for label, value in (("cached input", self.cached_input), ("thinking output", self.thinking_output))
            if value is not None
        )
        windows = f"; {'; '.join(w.describe() for w in self.windows)}" if self.windows else ""
        return f"{self.input:g} / {self.output:g} {self.currency} per 1M tokens{extras}{windows} ({self.source})"

    def scaled(self, share: float, cache_share: float | None = None) -> Price:
        """The price of the provider's Batch API: `share` of the online price; a prompt-cache hit at `cache_share`
        of the batch input price where the provider says so (DashScope: 1, no cache discount in batch; Ark: 0.4),
        else at the cached-input price times `share`."""
        if share == 1.0 and cache_share is None:
            return self
        cached = (
            self.input * share * cache_share
            if cache_share is not None
            else None
            if self.cached_input is None
            else self.cached_input * share
        )
        thinking = None if self.thinking_output is None else self.thinking_output * share
        note = f"; batch: {share:.0%}" + (f", cache hits {cache_share:.0%} of batch input" if cache_share else "")
        return Price(
            self.input * share, self.output * share, self.currency, self.source + note, cached, thinking, self.windows
        )

    def as_dict(self) -> dict[str, Any]:
        """The price as a price table writes it: what parse_prices reads back (the run's manifest keeps it)."""
        out: dict[str, Any] = {"input": self.input, "output": self.output, "currency": self.currency}
        out["source"] = self.source
        if self.cached_input is not None:
            out["cached_input"] = self.cached_input
        if self.thinking_output is not None:
            out["thinking_output"] = self.thinking_output
        if self.windows:
            out["windows"] = [w.as_dict() for w in self.windows]
        return out


def _price(
    currency: str,
    inp: float,
    out: float,
    source: str,
    cached: float | None = None,
    thinking: float | None = None,
    windows: tuple[Window, ...] = (),
) -> Price:
    return Price(inp, out, currency, source, cached, thinking, windows)


def _cny(inp: float, out: float, source: str, cached: float | None = None, thinking: float | None = None) -> Price:
    return _price("CNY", inp, out, source, cached, thinking)


def _usd(inp: float, out: float, source: str, cached: float | None = None) -> Price:
    return _price("USD", inp, out, source, cached)


# DeepSeek's peak surcharge, announced 2026-06-29 for V4's general availability (2x the standard price from 09:00 to
# 12:00 and 14:00 to 18:00 Beijing time, every day): reported by several outlets, not yet seen on the official
# pricing page, so unverified; a `--prices` file or `pricing:` block with other windows (or none) wins.
DEEPSEEK_PEAK = (
    Window(((9 * 3600, 12 * 3600), (14 * 3600, 18 * 3600)), "Asia/Shanghai", 2.0, (), "peak (unverified)"),
)
UNVERIFIED_PEAK = "peak 2x 09:00-12:00, 14:00-18:00 Asia/Shanghai announced 2026-06-29 (unverified)"

BUILT_IN: dict[str, Price] = {
    # Per million tokens. Sources: docs/prices.md (IDs such as D13 name the reference's sources); check before
    # relying on them: list prices change often, and "(2nd)" marks a figure seen only in a secondary source.
    "deepseek-v4-flash": _price(
        "CNY",
        1,
        2,
        f"DeepSeek pricing (CN), off-peak; {UNVERIFIED_PEAK}, 2026-06 (D14, D15)",
        0.02,
        None,
        DEEPSEEK_PEAK,
    ),
    "deepseek-v4-pro": _price(
        "CNY",
        3,
        6,
        f"DeepSeek pricing (CN), off-peak; {UNVERIFIED_PEAK}, 2026-06 (D14, D15)",
        0.025,
        None,
        DEEPSEEK_PEAK,
    ),
    # aliases of deepseek-v4-flash (non-thinking / thinking), retired 2026-07-24 15:59 UTC: kept priced for old runs
    "deepseek-chat": _cny(1, 2, "DeepSeek: alias of deepseek-v4-flash, retired 2026-07-24 (D13, D14)", 0.02),
    "deepseek-reasoner": _cny(1, 2, "DeepSeek: alias of deepseek-v4-flash, retired 2026-07-24 (D13, D14)", 0.02),
    "glm-4.6": _usd(0.6, 2.2, "Z.ai pricing (2nd), 2026; cached = 1/5 of input (unverified) (Z13, Z10)", 0.12),
    "glm-4-flash": _cny(0, 0, "bigmodel.cn: free, 2025-2026 (Z8)"),
    "glm-4-plus": _cny(5, 5, "bigmodel.cn pricing, 2025"),
    "qwen-plus": _cny(0.8, 2, "Aliyun AI PaaS billing rules, 0-128K tier (Q10), 2026", 0.2, 8),
    "qwen-max": _usd(1.6, 6.4, "Alibaba Cloud Model Studio (intl), 2025-04-22 (Q11)"),
    "qwen-vl-plus": _cny(0.8, 2, "Bailian price list (2nd), 2026 (Q12)", 0.16),
    "qwen-vl-max": _usd(0.8, 3.2, "Alibaba Cloud Model Studio (intl), 2025-06-05 (Q9)"),
    "qwen-turbo": _cny(0.3, 0.6, "Aliyun Model Studio pricing, 2025 (unverified)"),
    "ernie-3.5-8k": _cny(0.8, 2, "Qianfan pricing, 2024 (unverified)"),
    "ernie-speed-8k": _cny(0, 0, "Qianfan pricing, 2024 (unverified)"),
    "ernie-lite-8k": _cny(0, 0, "Qianfan pricing, 2024 (unverified)"),
    "doubao-seed-1.6": _usd(
        0.12, 1.0, "unverified: converted from a secondary source (A3), 2026; no official CNY table seen"
    ),
    "kimi-k2.5": _usd(0.6, 3.0, "Moonshot pricing (archive), 2026-03-26 (K14)", 0.1),
    "kimi-k2.6": _usd(0.95, 4.0, "Kimi K2.6 pricing (2nd: Cloudflare docs), 2026-05 (K17)", 0.16),
    "kimi-k2-0905-preview": _usd(0.6, 2.5, "Moonshot pricing (archive), 2026-03-26 (K14)", 0.15),
    "deepseek-ai/DeepSeek-V3": _cny(2, 8, "SiliconFlow pricing (2nd), 2026-02-08 (S11)"),
    "Qwen/Qwen3-235B-A22B-Instruct-2507": _cny(2.5, 10, "SiliconFlow pricing (2nd), 2026-02-08 (S11)"),
    "gpt-4o-mini": _usd(0.15, 0.6, "OpenAI pricing (2nd: simonw/llm-prices), 2026 (O3)", 0.075),
    "gpt-4o": _usd(2.5, 10, "OpenAI pricing page, 2024-08"),
    "gpt-4.1-mini": _usd(0.4, 1.6, "OpenAI pricing (2nd: simonw/llm-prices), 2026 (O3)", 0.1),
    "gpt-5-mini": _usd(
        0.25, 2.0, "OpenAI pricing (2nd: simonw/llm-prices; another says cached 0.125), 2026 (O3)", 0.025
    ),
    # The simulated provider's models, so that a demo shows the arithmetic; not anyone's real price.
    "sim-small": _cny(1, 2, "simulated provider: a made-up price", 0.25, 4),
    "sim-large": _cny(4, 8, "simulated provider: a made-up price", 1, 16),
}


class Tokens(Protocol):
    prompt_tokens: int
    completion_tokens: int
    batch_prompt_tokens: int  # of those, the tokens a Batch API answered (billed at its price)
    batch_completion_tokens: int
    cached_prompt_tokens: int  # of the prompt tokens, the provider's prompt-cache hits (at the cached-input price)
    thinking_completion_tokens: int  # of the completion tokens, those of answers that reasoned (thinking price)
    batch_cached_prompt_tokens: int
    batch_thinking_completion_tokens: int


# What usage.json keeps per model and quarter hour of answering (`Usage.slots`), so that windows (even ones a later
# `--prices` declares) price tokens by when they were answered: these counters, in this order.
SLOT_S = 900
SLOT_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "thinking_completion_tokens",
    "batch_prompt_tokens",
    "batch_completion_tokens",
    "batch_cached_prompt_tokens",
    "batch_thinking_completion_tokens",
)
Slots = Mapping[int, Sequence[int]]  # quarter hour (epoch seconds // SLOT_S) -> SLOT_FIELDS


@dataclass
class SlotTokens:
    """Token counts that price like a model's usage: one time slot's."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    thinking_completion_tokens: int = 0
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0
    batch_cached_prompt_tokens: int = 0
    batch_thinking_completion_tokens: int = 0

    @classmethod
    def of(cls, vector: Sequence[int]) -> SlotTokens:
        return cls(*vector[: len(SLOT_FIELDS)])


def tokens_cost(price: Price, batch: Price, t: Tokens, *, hits: bool = True) -> float:
    """What the tokens cost at `price` online and `batch` through a Batch API, no window applied; `hits=False`:
    as if the provider's prompt cache had hit nothing (what its hits saved is the difference)."""
    bp, bc = t.batch_prompt_tokens, t.batch_completion_tokens
    bcached, bthink = (t.batch_cached_prompt_tokens if hits else 0), t.batch_thinking_completion_tokens
    cached = (t.cached_prompt_tokens if hits else 0) - bcached
    online = price.cost(
        t.prompt_tokens - bp, t.completion_tokens - bc, max(0, cached), t.thinking_completion_tokens - bthink
    )
    return online + batch.cost(bp, bc, bcached, bthink)


def money(value: float | None, currency: str = "") -> str:
    if value is None:
        return "no price"
    return f"{value:,.4f} {currency}".strip() if value < 1 else f"{value:,.2f} {currency}".strip()


class Prices:
    """Looks a model's price up: overrides first, then the built-in table; names compare case-insensitively."""

    def __init__(
        self, overrides: Mapping[str, Price] | None = None, batch_share: float = 0.5, cache_share: float | None = None
    ) -> None:
        self.table = {k.lower(): v for k, v in BUILT_IN.items()}
        self.table.update({k.lower(): v for k, v in (overrides or {}).items()})
        self.batch_share = batch_share  # the provider's Batch API price, as a share of its online price
        self.cache_share = cache_share  # a cache hit through it, as a share of its input price (None: cached_input)

    @classmethod
    def of(cls, overrides: Mapping[str, Price] | None, provider: str, share: float | None = None) -> Prices:
        """The table a run on `provider` is charged by: its Batch API's price share (`share`: the job's
        `provider.batch_price_share`, where the preset's is a guess) and cache-hit rule."""
        return cls(overrides, batch_share(provider, share), batch_cache_share(provider))

    def get(self, model: str) -> Price | None:
        return self.table.get(model.lower())

    def batch(self, model: str) -> Price | None:
        """The model's price through the provider's Batch API."""
        price = self.get(model)
        return price.scaled(self.batch_share, self.cache_share) if price is not None else None

    def cost(self, model: str, tokens: Tokens, slots: Slots | None = None, *, hits: bool = True) -> float | None:
        """What the tokens cost: those a Batch API answered at its price, the rest online, each time slot's at its
        window's multiplier (tokens in no slot, from an older usage.json, at the plain price). None: no price."""
        price, batch = self.get(model), self.batch(model)
        if price is None or batch is None:
            return None
        total = tokens_cost(price, batch, tokens, hits=hits)
        if price.windows and slots:
            for slot, vector in slots.items():
                times = multiplier_at(price.windows, slot * SLOT_S)
                if times != 1.0:
                    total += (times - 1.0) * tokens_cost(price, batch, SlotTokens.of(vector), hits=hits)
        return total

    def cache_saved(self, model: str, tokens: Tokens, slots: Slots | None = None) -> float | None:
        """What the provider's prompt cache saved: its hits at the input price, less at the cached-input price."""
        paid, full = self.cost(model, tokens, slots), self.cost(model, tokens, slots, hits=False)
        return None if paid is None or full is None else full - paid

    def spent(
        self, models: Mapping[str, Tokens], slots: Mapping[str, Slots] | None = None
    ) -> tuple[dict[str, float], list[str]]:
        """Cost per currency (CNY and USD never added together), and the models with tokens but no price."""
        costs: dict[str, float] = {}
        missing = []
        for name, m in models.items():
            price, cost = self.get(name), self.cost(name, m, (slots or {}).get(name))
            if price is None or cost is None:
                if m.prompt_tokens or m.completion_tokens:
                    missing.append(name)
            else:
                costs[price.currency] = costs.get(price.currency, 0.0) + cost
        return costs, missing

    def provider_cache_saved(
        self, models: Mapping[str, Tokens], slots: Mapping[str, Slots] | None = None
    ) -> dict[str, float]:
        """What the provider's prompt cache saved, per currency (models with hits and a price only)."""
        out: dict[str, float] = {}
        for name, m in models.items():
            price = self.get(name)
            saved = self.cache_saved(name, m, (slots or {}).get(name)) if m.cached_prompt_tokens else None
            if price is not None and saved:
                out[price.currency] = out.get(price.currency, 0.0) + saved
        return out

    def spent_line(self, models: Mapping[str, Tokens], slots: Mapping[str, Slots] | None = None) -> str:
        return spent_text(*self.spent(models, slots))


def spent_text(costs: Mapping[str, float], missing: list[str]) -> str:
    """`1.2340 CNY, 0.0100 USD (no price for m)`: what `spent` found, for a person."""
    spent = ", ".join(money(v, c) for c, v in sorted(costs.items())) or "nothing priced yet"
    return spent + (f" (no price for {', '.join(missing)})" if missing else "")


PRICE_KEYS = ("input", "output", "currency", "source", "cached_input", "thinking_output", "windows")


def parse_prices(data: Any, source: str, prefix: str = "") -> dict[str, Price]:
    """`{model: {input: 0.8, output: 2, currency: CNY, source: "...", cached_input: 0.2, thinking_output: 8,
    windows: [...]}}`, prices per million tokens; errors read `source: prefix model.key: what is wrong`, as the job
    spec's do."""
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
        unknown = sorted(set(entry) - set(PRICE_KEYS))
        if unknown:
            meant = suggestion(unknown[0], PRICE_KEYS)
            raise SpecError(f"{at}: unknown key {unknown[0]!r}{meant} (allowed: {', '.join(PRICE_KEYS)})")
        values: list[float | None] = []
        for key in ("input", "output", "cached_input", "thinking_output"):
            value = entry.get(key)
            if value is None and key not in ("input", "output"):
                values.append(None)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                got = "nothing" if value is None else repr(value)
                raise SpecError(f"{at}.{key}: must be a price per million tokens (a number >= 0), got {got}")
            values.append(float(value))
        currency = entry.get("currency")
        if not isinstance(currency, str) or not currency.strip():
            raise SpecError(f"{at}.currency: must be a currency code such as CNY or USD")
        inp, out, cached, thinking = values
        assert inp is not None and out is not None
        prices[str(model)] = Price(
            inp,
            out,
            currency.strip().upper(),
            str(entry.get("source") or f"set in {source}"),
            cached,
            thinking,
            parse_windows(entry.get("windows"), f"{at}.windows"),
        )
    return prices


def price_schema() -> dict[str, Any]:
    """One price's JSON Schema (the spec's `pricing:` block maps model names to it)."""
    per_m = {"type": "number", "minimum": 0}
    window = {
        "type": "object",
        "properties": {
            "hours": {
                "description": 'HH:MM-HH:MM (HH:MM:SS allowed), or a list of them, e.g. "09:00-12:00"',
                "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
            },
            "zone": {"type": "string", "description": "An IANA time zone, e.g. Asia/Shanghai."},
            "days": {"type": "array", "items": {"enum": list(DAYS)}, "description": "Weekdays (default every day)."},
            "multiplier": {"type": "number", "minimum": 0, "description": "The price times this in the window."},
            "name": {"type": "string", "description": "How messages call it (peak, off-peak)."},
        },
        "required": ["hours", "zone", "multiplier"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "input": {**per_m, "description": "Per million prompt tokens."},
            "output": {**per_m, "description": "Per million completion tokens."},
            "currency": {"type": "string", "minLength": 1, "description": "CNY, USD, ..."},
            "source": {"type": "string", "description": "Where the price comes from, and when."},
            "cached_input": {**per_m, "description": "Per million prompt tokens the provider's cache hit."},
            "thinking_output": {**per_m, "description": "Per million completion tokens of answers that reasoned."},
            "windows": {"type": "array", "items": window, "description": "Time-of-day multipliers on the price."},
        },
        "required": ["input", "output", "currency"],
        "additionalProperties": False,
    }


def load_prices(path: str | Path) -> dict[str, Price]:
    return parse_prices(load_yaml(Path(path), "prices"), str(path))
