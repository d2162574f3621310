"""`batchrun status`: a live or stopped run at a glance, cheap enough to run in a loop (`watch batchrun status`).

It reads usage.json and the manifest, and only the record lines written since usage.json was saved."""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..engine.shards import cut_text, read_shards
from ..limits.binding import limit_line
from ..records import iso_epoch
from ..spec.pricing import Price, Prices, spent_text
from ..store.rerun import from_manifest
from ..store.rundir import BATCHES, MANIFEST, USAGE, complete_lines, read_json
from ..store.usage import cached, cached_text, outputs, outputs_line, tokens_of_which
from .report import read_run


def status_json(path: Path, prices: Mapping[str, Price] | None = None) -> dict[str, Any]:
    """A run's state and progress for scripts (`status --json`); `status_lines` prints the same facts."""
    run = read_run(path, records=False)
    table = Prices(run.prices | dict(prices or {}), run.batch_share, run.cache_share)
    saved = read_json(path / USAGE) or {}
    u = run.usage
    costs, unpriced = table.spent(u.models, u.slots)
    live_rate = run.rate if run.live and run.rate else None
    asked = max(0, run.rows_done - u.response_cache_rows)
    return {
        "run_dir": str(path),
        "state": run.state,
        "live": run.live,
        "reason": run.reason,
        "rows_total": run.rows_total,
        "rows_done": run.rows_done,
        "rows_succeeded": u.rows_succeeded,
        "rows_failed": u.rows_failed,
        "rows_pending": run.rows_pending,
        "rate_rows_per_s": live_rate,
        "eta_s": run.rows_pending / live_rate if live_rate else None,
        "active_s": run.active_s,
        # of the rows asked: rows from the response cache took no time (`cached` counts them)
        "average_rows_per_s": asked / run.active_s if run.active_s and asked else None,
        "requests": u.requests,
        "retries": u.retries,
        "repairs": u.repairs,
        "rate_limited": u.rate_limited,
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "reasoning_tokens": u.reasoning_tokens,  # of the completion tokens: the chain of thought
        "cached_prompt_tokens": u.cached_prompt_tokens,  # of the prompt tokens: the provider's prompt cache's
        "cost": costs,
        "unpriced_models": unpriced,
        "failures_by_code": dict(u.failures_by_code),
        "outputs": outputs(u.models),
        "cached": dict(zip(("rows", "saved"), cached(u.models, table), strict=True)),
        "updated_at": run.updated_at,
        "updated_s_ago": _age(run.updated_at),
        "batches": _batches(path),
        "bound_by": limit_line(saved),
        # schedule.avoid_peak: the run holds for the cheap window (why, and until when)
        "holding": saved.get("holding") if run.live and isinstance(saved.get("holding"), str) else None,
        "warnings": run.warnings,
        "resume_command": resume_command(path)
        if run.state in ("died", "interrupted", "stopped") and run.rows_pending
        else None,
    }


def status_lines(path: Path, prices: Mapping[str, Price] | None = None) -> list[str]:
    """A live or stopped run at a glance, cheap enough to run in a loop (`watch batchrun status DIR`)."""
    st = status_json(path, prices)
    state = st["state"] + (" (a batchrun process is running it)" if st["live"] else "")
    lines = [
        f"{path}: {state}",
        f"  rows     {st['rows_done']:,} of {st['rows_total']:,} done: {st['rows_succeeded']:,} succeeded, "
        f"{st['rows_failed']:,} failed, {st['rows_pending']:,} pending",
    ]
    if st["rate_rows_per_s"]:
        eta = st["eta_s"]
        lines.append(
            f"  rate     {st['rate_rows_per_s']:,.1f} rows/s" + (f", about {_duration(eta)} to go" if eta else "")
        )
    elif st["average_rows_per_s"]:
        lines.append(
            f"  rate     {st['average_rows_per_s']:,.1f} rows/s on average over {_duration(st['active_s'])} active"
        )
    lines.append(
        f"  tokens   {st['prompt_tokens']:,} prompt + {st['completion_tokens']:,} completion"
        + tokens_of_which(st["reasoning_tokens"], st["cached_prompt_tokens"])
        + "; cost so far "
        + spent_text(st["cost"], st["unpriced_models"])
    )
    if st["failures_by_code"]:
        top = sorted(st["failures_by_code"].items(), key=lambda kv: -kv[1])[:5]
        lines.append("  failures " + ", ".join(f"{c} ×{n}" for c, n in top))
    if (shaped := outputs_line(st["outputs"])) is not None:
        lines.append(f"  output   {shaped}")
    if (hits := cached_text(st["cached"]["rows"], st["cached"]["saved"])) is not None:
        lines.append(f"  cache    {hits}")
    if st["updated_s_ago"] is not None:
        lines.append(f"  updated  {_duration(st['updated_s_ago'])} ago")
    if st["bound_by"]:
        lines.append(f"  bound by {st['bound_by']}" + (" (so far)" if st["live"] else ""))
    if st["holding"]:
        lines.append(f"  holding  {st['holding']} (schedule.avoid_peak)")
    if st["state"] == "stopped" and st["reason"]:
        lines.append(f"  stopped  {st['reason']}")
    batches = st["batches"]
    for shard in batches[-MAX_BATCHES_SHOWN:]:
        counts = f"{shard['completed']:,}/{shard['lines']:,} done" + (
            f", {shard['failed']:,} failed" if shard["failed"] else ""
        )
        lines.append(
            f"  batch    shard {shard['shard']}: {shard['batch_id'] or '(not created yet)'} "
            f"{shard['status'] or shard['step']}, {counts}"
            + (f"; cut {cut_text(shard['cut'], None, shard['lines'])}" if shard["cut"] else "")
        )
    if len(batches) > MAX_BATCHES_SHOWN:
        lines.append(f"  batch    ... and {len(batches) - MAX_BATCHES_SHOWN} earlier shard(s); status --json lists all")
    lines += [f"  warning  {line}" for line in st["warnings"]]
    if st["resume_command"]:
        lines.append(f"  resume with: {st['resume_command']}")
    return lines


MAX_BATCHES_SHOWN = 8


def resume_command(path: Path) -> str:
    """What resumes this run directory, as its submit said it (its manifest keeps what the hint needs)."""
    rerun = from_manifest(read_json(path / MANIFEST) or {}, path)
    return rerun.text() if rerun is not None else f"batchrun submit JOB.yaml --output-dir {shlex.quote(str(path))}"


def _batches(path: Path) -> list[dict[str, Any]]:
    """The batch lane's shards: each one's batch, status and counts as last polled."""
    shards = read_shards(line for _, line in complete_lines(path / BATCHES))
    return [
        {
            "shard": s.index,
            "batch_id": s.batch_id,
            "file_id": s.file_id,
            "status": s.status,
            "step": s.next_step,
            "lines": s.lines,
            "cut": s.cut,  # what closed the shard: lines, bytes, model, end (None: an older run's)
            "completed": s.counts.get("completed", 0),
            "failed": s.counts.get("failed", 0),
        }
        for s in sorted(shards.values(), key=lambda s: s.index)
    ]


def _age(iso: str | None) -> float | None:
    if not iso:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, time.time() - iso_epoch(iso))
    return None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min" if hours else f"{m} min {s:02d} s"
