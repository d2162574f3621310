"""`batchrun report` and `batchrun status`: what a run did and cost, from its run directory alone. What is read
and reckoned here is shown by `report_text` (the table, JSON and CSV) and `report_html` (the page).

Nothing here writes to a run directory or calls an API, so both work on a finished, interrupted or still
running run. Totals come from usage.json (a fold over the records, trusted up to the byte offsets it covers)
plus the records written since; latencies and completion times come from one pass over the record lines.
"""

from __future__ import annotations

import heapq
import itertools
import math
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import line_cached, line_images, line_timing
from ..spec.pricing import Price, Prices, money, parse_prices
from ..store.rundir import MANIFEST, RECORD_FILES, RunDir, fold_set_aside
from ..store.usage import Usage


@dataclass
class RunData:
    """One run directory, read."""

    path: Path
    state: str
    live: bool  # a batchrun process holds the directory now
    job: dict[str, Any]
    usage: Usage
    rows_total: int
    active_s: float
    updated_at: str | None
    rate: float | None  # rows/s over the last half minute, as the running process saw it
    prices: dict[str, Price]  # the job's own pricing block
    reason: str | None = None  # why the run stopped early, as its manifest says
    batch_share: float = 1.0  # the provider's Batch API price as a share of its online price
    cache_share: float | None = None  # a prompt-cache hit through it, as a share of its input (None: cached price)
    # Of rows answered by a request (a row the response cache answered took no time: neither is kept for it)
    latencies: Counter[float] = field(default_factory=Counter)  # exact: records round them to 0.1 ms
    completed: list[array[float]] = field(default_factory=list)  # epoch seconds, one array per record file
    warnings: list[str] = field(default_factory=list)  # damaged or repeated record lines, which count for nothing
    image_rows: int = 0  # input.images: rows that carried images, and how many they carried
    images: int = 0

    @property
    def rows_done(self) -> int:
        return self.usage.rows_succeeded + self.usage.rows_failed

    @property
    def rows_pending(self) -> int:
        return max(0, self.rows_total - self.rows_done)


def read_run(path: Path, *, records: bool = True) -> RunData:
    run = RunDir(path)
    saved = run.usage()
    trusted = run.trusted()
    usage = Usage.from_totals(saved) if trusted else Usage()
    if not trusted:
        fold_set_aside(run.path, usage)
    data = RunData(
        run.path,
        run.state,
        run.live,
        run.job,
        usage,
        int(saved.get("rows_total") or run.manifest.get("rows_total") or 0),
        float(saved.get("active_s") or 0.0),
        saved.get("updated_at"),
        saved.get("rate_rows_per_s"),
        parse_prices(run.job.get("pricing") or {}, f"{run.path}/{MANIFEST}", "job.pricing."),
        run.manifest.get("reason") if isinstance(run.manifest.get("reason"), str) else None,
        run.batch_share,
        run.batch_cache_share,
    )
    completed: dict[str, array[float]] = {name: array("d") for name in RECORD_FILES}
    for entry in run.entries(from_covered=not records):
        if records and not line_cached(entry.line):
            latency, done_at = line_timing(entry.line)
            if latency is not None:
                data.latencies[latency] += 1
            if done_at is not None:
                completed[entry.name].append(done_at)
        if records and (pictures := line_images(entry.line)):
            data.image_rows += 1
            data.images += pictures
        if entry.record is not None:  # past what usage.json counts (or all of it, when it is not trusted)
            usage.add(entry.record)
    for times in completed.values():
        # Appended as rows finish, so already in order unless the clock was set back: sorted only then.
        ordered = all(a <= b for a, b in itertools.pairwise(times))
        data.completed.append(times if ordered else array("d", sorted(times)))
    data.warnings = run.warnings()
    return data


# --- the report ------------------------------------------------------------------------------------------


@dataclass
class ModelCost:
    model: str
    rows_succeeded: int
    rows_failed: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    price: Price | None  # online
    cost: float | None  # tokens a Batch API answered at its price, the rest at `price`
    online_cost: float | None  # the same tokens at the online price
    cached_prompt_tokens: int = 0  # the provider's prompt-cache hits, of prompt_tokens
    provider_cache_saved: float | None = None  # what those hits saved against the input price


@dataclass
class Report:
    runs: list[RunData]
    usage: Usage
    models: list[ModelCost]
    rows_total: int
    active_s: float
    latency: dict[str, float | None]  # p50, p90, p99 in seconds
    series: RateSeries
    latencies: list[tuple[float, int]]  # (latency, rows), ordered by latency (the histogram)
    batch_share: float = 1.0  # the Batch API's price as a share of online, for answers with a batch_id
    batch_tokens: int = 0  # tokens answered through a Batch API
    prices: Prices = field(default_factory=Prices)  # online prices (what the response cache saved is priced so)

    @property
    def saved(self) -> dict[str, float]:
        """What the Batch API's answers would have cost more online, per currency."""
        out: dict[str, float] = {}
        for m in self.models:
            if m.price is not None and m.cost is not None and m.online_cost is not None and m.online_cost > m.cost:
                out[m.price.currency] = out.get(m.price.currency, 0.0) + m.online_cost - m.cost
        return out

    @property
    def provider_cache_saved(self) -> dict[str, float]:
        """What the provider's prompt cache saved (its hits at the input price less at the cached-input price), per
        currency: apart from what batchrun's own response cache saved (rows it answered were never asked)."""
        out: dict[str, float] = {}
        for m in self.models:
            if m.price is not None and m.provider_cache_saved:
                out[m.price.currency] = out.get(m.price.currency, 0.0) + m.provider_cache_saved
        return out

    @property
    def lane(self) -> str:
        total = self.usage.prompt_tokens + self.usage.completion_tokens
        if not self.batch_tokens:
            return "online"
        share = f"Batch API prices: {self.batch_share:.0%} of online"
        if self.batch_tokens >= total:
            return f"batch ({share})"
        return f"batch and online ({self.batch_tokens / total:.0%} of tokens through the Batch API at its prices)"

    @property
    def rows_pending(self) -> int:
        return max(0, self.rows_total - self.usage.rows_succeeded - self.usage.rows_failed)

    @property
    def images(self) -> tuple[int, int]:
        """(rows with images, images) of the rows recorded (input.images)."""
        return sum(r.image_rows for r in self.runs), sum(r.images for r in self.runs)

    @property
    def rows_asked(self) -> int:
        """Rows done by a request: the rest the response cache answered, in no time."""
        return max(0, self.usage.rows_succeeded + self.usage.rows_failed - self.usage.response_cache_rows)

    @property
    def rows_per_s(self) -> float | None:
        """Throughput of the rows asked (answers from the cache would make it look as fast as a disk)."""
        asked = self.rows_asked
        return asked / self.active_s if self.active_s > 0 and asked else None

    def totals(self) -> dict[str, float]:
        """Cost per currency: CNY and USD are never added together."""
        out: dict[str, float] = {}
        for m in self.models:
            if m.price is not None and m.cost is not None:
                out[m.price.currency] = out.get(m.price.currency, 0.0) + m.cost
        return out

    @property
    def unpriced(self) -> list[str]:
        return [m.model for m in self.models if m.price is None and (m.prompt_tokens or m.completion_tokens)]


def provider_cache_text(report: Report) -> str | None:
    """`12,000 of 50,000 prompt tokens hit the provider's prompt cache, which saved 0.0123 CNY` (None: no hits)."""
    hits = sum(m.cached_prompt_tokens for m in report.models)
    if not hits:
        return None
    saved = ", ".join(money(v, c) for c, v in sorted(report.provider_cache_saved.items()))
    return f"{hits:,} of {report.usage.prompt_tokens:,} prompt tokens hit the provider's prompt cache" + (
        f", which saved {saved}" if saved else " (no cached-input price: charged at the input price)"
    )


def build_report(paths: Iterable[Path], prices: Mapping[str, Price] | None = None) -> Report:
    """Read and sum run directories; `prices` (from --prices) win over each job's pricing block."""
    runs = [read_run(p) for p in paths]
    usage = Usage()
    for run in runs:
        usage.merge(run.usage)
    share = min((run.batch_share for run in runs), default=1.0)  # one provider's, whenever a report is of one
    cache_share = next((run.cache_share for run in runs), None)
    table = Prices({k: v for run in runs for k, v in run.prices.items()} | dict(prices or {}), share, cache_share)
    online = Prices(table.table, 1.0)
    models = [
        ModelCost(
            name,
            m.rows_succeeded,
            m.rows_failed,
            m.requests,
            m.prompt_tokens,
            m.completion_tokens,
            table.get(name),
            table.cost(name, m, usage.slots.get(name)),
            online.cost(name, m, usage.slots.get(name)),
            m.cached_prompt_tokens,
            table.cache_saved(name, m, usage.slots.get(name)) if m.cached_prompt_tokens else None,
        )
        for name, m in sorted(usage.models.items())
    ]
    merged: Counter[float] = Counter()
    for run in runs:
        merged.update(run.latencies)
    latencies = sorted(merged.items())
    series = rate_series([times for run in runs for times in run.completed])
    return Report(
        runs,
        usage,
        models,
        sum(r.rows_total for r in runs),
        sum(r.active_s for r in runs),
        {f"p{q}": percentile(latencies, q / 100) for q in (50, 90, 99)},
        series,
        latencies,
        share,
        sum(m.batch_prompt_tokens + m.batch_completion_tokens for m in usage.models.values()),
        online,
    )


def percentile(ordered: Sequence[tuple[float, int]], q: float) -> float | None:
    """The nearest-rank percentile of ordered (value, count) pairs (None when empty)."""
    total = sum(n for _, n in ordered)
    if not total:
        return None
    rank = max(1, min(total, math.ceil(q * total - 1e-9)))
    seen = 0
    for value, n in ordered:
        seen += n
        if seen >= rank:
            return value
    return ordered[-1][0]


@dataclass(frozen=True)
class RateSeries:
    """Rows per second over active time: `points` (bucket start, rows/s); `breaks`, where a session (or another
    run directory) begins, the idle time before it left out, so the line never drops to zero for a pause."""

    points: list[tuple[float, float]]
    breaks: list[float]
    span: float  # active seconds from the first completion to the last
    rows: list[int] = field(default_factory=list)  # rows finished in each point's bucket


IDLE_GAP_S = 10.0  # no completion for longer than this: the run was stopped, or between run directories


def rate_series(ascending: Sequence[Sequence[float]], buckets: int = 60, max_gap: float | None = None) -> RateSeries:
    """From completion times given as ascending sequences (one per record file): idle stretches longer than
    `max_gap` are taken out and marked as breaks. Two passes over a lazy merge: a million-row run is never copied
    into one list."""
    if sum(len(times) for times in ascending) < 2:
        return RateSeries([], [], 0.0)
    gap = IDLE_GAP_S if max_gap is None else max_gap
    breaks: list[float] = []

    def active_times(mark: bool) -> Iterator[float]:
        times = heapq.merge(*ascending)
        active, prev = 0.0, next(times)
        yield active
        for t in times:
            if t - prev > gap:
                if mark:
                    breaks.append(active)
            else:
                active += t - prev
            prev = t
            yield active

    span = max(deque(active_times(True), maxlen=1)[0], 1e-3)  # the last active time, without keeping the rest
    width = span / buckets if span < buckets else max(1.0, span / buckets)  # whole seconds once there are enough
    n = max(1, math.ceil(span / width - 1e-9))
    counts = [0] * n
    for t in active_times(False):
        counts[min(n - 1, int(t // width))] += 1
    # the last bucket is only as wide as what is left of the span (a rate over empty time would dip at the end)
    widths = [min(width, span - i * width) for i in range(n)]
    return RateSeries([(i * width, c / widths[i]) for i, c in enumerate(counts)], breaks, span, counts)
