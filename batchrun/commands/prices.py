"""`batchrun prices [MODEL]`: what a run would be charged per million tokens, and where each price comes from (the
built-in table with its source and date, a job's `pricing:` block, a `--prices` file): input, cached input, output,
thinking output, the provider's Batch API price, time-of-day windows and the price now."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..spec.parse import load_spec
from ..spec.presets import PRESETS, batch_cache_share, batch_share, unknown_preset
from ..spec.pricing import BUILT_IN, Price, Prices, load_prices
from ..spec.windows import local_text, multiplier_at, next_change, window_at
from ..text.words import closest, did_you_mean


@dataclass(frozen=True)
class PriceRow:
    model: str
    price: Price
    origin: str  # "built-in", "pricing: in job.yaml", "--prices prices.yaml"
    batch: Price | None  # through the provider's Batch API (None: no provider given, or it has none)
    multiplier: float  # the window's multiplier now
    window: str  # the window in force now ("" outside every window)
    changes_at: float | None  # when the multiplier next changes


def price_rows(
    model: str | None,
    *,
    job: Mapping[str, Price] | None = None,
    job_source: str = "the job's pricing:",
    file: Mapping[str, Price] | None = None,
    file_source: str = "--prices",
    provider: str | None = None,
    now: float,
) -> list[PriceRow]:
    """The prices a run would be charged, later layers winning (built-in < the job's `pricing:` < `--prices`); one
    model's, or all of them. An unknown model is an error naming the closest known ones."""
    origins: dict[str, tuple[str, str]] = {k.lower(): (k, "built-in") for k in BUILT_IN}
    origins.update({k.lower(): (k, job_source) for k in job or {}})
    origins.update({k.lower(): (k, file_source) for k in file or {}})
    has_batch = provider is not None and provider in PRESETS and PRESETS[provider].batch is not None
    table = Prices(
        {**(job or {}), **(file or {})},
        batch_share(provider) if has_batch and provider else 1.0,
        batch_cache_share(provider) if has_batch and provider else None,
    )
    if model is not None and model.lower() not in origins:
        names = [name for name, _ in origins.values()]
        meant = did_you_mean(closest(model, names))
        raise SpecError(
            f"no price for {model!r}"
            + (f" ({meant})" if meant else "")
            + ": add one with --prices FILE or a pricing: block in the job spec (input, output, currency per 1M tokens)"
        )
    keys = [model.lower()] if model is not None else sorted(origins, key=lambda k: origins[k][0].lower())
    rows = []
    for key in keys:
        name, origin = origins[key]
        price = table.get(key)
        assert price is not None
        window = window_at(price.windows, now)
        rows.append(
            PriceRow(
                name,
                price,
                origin,
                table.batch(key) if has_batch else None,
                multiplier_at(price.windows, now),
                window.describe() if window is not None else "",
                next_change(price.windows, now) if price.windows else None,
            )
        )
    return rows


@dataclass(frozen=True)
class Shown:
    rows: list[PriceRow]
    provider: str | None
    now: float

    def lines(self) -> list[str]:
        return price_lines(self.rows, self.provider, self.now)

    def json(self) -> dict[str, Any]:
        return price_json(self.rows, self.provider)


def prices_shown(model: str | None, job: str | None, provider: str | None, prices: str | None) -> Shown:
    """`batchrun prices`: the --job's pricing:, provider and model (the options given win), --prices on top."""
    spec = load_spec(job) if job else None
    if provider is not None and provider not in PRESETS:
        raise SpecError(f"--provider {unknown_preset(provider)}")
    provider = provider or (spec.provider.name if spec is not None else None)
    now = time.time()
    rows = price_rows(
        model or (spec.model if spec is not None else None),
        job=spec.pricing if spec is not None else None,
        job_source=f"pricing: in {spec.called}" if spec is not None else "",
        file=load_prices(prices) if prices else None,
        file_source=f"--prices {prices}",
        provider=provider,
        now=now,
    )
    return Shown(rows, provider, now)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def price_lines(rows: list[PriceRow], provider: str | None, now: float) -> list[str]:
    """A table for a person: per million tokens, in the model's currency; windows and sources below it."""
    header = ("model", "input", "cached in", "output", "thinking", "batch in/out", "now", "cur.", "from")
    body = []
    for r in rows:
        p, b = r.price, r.batch
        body.append(
            (
                r.model,
                _num(p.input),
                _num(p.cached_input),
                _num(p.output),
                _num(p.thinking_output),
                "-" if b is None else f"{b.input:g} / {b.output:g}",
                f"×{r.multiplier:g}" if p.windows else "",
                p.currency,
                r.origin,
            )
        )
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i in (0, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *body)
    ]
    lines.append("")
    lines.append(
        "per million tokens; cached in: a prompt-cache hit (- : the input price); thinking: output of answers "
        "that reasoned (- : the output price)"
    )
    if provider is not None:
        api = PRESETS[provider].batch if provider in PRESETS else None
        lines.append(
            f"batch: {provider}'s Batch API at {batch_share(provider):.0%} of online"
            + (f" ({api.source})" if api is not None and api.source else "")
            if api is not None
            else f"batch: {provider} has no Batch API"
        )
    for r in rows:
        notes = [f"{r.model}: {r.price.source}"]
        for w in r.price.windows:
            notes.append(f"  window {w.describe()}")
        if r.price.windows:
            at = "" if not r.window else f" ({r.window})"
            change = (
                f"; changes at {local_text(r.changes_at, r.price.windows[0].zone, now)}"
                if r.changes_at is not None
                else ""
            )
            notes.append(f"  now ×{r.multiplier:g}{at}{change}")
        if r.origin == "built-in" or r.price.windows or len(rows) == 1:
            lines += notes
    return lines


def price_json(rows: list[PriceRow], provider: str | None) -> dict[str, Any]:
    return {
        "provider": provider,
        "batch_share": batch_share(provider) if provider is not None else None,
        "models": [
            {
                "model": r.model,
                "from": r.origin,
                **r.price.as_dict(),
                "batch": None if r.batch is None else {k: v for k, v in r.batch.as_dict().items() if k != "windows"},
                "multiplier_now": r.multiplier,
                "window_now": r.window or None,
                "input_now": r.price.input * r.multiplier,
                "output_now": r.price.output * r.multiplier,
                "changes_at": r.changes_at,
            }
            for r in rows
        ],
    }
