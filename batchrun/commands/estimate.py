"""`batchrun estimate`: what a job will cost and how long its limits make it take, before sending anything."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..engine.job import Prepared, display_path
from ..engine.progress import duration
from ..limits.throttle import MAX_CONCURRENCY
from ..spec.images import rule_text
from ..spec.presets import PRESETS
from ..spec.pricing import Price, Prices
from ..spec.windows import cheapest, local_text, multiplier_at, window_at
from ..text.words import plural
from .validate import ModelLoad, validate

TYPICAL_OUTPUT_SHARE = 0.3  # answers use about this share of max_tokens, unless told otherwise
# An answer's latency when not told (`estimate --latency`) and not simulated: a first token after about half a
# second, then about 50 tokens a second. An assumption, not a provider's figure: it varies by model and load.
ASSUMED_FIRST_TOKEN_S = 0.5
ASSUMED_TOKENS_PER_S = 50.0
ASSUMED = "assumed: set it with --latency"


@dataclass
class Estimate:
    rows: int
    bad_rows: int
    requests: int  # what will be sent: embedding rows alike share requests
    prompt_tokens: int
    max_output_tokens: int  # every answer as long as max_tokens allows
    models: dict[str, ModelLoad] = field(default_factory=dict)  # each model's share, priced at its own price
    images: tuple[int, int, int] = (0, 0, 0)  # input.images: rows with images, images, their estimated tokens

    def output_tokens(self, share: float) -> int:
        return round(self.max_output_tokens * share)


def estimate(prepared: Prepared) -> Estimate:
    """Read the whole input as submit would (validate's pass) and add up the requests' token estimates."""
    checked = validate(prepared)
    return Estimate(
        checked.rows,
        checked.rows - checked.requests,
        checked.sent,
        checked.prompt_tokens,
        checked.max_output_tokens,
        checked.models,
        (checked.image_rows, checked.images, checked.image_tokens),
    )


def cost_ranges(est: Estimate, prices: Prices, share: float, batch: bool = False) -> dict[str, tuple[float, float]]:
    """(typical, at max_tokens) cost per currency, each model at its own price (its Batch API price if `batch`)."""
    out: dict[str, tuple[float, float]] = {}
    for model, load in est.models.items():
        price = prices.batch(model) if batch else prices.get(model)
        if price is not None:
            a, b = cost_range(price, load.prompt_tokens, round(load.max_output_tokens * share), load.max_output_tokens)
            low, high = out.get(price.currency, (0.0, 0.0))
            out[price.currency] = (low + a, high + b)
    return out


def cost_lines(est: Estimate, prices: Prices, share: float, label: str = "cost", batch: bool = False) -> list[str]:
    """The cost range per currency, each model at its own price (a Batch API line may name its own model)."""
    priced: list[str] = []
    unpriced: list[str] = []
    for model, load in sorted(est.models.items(), key=lambda kv: -kv[1].rows):
        price = prices.batch(model) if batch else prices.get(model)
        if price is None:
            unpriced.append(model)
            continue
        rows = f" ({plural(load.rows, 'row')})" if len(est.models) > 1 else ""
        priced.append(f"                 {model}{rows} at {price.describe()}")
    ranges = cost_ranges(est, prices, share, batch)
    lines = [
        f"  {label:<15}{lo:,.4f} to {hi:,.4f} {c} (typical to max_tokens)" for c, (lo, hi) in sorted(ranges.items())
    ]
    lines += priced
    if unpriced:
        lines.append(
            f"  cost           unknown for {', '.join(unpriced)}: no price (not free: add it with --prices FILE "
            "or a pricing: block in the job spec)"
        )
    return lines


def cost_range(price: Price, prompt_tokens: int, low_output: int, high_output: int) -> tuple[float, float]:
    return price.cost(prompt_tokens, low_output), price.cost(prompt_tokens, high_output)


def limit_seconds(
    requests: int, tokens: int, rpm: float | None, tpm: float | None, concurrency: int = 0, latency_s: float = 0.0
) -> dict[str, float]:
    """The least time each limit allows for the job: requests / RPM, tokens / TPM, and requests x latency /
    concurrency (no more than `concurrency` requests are out at once, each for `latency_s`)."""
    out = {}
    if rpm:
        out["rpm"] = requests / rpm * 60
    if tpm:
        out["tpm"] = tokens / tpm * 60
    if concurrency and latency_s > 0:
        out["concurrency"] = requests * latency_s / concurrency
    return out


def assumed_latency(prepared: Prepared, typical_output: float) -> tuple[float, str]:
    """An answer's latency for the estimate, and where it comes from: the simulated provider's median, else an
    assumption from the typical answer length (ASSUMED_*; `estimate --latency` gives the real one)."""
    sim = prepared.spec.provider.simulate
    if sim is not None:
        return max(sim.latency, 0.01), "simulated"  # a round trip takes some time, even to a simulator at 0
    if prepared.spec.endpoint == "embeddings" or prepared.spec.provider.mode == "async":  # no answer to wait for
        return ASSUMED_FIRST_TOKEN_S, ASSUMED
    return ASSUMED_FIRST_TOKEN_S + typical_output / ASSUMED_TOKENS_PER_S, ASSUMED


def window_lines(est: Estimate, prices: Prices, share: float, now: float, batch: bool = False) -> list[str]:
    """For each model whose price has time-of-day windows: what the rows cost sent now, and in the cheapest window
    (when it opens), so the saving from waiting is plain (`schedule: {avoid_peak: true}` waits by itself)."""
    lines = []
    for model, load in sorted(est.models.items()):
        price = prices.batch(model) if batch else prices.get(model)
        if price is None or not price.windows:
            continue
        low, high = cost_range(price, load.prompt_tokens, round(load.max_output_tokens * share), load.max_output_tokens)
        times, (best, opens) = multiplier_at(price.windows, now), cheapest(price.windows, now)
        window = window_at(price.windows, now)
        named = f", {window.name}" if window is not None and window.name else ""
        cur = price.currency
        lines.append(
            f"  time of day    {model}: now ×{times:g}{named}: {low * times:,.4f} to {high * times:,.4f} {cur}"
        )
        if best >= times:
            lines.append("                 now is the cheapest time within a week: nothing to gain by waiting")
            continue
        zone = (window_at(price.windows, opens) or window or price.windows[0]).zone
        lines.append(
            f"                 cheapest ×{best:g} from {local_text(opens, zone, now)} (in {duration(opens - now)}): "
            f"{low * best:,.4f} to {high * best:,.4f} {cur}; waiting saves {low * (times - best):,.4f} to "
            f"{high * (times - best):,.4f} {cur} (schedule: {{avoid_peak: true}} waits by itself)"
        )
    return lines


def estimate_lines(
    prepared: Prepared,
    est: Estimate,
    prices: Prices,
    share: float,
    latency_s: float | None = None,
    now: float | None = None,
) -> list[str]:
    spec = prepared.spec
    typical, most = est.output_tokens(share), est.max_output_tokens
    lines = [
        f"estimate for {spec.name} ({display_path(spec.spec_path)}): {plural(est.rows, 'row')}"
        + (f", {est.bad_rows:,} that cannot be sent (see batchrun validate)" if est.bad_rows else "")
        + f", {plural(est.requests, 'request')} to {spec.provider.name}",
        f"  prompt tokens  ~{est.prompt_tokens:,} (estimated without a tokenizer: about 1 per CJK character, "
        "1 per 4 other characters)",
    ]
    if est.images[1] and prepared.builder.images is not None:
        rows, images, tokens = est.images
        rules = prepared.builder.images.rules(spec.model)
        lines.append(
            f"  images         {plural(images, 'image')} in {plural(rows, 'row')}: ~{tokens:,} of the prompt tokens "
            f"({rule_text(rules)})"
        )
    if spec.endpoint != "embeddings":
        lines.append(
            f"  output tokens  up to {most:,} (max_tokens on every row); ~{typical:,} at a typical {share:.0%} of it"
        )
    api = PRESETS[spec.provider.name].batch
    batched = spec.provider.mode in ("batch", "batch-chat")
    if batched and api is not None:
        lines += cost_lines(est, prices, share, "cost (batch)", batch=True)
        lines.append(f"  online         {_ranges(cost_ranges(est, prices, share))} for the same rows in mode sync")
    else:
        lines += cost_lines(est, prices, share)
        if api is not None and spec.endpoint in api.endpoints:
            batch = cost_ranges(est, prices, share, batch=True)
            mode = "batch" if api.files else "batch-chat"
            lines.append(
                f"  batch          {_ranges(batch)} with provider.mode: {mode} ({prices.batch_share:.0%} of online, "
                "answers within 24 h)"
            )
    lines += window_lines(est, prices, share, time.time() if now is None else now, spec.provider.mode == "batch")
    if spec.limits.max_cost:
        lines.append(budget_line(spec.limits.max_cost, cost_ranges(est, prices, share, batched)))
    if spec.provider.mode == "batch":
        lines.append(
            f"  time           the provider's: within the completion window ({spec.batch.completion_window}); "
            "rows a batch does not finish go into a new one"
        )
        return lines
    if spec.provider.mode == "batch-chat":
        lines.append(
            f"  time           Ark's: batch chat answers within hours, not seconds; {spec.limits.tpd or 0:,.0f} tokens "
            "a day per model at most (limits.tpd)"
        )
        return lines
    tokens = est.prompt_tokens + (most if spec.limits.tpm_accounting == "reserve" else typical)
    slots = spec.limits.concurrency or MAX_CONCURRENCY
    latency, source = (
        (latency_s, "given") if latency_s is not None else assumed_latency(prepared, typical / max(1, est.requests))
    )
    times = limit_seconds(est.requests, tokens, spec.limits.rpm, spec.limits.tpm, slots, latency)
    cap = "" if spec.limits.concurrency else "batchrun's cap, "
    at_most = slots / latency * 60
    lines.append(f"  concurrency    {slots:,} × {latency:,.1f} s latency ≈ {at_most:,.0f} RPM ({cap}latency {source})")
    if times:
        binding = max(times, key=lambda k: times[k])
        name = "concurrency" if binding == "concurrency" else binding.upper()
        detail = ", ".join(
            f"{'concurrency' if k == 'concurrency' else k.upper()} {duration(v)}" for k, v in sorted(times.items())
        )
        lines.append(f"  time           at least {duration(times[binding])}: the {name} limit binds ({detail})")
    if not (spec.limits.rpm or spec.limits.tpm):
        lines.append(
            "  limits         no limits.rpm or limits.tpm given: the provider's limits may bind first (batchrun "
            "learns them from its 429s)"
        )
    if spec.provider.mode == "async":
        sim = spec.provider.simulate
        runs = f"up to {duration(sim.task_s[1])} (simulated)" if sim else "for a time not known in advance"
        lines.append(
            f"  tasks          the time above is for submitting; each task then runs {runs} before its result is polled"
        )
    return lines


def budget_line(budget: Mapping[str, float], ranges: Mapping[str, tuple[float, float]]) -> str:
    """Whether the job fits limits.max_cost: at max_tokens on every row, at a typical share, or not even then."""
    parts = []
    for currency, limit in sorted(budget.items()):
        low, high = ranges.get(currency, (0.0, 0.0))
        if high <= limit:
            verdict = "fits, even at max_tokens on every row"
        elif low <= limit:
            verdict = f"fits at a typical output length, not at max_tokens ({high:,.4f})"
        else:
            verdict = f"does not fit: the run would stop about {limit / low:.0%} of the way through"
        parts.append(f"{limit:,.4f} {currency}: {verdict}")
    return "  budget         " + "; ".join(parts)


def _ranges(ranges: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{lo:,.4f} to {hi:,.4f} {c}" for c, (lo, hi) in sorted(ranges.items())) or "unknown (no price)"
