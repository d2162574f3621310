"""`batchrun report --html`: one self-contained page (inline SVG and CSS, no scripts, no network).

Charts: rows/s over active time (sessions joined, each start marked), the latency histogram with p50/p90/p99, cost
by model on one scale per currency, and failures by code. Rows the response cache answered are in neither of the
first two (they took no time: they would draw a spike at the start and a bar at zero); the page says how many.
Every chart has axis titles, ticks and gridlines, and scales with the page. The page is well-formed XML as well as
HTML, so tests can parse it and any browser renders it offline.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from html import escape

from ..spec.pricing import money
from ..store.usage import cached_line, tokens_of_which
from .report import RateSeries, Report, percentile, provider_cache_text
from .report_text import images_text, latency_text, requests_text, throughput_text

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 28, 48  # plot margins: tick labels and axis titles live there
BAR = "#3b6fb6"
GRID = "#e3e6ee"
AXIS = "#8a90a0"
MARK = "#c0392b"
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", sans-serif; margin: 2em auto;
       max-width: 72em; color: #1d2330; padding: 0 1em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; } h3 { font-size: 1em; margin: 1em 0 0; }
table { border-collapse: collapse; } td, th { padding: .2em .8em; border-bottom: 1px solid #dde; }
th { text-align: left; font-weight: 600; } .muted { color: #667; }
svg { display: block; margin: .5em 0; width: 100%; height: auto; } svg text { font-size: 11px; fill: #334; }
svg .title { font-size: 12px; fill: #1d2330; font-weight: 600; }
"""


def render_html(report: Report) -> str:
    u = report.usage
    runs = ", ".join(f"{r.path.name} ({r.state})" for r in report.runs)
    facts = [
        ("runs", runs),
        (
            "rows",
            f"{u.rows_succeeded:,} succeeded, {u.rows_failed:,} failed, {report.rows_pending:,} pending of "
            f"{report.rows_total:,}",
        ),
        ("requests", requests_text(report)),
        (
            "tokens",
            f"{u.prompt_tokens:,} prompt + {u.completion_tokens:,} completion"
            + tokens_of_which(u.reasoning_tokens, u.cached_prompt_tokens),
        ),
        ("throughput", throughput_text(report)),
        ("latency", "   ".join(f"{k} {latency_text(v)}" for k, v in report.latency.items())),
        ("cost", ", ".join(money(v, c) for c, v in sorted(report.totals().items())) or "no priced tokens"),
    ]
    if (provider := provider_cache_text(report)) is not None:
        facts.append(("prompt cache", provider))
    if (hits := cached_line(u.models, report.prices)) is not None:
        facts.append(("cache", f"{hits}; not in the charts below: they took no time"))
    if report.images[1]:
        facts.append(("images", images_text(report)))
    parts = [
        '<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>',
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>',
        f"<title>batchrun report: {escape(runs)}</title><style>{CSS}</style></head><body>",
        f"<h1>batchrun report</h1><table>{''.join(_row(k, v) for k, v in facts)}</table>",
        "<h2>Rows per second over time</h2>",
        line_chart(report.series, report.active_s, u.response_cache_rows),
        "<h2>Latency</h2>",
        histogram(report.latencies, cached=u.response_cache_rows),
        "<h2>Cost by model</h2>",
        cost_charts(report),
        _price_notes(report),
        "<h2>Failures by code</h2>",
        bar_chart(sorted(report.usage.failures_by_code.items(), key=lambda kv: -kv[1])),
        "</body></html>\n",
    ]
    return "".join(parts)


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Ticks from 0 past `top` in steps of 1, 2 or 5 times a power of ten: the last tick is the axis end."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def _tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


class Plot:
    """An x/y plot area inside the SVG's margins, with axes, ticks, gridlines and axis titles."""

    def __init__(self, x_top: float, y_top: float, x_title: str, y_title: str, top: int = TOP) -> None:
        self.xs, self.ys = nice_ticks(x_top), nice_ticks(y_top)
        self.top = top  # room above the plot for marker labels
        self.height = HEIGHT + top - TOP
        self.w, self.h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
        self.x_title, self.y_title = x_title, y_title

    def x(self, value: float) -> float:
        return LEFT + value / self.xs[-1] * self.w

    def y(self, value: float) -> float:
        return self.top + self.h - value / self.ys[-1] * self.h

    def frame(self) -> str:
        bottom = self.top + self.h
        out = []
        for v in self.ys:
            out.append(
                f'<line x1="{LEFT}" y1="{self.y(v):.1f}" x2="{LEFT + self.w}" y2="{self.y(v):.1f}" stroke="{GRID}"/>'
            )
            out.append(f'<text x="{LEFT - 6}" y="{self.y(v) + 4:.1f}" text-anchor="end">{_tick(v)}</text>')
        for v in self.xs:
            out.append(
                f'<line x1="{self.x(v):.1f}" y1="{bottom}" x2="{self.x(v):.1f}" y2="{bottom + 4}" stroke="{AXIS}"/>'
            )
            out.append(f'<text x="{self.x(v):.1f}" y="{bottom + 16}" text-anchor="middle">{_tick(v)}</text>')
        out.append(f'<line x1="{LEFT}" y1="{bottom}" x2="{LEFT + self.w}" y2="{bottom}" stroke="{AXIS}"/>')
        out.append(f'<line x1="{LEFT}" y1="{self.top}" x2="{LEFT}" y2="{bottom}" stroke="{AXIS}"/>')
        out.append(
            f'<text class="title" x="{LEFT + self.w / 2:.1f}" y="{self.height - 8}" text-anchor="middle">'
            f"{escape(self.x_title)}</text>"
        )
        cy = self.top + self.h / 2
        out.append(
            f'<text class="title" x="14" y="{cy:.1f}" text-anchor="middle" transform="rotate(-90 14 {cy:.1f})">'
            f"{escape(self.y_title)}</text>"
        )
        return "".join(out)

    def marker(self, at: float, label: str, row: int = 0) -> str:
        """A dashed vertical line across the plot, labelled at its top (`row` staggers labels close together)."""
        x = self.x(at)
        right = x > LEFT + 0.75 * self.w  # near the right edge the label reads leftwards, inside the chart
        anchor = f'x="{x - 3:.1f}" text-anchor="end"' if right else f'x="{x + 3:.1f}"'
        return (
            f'<line x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" y2="{self.top + self.h}" stroke="{MARK}" '
            f'stroke-dasharray="4 3"/><text {anchor} y="{self.top - 6 - 11 * row:.1f}" style="fill:{MARK}">'
            f"{escape(label)}</text>"
        )


def _svg(body: str, height: int, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" preserveAspectRatio="xMinYMin meet" '
        f'role="img" aria-label="{escape(label)}">{body}</svg>'
    )


def _empty(text: str) -> str:
    return f'<p class="muted">{escape(text)}</p>'


def line_chart(series: RateSeries, active_s: float = 0.0, cached: int = 0) -> str:
    """Rows/s over active time, of the rows asked (`cached` rows came from the response cache at once, and would
    draw a spike at the start). The x axis runs to the table's active time (it counts each session from its start,
    before the first answer); each later session's start is marked, with no fall to zero for the pause."""
    points = series.points
    if len(points) < 2:
        if cached and not points:
            return _empty(f"no rows to draw: {cached:,} rows came from the response cache, which took no time")
        return _empty("too few completions to draw")
    x_top = max(series.span, active_s)
    plot = Plot(x_top, max(v for _, v in points), "active time (s), idle time between sessions left out", "rows/s")
    cuts = [0.0, *series.breaks, math.inf]
    lines = []
    counts = series.rows or [0] * len(points)
    for session, (start, end) in enumerate(itertools.pairwise(cuts), 1):
        segment = [(t, v, n) for (t, v), n in zip(points, counts, strict=True) if start <= t < end]
        if segment:
            coords = " ".join(f"{plot.x(t):.1f},{plot.y(v):.1f}" for t, v, _ in segment)
            rows = sum(n for _, _, n in segment)
            lines.append(
                f'<polyline points="{coords}" fill="none" stroke="{BAR}" stroke-width="2">'
                f"<title>session {session}: {rows:,} rows asked</title></polyline>"
            )
    marks = "".join(plot.marker(at, f"session {i + 2}") for i, at in enumerate(series.breaks))
    chart = _svg(plot.frame() + "".join(lines) + marks, plot.height, "rows per second over time")
    if cached:
        chart += _empty(f"{cached:,} rows from the response cache are left out: they took no time")
    return chart


def histogram(latencies: list[tuple[float, int]], bins: int = 30, cached: int = 0) -> str:
    """Latencies ((value, rows), ordered) in equal bins up to the 99th percentile, slower ones in the last bin;
    p50, p90 and p99 marked. Rows from the response cache (`cached`) have none: they were not asked."""
    if not latencies:
        return _empty(
            f"no latencies recorded: {cached:,} rows came from the response cache, without a request"
            if cached
            else "no latencies recorded"
        )
    top = percentile(latencies, 0.99) or latencies[-1][0] or 1.0
    width = top / bins
    counts = [0] * bins
    for x, n in latencies:
        counts[min(bins - 1, int(x / width) if width > 0 else 0)] += n
    plot = Plot(top, max(counts) or 1, "latency (s); slower than p99 in the last bar", "rows", top=TOP + 22)
    bar_w = plot.w * (width / plot.xs[-1])
    bars = "".join(
        f'<rect x="{plot.x(i * width) + 0.5:.1f}" y="{plot.y(c):.1f}" width="{max(bar_w - 1, 1):.1f}" '
        f'height="{plot.y(0) - plot.y(c):.1f}" fill="{BAR}"><title>{i * width:.3f}-{(i + 1) * width:.3f} s: {c:,} rows'
        "</title></rect>"
        for i, c in enumerate(counts)
        if c
    )
    marks = "".join(
        plot.marker(value, f"{name} {latency_text(value)}", row)
        for row, (name, q) in enumerate((("p50", 0.5), ("p90", 0.9), ("p99", 0.99)))
        if (value := percentile(latencies, q)) is not None
    )
    return _svg(plot.frame() + bars + marks, plot.height, "latency histogram")


def cost_charts(report: Report) -> str:
    """One chart per currency: CNY and USD are never drawn on one scale."""
    by_currency: dict[str, list[tuple[str, float]]] = {}
    for m in report.models:
        if m.price is not None and m.cost is not None:
            by_currency.setdefault(m.price.currency, []).append((m.model, m.cost))
    if not by_currency:
        return _empty("no priced tokens")
    return "".join(
        f"<h3>{escape(currency)}</h3>"
        + _bars(sorted(items, key=lambda kv: -kv[1]), f"cost ({currency})", _in(currency))
        for currency, items in sorted(by_currency.items())
    )


def _in(currency: str) -> Callable[[float], str]:
    return lambda value: money(value, currency)


def bar_chart(items: list[tuple[str, int]]) -> str:
    if not items:
        return _empty("no failures")
    return _bars([(name, float(v)) for name, v in items], "rows", lambda v: f"{v:,.0f}")


def _bars(items: list[tuple[str, float]], x_title: str, label: Callable[[float], str]) -> str:
    """Horizontal bars with a value axis below: name on the left, the value at the bar's end."""
    step, left = 24, 190
    height = step * len(items) + 52
    ticks = nice_ticks(max(v for _, v in items))
    w = WIDTH - left - 110
    bottom = step * len(items) + 8

    def x(v: float) -> float:
        return left + v / ticks[-1] * w

    out = []
    for v in ticks:
        out.append(f'<line x1="{x(v):.1f}" y1="4" x2="{x(v):.1f}" y2="{bottom}" stroke="{GRID}"/>')
        out.append(f'<text x="{x(v):.1f}" y="{bottom + 14}" text-anchor="middle">{_tick(v)}</text>')
    out.append(f'<line x1="{left}" y1="{bottom}" x2="{left + w}" y2="{bottom}" stroke="{AXIS}"/>')
    for i, (name, value) in enumerate(items):
        y = i * step + 8
        out.append(f'<text x="{left - 8}" y="{y + 12}" text-anchor="end">{escape(name[:30])}</text>')
        out.append(
            f'<rect x="{left}" y="{y + 2}" width="{max(x(value) - left, 1 if value else 0):.1f}" height="{step - 8}" '
            f'fill="{BAR}"/><text x="{x(value) + 6:.1f}" y="{y + 12}">{escape(label(value))}</text>'
        )
    out.append(
        f'<text class="title" x="{left + w / 2:.1f}" y="{height - 6}" text-anchor="middle">{escape(x_title)}</text>'
    )
    return _svg("".join(out), height, x_title)


def _row(key: str, value: str) -> str:
    return f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>"


def _price_notes(report: Report) -> str:
    notes = [f"{m.model}: {m.price.describe()}" for m in report.models if m.price is not None]
    notes += [f"{name}: no price (unknown, not zero)" for name in report.unpriced]
    return "".join(f'<p class="muted">{escape(n)}</p>' for n in notes)
