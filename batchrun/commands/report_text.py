"""`batchrun report` shown as a table for a person, as JSON or as CSV: only how a `Report` is put, never what is in
it (that is `report`'s, and the HTML page is `report_html`'s).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from ..spec.pricing import money
from ..store.usage import ModelUsage, cached, cached_line, outputs, outputs_line, tokens_of_which
from .report import Report, provider_cache_text


def latency_text(value: float | None) -> str:
    """A latency as both reports show it (the table and the HTML page): milliseconds while they matter."""
    return "-" if value is None else f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def requests_text(report: Report) -> str:
    """`1,234 (retries 12, repairs 30, 429s 3)`: retries follow a transient error or a 429, repairs an answer that
    did not fit the schema; both reports show it so."""
    u = report.usage
    return (
        f"{u.requests:,} (retries {u.retries:,}"
        + (f", repairs {u.repairs:,}" if u.repairs else "")
        + f", 429s {u.rate_limited:,}"
        + (f", polls {u.polls:,}" if u.polls else "")
        + ")"
    )


def throughput_text(report: Report) -> str:
    """Rows/s of the rows asked; rows the response cache answered took no time, and are named apart."""
    rate, cached = report.rows_per_s, report.usage.response_cache_rows
    text = f"{rate:,.1f} rows/s over {report.active_s:,.1f} s active" if rate else "-"
    if cached:
        text += (
            f" ({cached:,} rows from the response cache left out)"
            if rate
            else f" (all {cached:,} rows from the response cache)"
        )
    return text


def images_text(report: Report) -> str:
    rows, images = report.images
    return f"{images:,} image{'s' if images != 1 else ''} in {rows:,} row{'s' if rows != 1 else ''}"


def report_table(report: Report) -> list[str]:
    u = report.usage
    names = ", ".join(f"{r.path} ({r.state})" for r in report.runs)
    lat = report.latency
    lines = [
        f"report: {names}",
        f"  rows        {u.rows_succeeded:,} succeeded, {u.rows_failed:,} failed, {report.rows_pending:,} pending "
        f"of {report.rows_total:,}",
        f"  requests    {requests_text(report)}",
        f"  tokens      {u.prompt_tokens:,} prompt + {u.completion_tokens:,} completion = {u.total_tokens:,}"
        + tokens_of_which(u.reasoning_tokens, u.cached_prompt_tokens),
        *([f"  images      {images_text(report)}"] if report.images[1] else []),
        f"  throughput  {throughput_text(report)}",
        "  latency     " + "   ".join(f"{k} {latency_text(lat[k])}" for k in ("p50", "p90", "p99")),
        f"  lane        {report.lane}"
        + (f"; saved {', '.join(money(v, c) for c, v in sorted(report.saved.items()))}" if report.saved else ""),
        "",
    ]
    header = ("model", "rows ok", "failed", "requests", "prompt tok", "compl. tok", "price (in / out per 1M)", "cost")
    body = [
        (
            m.model,
            f"{m.rows_succeeded:,}",
            f"{m.rows_failed:,}",
            f"{m.requests:,}",
            f"{m.prompt_tokens:,}",
            f"{m.completion_tokens:,}",
            f"{m.price.input:g} / {m.price.output:g} {m.price.currency}" if m.price else "no price",
            money(m.cost, m.price.currency if m.price else ""),
        )
        for m in report.models
    ]
    totals = report.totals()
    for currency, amount in sorted(totals.items()):
        body.append(("total", "", "", "", "", "", "", money(amount, currency)))
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    for row in (header, *body):
        lines.append(
            "  "
            + "  ".join(
                c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    for m in report.models:
        if m.price is not None:
            lines.append(f"  price of {m.model}: {m.price.source}")
    if report.unpriced:
        lines.append(
            f"  no price for {', '.join(report.unpriced)}: their cost is unknown, not zero; add them "
            "with --prices FILE or a pricing: block in the job spec"
        )
    provider = provider_cache_text(report)
    if (hits := cached_line(u.models, report.prices)) is not None or provider is not None:
        lines.append("")
    if provider is not None:
        lines.append(f"  prompt cache {provider}")
    if hits is not None:
        lines.append(f"  cache       {hits}")
    shaped = [(name, outputs({name: m})) for name, m in sorted(u.models.items())]
    if any(outputs_line(counts) for _, counts in shaped):
        lines.append("")
        lines.append("  structured output (rows that fit the schema)")
        for name, counts in shaped:
            if (line := outputs_line(counts)) is not None:
                lines.append(f"    {name}: {line}")
    if u.keys:
        lines.append("")
        lines.append("  by key (the variable holding it)")
        for env, k in sorted(u.keys.items()):
            lines.append(
                f"    ${env:<28} {k['rows_succeeded']:,} rows ok, {k['rows_failed']:,} failed, {k['requests']:,} "
                f"requests, {k['prompt_tokens']:,} + {k['completion_tokens']:,} tokens"
            )
    if u.failures_by_code:
        lines.append("")
        lines.append("  failures by code")
        for code, n in sorted(u.failures_by_code.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {code:<32} {n:,}")
    return lines


def report_json(report: Report) -> dict[str, Any]:
    u = report.usage
    return {
        "runs": [{"path": str(r.path), "state": r.state, "rows_total": r.rows_total} for r in report.runs],
        "rows_total": report.rows_total,
        "lane": report.lane,
        "batch_share": report.batch_share,
        "saved": report.saved,
        "rows_succeeded": u.rows_succeeded,
        "rows_failed": u.rows_failed,
        "rows_pending": report.rows_pending,
        "requests": u.requests,
        "retries": u.retries,
        "repairs": u.repairs,
        "rate_limited": u.rate_limited,
        "polls": u.polls,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "reasoning_tokens": u.reasoning_tokens,
        "cached_prompt_tokens": u.cached_prompt_tokens,
        "active_s": round(report.active_s, 3),
        "rows_cached": u.response_cache_rows,
        "image_rows": report.images[0],
        "images": report.images[1],
        "rows_per_s": None if report.rows_per_s is None else round(report.rows_per_s, 3),
        "latency_s": report.latency,
        "models": [
            {
                "model": m.model,
                "rows_succeeded": m.rows_succeeded,
                "rows_failed": m.rows_failed,
                "requests": m.requests,
                "prompt_tokens": m.prompt_tokens,
                "completion_tokens": m.completion_tokens,
                **thought_and_cached(u.models.get(m.model)),
                "price": None if m.price is None else m.price.as_dict(),
                "cost": m.cost,
                "provider_cache_saved": m.provider_cache_saved,
                "currency": m.price.currency if m.price else None,
                "outputs": outputs({m.model: u.models[m.model]}) if m.model in u.models else None,
            }
            for m in report.models
        ],
        "cost": report.totals(),
        "unpriced_models": report.unpriced,
        "failures_by_code": dict(sorted(u.failures_by_code.items())),
        "cache": dict(zip(("rows", "saved"), cached(u.models, report.prices), strict=True)),
        "provider_cache_saved": report.provider_cache_saved,
        "keys": {env: dict(k) for env, k in sorted(u.keys.items())},
    }


def thought_and_cached(m: ModelUsage | None) -> dict[str, int]:
    """A model's reasoning and provider-cached prompt tokens, with their Batch API parts and the completion
    tokens of answers that reasoned (what a thinking-output price applies to)."""
    names = ("reasoning_tokens", "cached_prompt_tokens", "thinking_completion_tokens")
    return {
        **{name: getattr(m, name) if m else 0 for name in names},
        **{f"batch_{name}": getattr(m, f"batch_{name}") if m else 0 for name in names},
    }


def report_csv(report: Report) -> str:
    """One line per model, then one total line per currency."""
    u = report.usage
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        [
            "model",
            "rows_succeeded",
            "rows_failed",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "input_price_per_1m",
            "output_price_per_1m",
            "currency",
            "cost",
            "price_source",
            "repairs",
            "rows_cached",
            "reasoning_tokens",
            "cached_prompt_tokens",
        ]
    )
    for m in report.models:
        p = m.price
        writer.writerow(
            [
                m.model,
                m.rows_succeeded,
                m.rows_failed,
                m.requests,
                m.prompt_tokens,
                m.completion_tokens,
                "" if p is None else p.input,
                "" if p is None else p.output,
                "" if p is None else p.currency,
                "" if m.cost is None else round(m.cost, 6),
                "no price" if p is None else p.source,
                u.models[m.model].repairs if m.model in u.models else 0,
                u.models[m.model].response_cache_rows if m.model in u.models else 0,
                u.models[m.model].reasoning_tokens if m.model in u.models else 0,
                u.models[m.model].cached_prompt_tokens if m.model in u.models else 0,
            ]
        )
    for currency, amount in sorted(report.totals().items()):
        writer.writerow(["TOTAL", "", "", "", "", "", "", "", currency, round(amount, 6), "", "", "", "", ""])
    return out.getvalue()
