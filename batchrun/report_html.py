"""`batchrun report --html`: one self-contained page (inline SVG and CSS, no scripts, no network).

Charts: rows/s over time, the latency histogram, cost by model and failures by code. The page is well-formed
XML as well as HTML, so tests can parse it and any browser renders it offline.
"""

from __future__ import annotations

from html import escape

from .pricing import money
from .report import Report, _seconds, percentile

WIDTH, HEIGHT, PAD = 640, 220, 44
BAR = "#3b6fb6"
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "Noto Sans CJK SC", sans-serif; margin: 2em auto;
       max-width: 60em; color: #1d2330; padding: 0 1em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
table { border-collapse: collapse; } td, th { padding: .2em .8em; border-bottom: 1px solid #dde; }
th { text-align: left; font-weight: 600; } .muted { color: #667; }
svg { display: block; margin: .5em 0; } svg text { font-size: 11px; fill: #334; }
"""


def render_html(report: Report) -> str:
    u = report.usage
    rate = report.rows_per_s
    runs = ", ".join(f"{r.path.name} ({r.state})" for r in report.runs)
    facts = [
        ("runs", runs),
        (
            "rows",
            f"{u.rows_succeeded:,} succeeded, {u.rows_failed:,} failed, {report.rows_pending:,} pending of "
            f"{report.rows_total:,}",
        ),
        ("requests", f"{u.requests:,} (retries {u.retries:,}, 429s {u.rate_limited:,})"),
        ("tokens", f"{u.prompt_tokens:,} prompt + {u.completion_tokens:,} completion"),
        ("throughput", f"{rate:,.1f} rows/s over {report.active_s:,.1f} s active" if rate else "-"),
        ("latency", "   ".join(f"{k} {_seconds(v)}" for k, v in report.latency.items())),
        ("cost", ", ".join(money(v, c) for c, v in sorted(report.totals().items())) or "no priced tokens"),
    ]
    parts = [
        '<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head><meta charset="utf-8"/>',
        f"<title>batchrun report: {escape(runs)}</title><style>{CSS}</style></head><body>",
        f"<h1>batchrun report</h1><table>{''.join(_row(k, v) for k, v in facts)}</table>",
        "<h2>Rows per second over time</h2>",
        line_chart(report.series),
        "<h2>Latency</h2>",
        histogram(report.latencies),
        "<h2>Cost by model</h2>",
        cost_chart(report),
        _price_notes(report),
        "<h2>Failures by code</h2>",
        bar_chart(sorted(report.usage.failures_by_code.items(), key=lambda kv: -kv[1]), empty="no failures"),
        "</body></html>\n",
    ]
    return "".join(parts)


def _row(key: str, value: str) -> str:
    return f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>"


def _svg(body: str, height: int = HEIGHT, label: str = "") -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(label)}">{body}</svg>'
    )


def _empty(text: str) -> str:
    return f'<p class="muted">{escape(text)}</p>'


def line_chart(series: list[tuple[float, float]]) -> str:
    if len(series) < 2:
        return _empty("too few completions to draw")
    x_max = max(t for t, _ in series) or 1.0
    y_max = max(v for _, v in series) or 1.0
    w, h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def xy(t: float, v: float) -> str:
        return f"{PAD + t / x_max * w:.1f},{HEIGHT - PAD - v / y_max * h:.1f}"

    points = " ".join(xy(t, v) for t, v in series)
    body = (
        _axes(f"{y_max:,.1f} rows/s", f"{x_max:,.0f} s of activity")
        + f'<polyline points="{points}" fill="none" stroke="{BAR}" stroke-width="2"/>'
    )
    return _svg(body, label="rows per second over time")


def histogram(latencies: list[tuple[float, int]], bins: int = 30) -> str:
    """Latencies ((value, rows), ordered) in equal bins up to the 99th percentile; slower ones in the last bin."""
    if not latencies:
        return _empty("no latencies recorded")
    top = percentile(latencies, 0.99) or latencies[-1][0] or 1.0
    width = top / bins
    counts = [0] * bins
    for x, n in latencies:
        counts[min(bins - 1, int(x / width) if width > 0 else 0)] += n
    peak = max(counts) or 1
    w, h = (WIDTH - 2 * PAD) / bins, HEIGHT - 2 * PAD
    bars = "".join(
        f'<rect x="{PAD + i * w + 1:.1f}" y="{HEIGHT - PAD - c / peak * h:.1f}" width="{max(w - 2, 1):.1f}" '
        f'height="{c / peak * h:.1f}" fill="{BAR}"><title>{i * width:.2f}-{(i + 1) * width:.2f} s: {c}</title></rect>'
        for i, c in enumerate(counts)
    )
    return _svg(_axes(f"{peak:,} rows", f"{top:.2f} s (p99; slower in the last bar)") + bars, label="latency histogram")


def cost_chart(report: Report) -> str:
    items = [(f"{m.model}", m.cost, m.price.currency if m.price else "") for m in report.models]
    if not items:
        return _empty("no models")
    peaks: dict[str, float] = {}
    for _, cost, cur in items:
        if cost is not None:
            peaks[cur] = max(peaks.get(cur, 0.0), cost)
    rows = []
    for name, cost, cur in items:
        share = 0.0 if cost is None or not peaks.get(cur) else cost / peaks[cur]
        rows.append((name, share, money(cost, cur)))
    return _bars(rows, "cost by model")


def bar_chart(items: list[tuple[str, int]], empty: str) -> str:
    if not items:
        return _empty(empty)
    peak = max(v for _, v in items) or 1
    return _bars([(name, v / peak, f"{v:,}") for name, v in items], "failures by code")


def _bars(rows: list[tuple[str, float, str]], label: str) -> str:
    step, left = 22, 200
    height = step * len(rows) + 10
    w = WIDTH - left - 140
    body = "".join(
        f'<text x="{left - 8}" y="{i * step + 16}" text-anchor="end">{escape(name[:32])}</text>'
        f'<rect x="{left}" y="{i * step + 4}" width="{max(share * w, 1 if share else 0):.1f}" height="{step - 8}" '
        f'fill="{BAR}"/><text x="{left + share * w + 6:.1f}" y="{i * step + 16}">{escape(text)}</text>'
        for i, (name, share, text) in enumerate(rows)
    )
    return _svg(body, height, label)


def _axes(y_label: str, x_label: str) -> str:
    x0, y0, x1, y1 = PAD, HEIGHT - PAD, WIDTH - PAD, PAD
    return (
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#889"/>'
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#889"/>'
        f'<text x="{x0}" y="{y1 - 8}">{escape(y_label)}</text>'
        f'<text x="{x1}" y="{y0 + 16}" text-anchor="end">{escape(x_label)}</text>'
        f'<text x="{x0}" y="{y0 + 16}">0</text>'
    )


def _price_notes(report: Report) -> str:
    notes = [f"{m.model}: {m.price.describe()}" for m in report.models if m.price is not None]
    notes += [f"{name}: no price (unknown, not zero)" for name in report.unpriced]
    return "".join(f'<p class="muted">{escape(n)}</p>' for n in notes)
