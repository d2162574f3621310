"""The run's ledger: which rows hold a final record, the records themselves, and the usage they add up to,
kept current in usage.json. Every final record of every lane is written here, and only here."""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from ..errors import CheckpointWriteError
from ..lanes import Row
from ..limits.budget import Budget
from ..providers.transport import Reply
from ..records import NO_OUTPUT, Record, Response, error, now_iso, record, record_row, response
from ..retry import Decision
from ..rows.ids import DUPLICATE_ID, repeated_ids
from ..rows.request import BadRow, Request
from ..spec.pricing import Prices
from ..store.cache import Cache
from ..store.checkpoint import Checkpoint
from ..store.resume import ResumeState
from ..store.rundir import RunState
from ..store.usage import peak_rss_mb
from .job import Prepared
from .progress import Progress
from .repairs import Repairs

RATE_WINDOW_S = 30.0


class Ledger:
    def __init__(
        self,
        prepared: Prepared,
        checkpoint: Checkpoint,
        state: ResumeState,
        progress: Progress,
        cache: Cache | None = None,
    ) -> None:
        self.spec, self.prepared, self.checkpoint, self.state, self.progress = (
            prepared.spec,
            prepared,
            checkpoint,
            state,
            progress,
        )
        self.usage = state.usage
        progress.usage = self.usage  # the bar's 429 and retry counts are these totals, as the summary's are
        self.started_at, self.t0 = now_iso(), time.monotonic()
        self.rate_samples: deque[tuple[float, int]] = deque([(self.t0, state.done.count)])
        output = self.spec.output
        self.repairs = Repairs(output, self.spec.params, checkpoint, state.repairs) if output is not None else None
        self.cache = cache
        provider = self.spec.provider
        budget = self.spec.limits.max_cost
        prices = Prices.of(self.spec.pricing, provider.name, provider.batch_price_share)
        self.budget = (
            Budget(
                budget,
                prices,
                lambda: prices.spent(self.usage.models, self.usage.slots)[0],
                batch=self.spec.provider.mode in ("batch", "batch-chat"),
                # a job that turns thinking off holds its answers at the plain output price
                thinking=self.spec.reasoning is None or self.spec.reasoning.thinking is not False,
                source=self.spec.called,
            )
            if budget
            else None
        )

    def record(
        self,
        row: Row,
        reply: Reply,
        decision: Decision | None,
        annotate: Callable[[Row, Record], None],
        *,
        part: Request | None = None,
        batch: dict[str, int] | None = None,
        output: Any = NO_OUTPUT,
        path: str | None = None,
    ) -> None:
        """The final record of `row` (or of one `part` of a shared request) from its last answer: with structured
        output, its parsed `output`, or the `path` of what did not fit."""
        req = part or row.request
        resp = None if reply.status is None else response(reply.status, reply.request_id, reply.body)
        err = None if decision is None else error(decision.code, decision.message, reply.status, row.attempts)
        if err is not None and path is not None:
            err["path"] = path
        rec = record(
            req.row,
            req.custom_id,
            req.model,
            resp,
            err,
            attempts=row.attempts,
            rate_limited=row.rate_limited,
            latency_s=round(reply.elapsed, 4),
            output=output,
        )
        if batch is not None:
            rec["batch"] = batch
        if req.images:  # each image's path or URL, bytes and digest: never its base64
            rec["images"] = list(req.images)
        if decision is None and resp is not None:
            self.remember(req.cache_key, req.model, resp, output)
        if row.member is not None and self.spec.provider.key_pool:
            rec["api_key_env"] = row.member.env  # which key of the pool answered: its variable, never the key
        if row.shared is not None:
            rec["shared_request"] = row.shared
        if row.retried_usage is not None and not (batch and batch["index"]):  # a shared request's: counted once
            rec["retried_usage"] = row.retried_usage
        annotate(row, rec)
        self.commit(rec, failed=decision is not None)

    def from_cache(self, request: Request) -> bool:
        """Record the row from the response cache, if it holds the answer to this question (costing nothing)."""
        if self.cache is None or request.cache_key is None:
            return False
        hit = self.cache.get(request.cache_key)
        if hit is None:
            return False
        output = hit.output if hit.has_output else NO_OUTPUT
        rec = record(request.row, request.custom_id, request.model, hit.response, None, attempts=0, output=output)
        rec["cached"] = True
        if request.images:
            rec["images"] = list(request.images)
        self.commit(rec, failed=False)
        return True

    def remember(self, key: bytes | None, model: str, resp: Response, output: Any = NO_OUTPUT) -> None:
        """Keep a good answer in the response cache for later runs."""
        if self.cache is not None and key is not None:
            self.cache.put(key, model, resp, output, has_output=output is not NO_OUTPUT)

    def record_bad(self, bad: BadRow) -> None:
        """A row that is never sent (it cannot become a request, or repeats an id)."""
        rec = record(bad.row, bad.custom_id, self.spec.model, None, error(bad.code, bad.message, None, 0), attempts=0)
        self.commit(rec, failed=True)

    def refuse_repeated_ids(self) -> None:
        """Before anything is sent: a row whose id an earlier row has gets a failure record and is never sent."""
        if self.checkpoint.manifest.get("ids_checked"):
            return
        try:
            for repeat in repeated_ids(self.spec.input, self.spec.output_dir):
                if repeat.row not in self.state.done:
                    self.record_bad(BadRow(repeat.row, repeat.custom_id, DUPLICATE_ID, repeat.message()))
        except (OSError, sqlite3.Error) as exc:  # the scratch table beside the records could not be written
            raise CheckpointWriteError(
                f"cannot check the input's ids for repeats in {self.spec.output_dir} ({exc}): free some space, then "
                "run the same command again"
            ) from None
        self.checkpoint.note(ids_checked=True)

    def commit(self, rec: Record, *, failed: bool) -> None:
        if self.repairs is not None and (steps := self.repairs.finish(rec["row"])):
            rec["repairs"] = steps
        self.checkpoint.append(rec, failed=failed)
        self._count(rec, failed)

    def commit_line(self, line: bytes, *, failed: bool) -> bool:
        """A final record a worker of a scaled-out run made: written, unless its row holds one already (a slice
        resumed after its worker died may answer a row whose record was on its way)."""
        row = record_row(line)
        if row is None or row in self.state.done:
            return False
        self.checkpoint.append_line(line, failed=failed)
        self.state.tasks.pop(row, None)
        self.state.repairs.pop(row, None)
        self._count(orjson.loads(line), failed)
        return True

    def _count(self, rec: Record, failed: bool) -> None:
        if self.budget is not None:
            self.budget.release(rec["row"])
        self.state.done.add(rec["row"])
        before = self.usage.total_tokens
        self.usage.add(rec)
        self.progress.row_done(failed=failed, tokens=self.usage.total_tokens - before)

    @property
    def pending(self) -> int:
        return max(0, self.prepared.scan.rows - self.state.done.count)

    def _recent_rate(self) -> float | None:
        """Rows finished per second over the last RATE_WINDOW_S, for `batchrun status` and its ETA."""
        now, done = time.monotonic(), self.state.done.count - self.usage.response_cache_rows  # the cache's take no time
        samples = self.rate_samples
        samples.append((now, done))
        while len(samples) > 2 and samples[0][0] < now - RATE_WINDOW_S:
            samples.popleft()
        (t0, d0), (t1, d1) = samples[0], samples[-1]
        return round((d1 - d0) / (t1 - t0), 3) if t1 - t0 >= 1.0 else None

    def flush(self, state: RunState, extra: dict[str, Any], *, final: bool = False) -> None:
        """usage.json: the totals, where the run is, and `extra` (what the throttle and the lane report)."""
        if self.cache is not None:
            self.cache.commit()
        prev = self.state.previous
        data: dict[str, Any] = {
            "job": self.spec.name,
            "state": state.value,
            "rows_total": self.prepared.scan.rows,
            "rows_pending": self.pending,
            **self.usage.totals(),
            "started_at": prev.get("started_at") or self.started_at,
            "updated_at": now_iso(),
            "finished_at": now_iso() if final and state.finished else None,
            "active_s": round(float(prev.get("active_s") or 0.0) + time.monotonic() - self.t0, 3),
            "sessions": int(prev.get("sessions") or 0) + 1,
            "rate_rows_per_s": self._recent_rate(),
            **extra,
            "peak_rss_mb": peak_rss_mb(),
        }
        self.checkpoint.write_usage(data)
