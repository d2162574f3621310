"""The run loop: rows in, final records out, resumably. A lane (online, or Zhipu's async tasks) sends each
attempt and says what its answer means; the loop admits rows under the limits, retries, stops and flushes.

One dispatcher takes rows (retries first, then the input), waits for a concurrency slot and the rate limits,
and starts one attempt each. Final records are written the moment a row is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .checkpoint import Checkpoint, ResumeState
from .errors import BatchrunError, FatalProviderError
from .ids import DUPLICATE_ID, repeated_ids
from .job import Prepared, api_key, display_path, prepare
from .lanes import Lane, Row
from .lanes.online import OnlineLane
from .lanes.tasks import TaskLane
from .limiter import Throttle, Ticket
from .presets import PRESETS
from .progress import Progress
from .providers import make_auth
from .records import Record, error, error_code, now_iso, record, response
from .request import BadRow, Request, batch
from .retry import Decision, Verdict, backoff_delay
from .rundir import RunState
from .sources import iter_rows
from .spec import JobSpec, SimulateSpec
from .transport import Reply, new_session
from .usage import Usage, peak_rss_mb

RATE_WINDOW_S = 30.0
STOP_GRACE_S = 5.0
FLUSH_EVERY_S = 1.0
EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_FAILED_ROWS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass
class RunOutcome:
    spec: JobSpec
    state: RunState
    exit_code: int
    rows_total: int
    rows_pending: int
    usage: Usage
    elapsed_s: float
    rows_this_session: int
    reason: str | None = None  # why the run stopped early
    tasks_pending: int = 0  # async: tasks submitted and still to be collected by a resumed run


class RunLoop:
    def __init__(self, prepared: Prepared, checkpoint: Checkpoint, state: ResumeState, base_url: str,
                 key: str | None, progress: Progress, log: Callable[[str], None]) -> None:
        spec = self.spec = prepared.spec
        self.started_at, self.t0, self.t_wall0 = now_iso(), time.monotonic(), time.time()
        self.prepared, self.checkpoint, self.state, self.progress, self.log = prepared, checkpoint, state, progress, log
        self.usage = state.usage
        self.errors = PRESETS[spec.provider.name].errors
        auth = make_auth(key, spec.provider.auth)
        self.lane: Lane = (TaskLane(self, base_url, auth, prepared.builder.build, self._record_bad)
                           if spec.provider.mode == "async" else OnlineLane(self, base_url, auth))
        # A submission holds no slot while its task runs: what an async provider's "too many in flight" counts
        # is unknown (running tasks, most likely, which limits.max_pending caps), so there it is a plain 429.
        in_flight_codes = self.errors.concurrency if spec.provider.mode != "async" else frozenset()
        self.throttle = Throttle(spec.limits, spec.limits.tpm_accounting, log, concurrency_codes=in_flight_codes)
        self.gate = self.throttle.gate
        self.ready: deque[Row] = deque()  # retries whose backoff is over
        self.backoffs: set[asyncio.TimerHandle] = set()
        self.attempts: set[asyncio.Future[None]] = set()  # attempts on the wire
        self._wake = asyncio.Event()
        self.stopping: RunState | None = None  # INTERRUPTED | STOPPED
        self.reason: str | None = None
        self.error: BatchrunError | None = None
        self.crash: Exception | None = None  # an unexpected exception, re-raised once the run is flushed
        self.interrupts = 0
        self.dispatcher: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self.rate_samples: deque[tuple[float, int]] = deque([(self.t0, state.done.count)])

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "the run has not started"
        return self._http

    # --- the run -------------------------------------------------------------------------------------

    async def run(self) -> None:
        self._http = new_session(self.throttle.concurrency.maximum + self.lane.connections)
        loops = [self._flush_loop(), self.throttle.tick_forever(), *self.lane.background()]
        background = [asyncio.ensure_future(loop) for loop in loops]
        self.dispatcher = asyncio.create_task(self._dispatch())
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await self.dispatcher
            if self.attempts:
                _, pending = await asyncio.wait(self.attempts, timeout=STOP_GRACE_S if self.interrupts < 2 else 0)
                for attempt in pending:
                    attempt.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for handle in self.backoffs:
                handle.cancel()
            for loop in background:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await self.http.close()

    async def _dispatch(self) -> None:
        rows = self._rows()
        exhausted = False
        while not self.stopping:
            if not self.lane.has_room(self.gate.inflight):
                await self._sleep()
                continue
            if self.ready:
                row = self.ready.popleft()
            elif not exhausted:
                nxt = next(rows, None)
                if nxt is None:
                    exhausted = True
                    continue
                if isinstance(nxt, BadRow):
                    self._record_bad(nxt)
                    if self.progress.failed % 256 == 0:
                        await asyncio.sleep(0)
                    continue
                row = Row(nxt)
            else:
                if self.gate.inflight == 0 and not self.backoffs and not self.lane.held:
                    return
                await self._sleep()
                continue
            ticket = await self.throttle.admit(row.request)
            attempt = asyncio.ensure_future(self._attempt(row, ticket))
            self.attempts.add(attempt)
            attempt.add_done_callback(self.attempts.discard)

    async def _sleep(self) -> None:
        self._wake.clear()
        await self._wake.wait()

    def wake(self) -> None:
        self._wake.set()

    def _rows(self) -> Iterator[Request | BadRow]:
        """The input's rows without a final record (nor a task held for them), embeddings rows alike batched."""
        build, done, skip_held = self.prepared.builder.build, self.state.done, self.lane.skip
        skip = (lambda row: row in done or skip_held(row)) if self.state.tasks else done.__contains__
        requests = (build(raw) for raw in iter_rows(self.spec.input, skip=skip))
        size = self.spec.limits.batch_size
        if size <= 1:
            yield from requests
            return
        alike: list[Request] = []  # consecutive embedding rows with the same model and parameters
        for request in requests:
            if alike and (not isinstance(request, Request) or request.group != alike[0].group
                          or len(alike) >= size):
                yield batch(alike)
                alike = []
            if isinstance(request, Request) and request.group is not None:
                alike.append(request)
            else:
                yield request
        if alike:
            yield batch(alike)

    async def _attempt(self, row: Row, ticket: Ticket) -> None:
        row.attempts += 1
        reply: Reply | None = None
        held = False
        try:
            reply = await self.lane.call(row.request)
            if reply.status == 429:
                row.rate_limited += 1
            self.progress.attempt(retried=row.attempts > 1, rate_limited=reply.status == 429)
            held = await self.lane.answer(row, reply, ticket)
        except BatchrunError as exc:  # the checkpoint could not be written: stop cleanly, resumable
            self.failed(exc)
        except Exception as exc:  # a bug: stop rather than leave this row silently unrecorded
            self.crashed(exc)
        finally:
            self.throttle.done(ticket, reply, settle=not held)
            self.wake()

    def decide(self, row: Row, reply: Reply, decision: Decision) -> None:
        """Act on a classified answer: record it, retry the row, or stop the run."""
        if decision.verdict is Verdict.OK:
            self.record(row, reply, None)
        elif decision.verdict is Verdict.STOP_RUN:
            self._fatal(decision, reply.status)
        elif decision.verdict is Verdict.RETRY and row.attempts < self.spec.retry.max_attempts:
            row.billed(reply)
            self.retry_later(row, decision)
        else:
            parts = row.request.parts
            for i, part in enumerate(parts):
                self.record(row, reply, decision, part=part, batch={"index": i, "size": len(parts)})
            if not parts:
                self.record(row, reply, decision)

    def retry_later(self, row: Row, decision: Decision, *, immediately: bool = False) -> None:
        retry = self.spec.retry
        delay = 0.0 if immediately else backoff_delay(row.attempts, base=retry.backoff_s, cap=retry.max_backoff_s,
                                                      retry_after=decision.retry_after, jitter=random.random())

        def ready() -> None:
            self.backoffs.discard(handle)
            self.ready.append(row)
            self.wake()

        handle = asyncio.get_running_loop().call_later(delay, ready)
        self.backoffs.add(handle)

    def send_again(self, rows: list[Row]) -> None:
        self.ready.extend(rows)

    # --- records -------------------------------------------------------------------------------------

    def record(self, row: Row, reply: Reply, decision: Decision | None, *, part: Request | None = None,
               batch: dict[str, int] | None = None) -> None:
        req = part or row.request
        resp = None if reply.status is None else response(reply.status, reply.request_id, reply.body)
        err = None if decision is None else error(decision.code, decision.message, reply.status, row.attempts)
        rec = record(req.row, req.custom_id, req.model, resp, err, attempts=row.attempts,
                     rate_limited=row.rate_limited, latency_s=round(reply.elapsed, 4))
        if batch is not None:
            rec["batch"] = batch
        if row.shared is not None:
            rec["shared_request"] = row.shared
        if row.retried_usage is not None:
            rec["retried_usage"] = row.retried_usage
        self.lane.annotate(row, rec)
        self._commit(rec, failed=decision is not None)

    def refuse_repeated_ids(self) -> None:
        """Before anything is sent: a row whose id an earlier row has gets a failure record and is never sent."""
        for repeat in repeated_ids(self.spec.input, self.spec.output_dir):
            if repeat.row not in self.state.done:
                self._record_bad(BadRow(repeat.row, repeat.custom_id, DUPLICATE_ID, repeat.message()))
        if not self.stopping:
            self.checkpoint.note(ids_checked=True)

    def _record_bad(self, bad: BadRow) -> None:
        rec = record(bad.row, bad.custom_id, self.spec.model, None, error(bad.code, bad.message, None, 0), attempts=0)
        try:
            self._commit(rec, failed=True)
        except BatchrunError as exc:
            self.failed(exc)

    def _commit(self, rec: Record, *, failed: bool) -> None:
        self.checkpoint.append(rec, failed=failed)
        self.state.done.add(rec["row"])
        before = self.usage.total_tokens
        self.usage.add(rec)
        self.progress.row_done(failed=failed, tokens=self.usage.total_tokens - before)

    # --- stopping ------------------------------------------------------------------------------------

    def failed(self, exc: BatchrunError) -> None:
        self.error = self.error or exc
        self.stop(RunState.STOPPED, str(exc))

    def crashed(self, exc: Exception) -> None:
        self.crash = self.crash or exc
        self.stop(RunState.STOPPED, f"internal error: {exc!r}")

    def _fatal(self, decision: Decision, status: int | None) -> None:
        if self.stopping is RunState.STOPPED:
            return
        env = self.spec.provider.api_key_env
        if status in (401, 403):
            why = f"the provider refused the key ({decision.message}); check ${env}"
        else:
            why = (f"the provider refused the account ({decision.code}: {decision.message}); top up or wait "
                   "for the quota to reset")
        self.error = FatalProviderError(why)
        self.stop(RunState.STOPPED, why)

    def stop(self, how: RunState, reason: str) -> None:
        if self.stopping is RunState.STOPPED or (self.stopping and how is RunState.INTERRUPTED):
            return
        self.stopping, self.reason = how, reason
        self.wake()
        if self.dispatcher is not None:
            self.dispatcher.cancel()

    def interrupt(self) -> None:
        """Ctrl-C / SIGTERM: stop taking rows and let in-flight requests finish; a second one cancels them."""
        self.interrupts += 1
        if self.interrupts == 1:
            self.log(f"stopping: waiting up to {STOP_GRACE_S:.0f} s for {self.gate.inflight} requests in flight "
                     "(Ctrl-C again to stop at once)")
            self.stop(RunState.INTERRUPTED, "interrupted")
        else:
            for attempt in self.attempts:
                attempt.cancel()

    # --- usage.json ----------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            self.progress.refresh()
            try:
                self.flush(RunState.RUNNING)
            except BatchrunError as exc:
                self.failed(exc)
                return

    def _recent_rate(self) -> float | None:
        """Rows finished per second over the last RATE_WINDOW_S, for `batchrun status` and its ETA."""
        now, done = time.monotonic(), self.state.done.count
        samples = self.rate_samples
        samples.append((now, done))
        while len(samples) > 2 and samples[0][0] < now - RATE_WINDOW_S:
            samples.popleft()
        (t0, d0), (t1, d1) = samples[0], samples[-1]
        return round((d1 - d0) / (t1 - t0), 3) if t1 - t0 >= 1.0 else None

    def flush(self, state: RunState, *, final: bool = False) -> None:
        prev = self.state.previous
        total = self.prepared.scan.rows
        data: dict[str, Any] = {
            "job": self.spec.name,
            "state": state.value,
            "rows_total": total,
            "rows_pending": max(0, total - self.state.done.count),
            **self.usage.totals(),
            "started_at": prev.get("started_at") or self.started_at,
            "updated_at": now_iso(),
            "finished_at": now_iso() if final and state.finished else None,
            "active_s": round(float(prev.get("active_s") or 0.0) + time.monotonic() - self.t0, 3),
            "sessions": int(prev.get("sessions") or 0) + 1,
            "rate_rows_per_s": self._recent_rate(),
            "throttle": self.throttle.snapshot(),
            **self.lane.totals(),
            "peak_rss_mb": peak_rss_mb(),
        }
        self.checkpoint.write_usage(data)


async def run_job(spec: JobSpec, *, fresh: bool = False, progress: bool = True,
                  log: Callable[[str], None] = print, retry_codes: Collection[str] | None = None) -> RunOutcome:
    """Run (or resume) a job to the end, an interrupt, or an error that dooms every row.

    `retry_codes` (retry-failed): first drop the failure records with these error codes (empty: all of them),
    so that their rows are sent again."""
    key = api_key(spec.provider.name, spec.provider.api_key_env)
    prepared = prepare(spec)
    checkpoint = Checkpoint(spec.output_dir, secrets=[key] if key else [])
    pick = None if retry_codes is None else functools.partial(_failure_with_code, frozenset(retry_codes))
    state = checkpoint.open(prepared.fingerprint, spec.describe(), fresh=fresh, retry=pick)
    try:
        return await _run_opened(prepared, checkpoint, state, key, progress, log)
    finally:
        checkpoint.close()


def _failure_with_code(codes: frozenset[str], rec: Mapping[str, Any]) -> bool:
    """A repeated id is never sent: its failure stands whatever is retried."""
    code = error_code(rec)
    return code != DUPLICATE_ID and (not codes or code in codes)


async def _run_opened(prepared: Prepared, checkpoint: Checkpoint, state: ResumeState, key: str | None,
                      show_progress: bool, log: Callable[[str], None]) -> RunOutcome:
    spec = prepared.spec
    total = prepared.scan.rows
    if state.archived_to is not None:
        log(f"--fresh: the earlier run's files were moved to {state.archived_to}")
        if state.abandoned_tasks:
            log(f"warning: --fresh gave up {state.abandoned_tasks} async task(s) of the earlier run that were "
                f"still pending (already paid for); their ids are in {state.archived_to / 'tasks.jsonl'}")
    if state.released:
        log(f"sending {state.released} failed row(s) again (their old failure records are kept in "
            f"{display_path(spec.output_dir / 'previous')})")
    if state.repaired_lines:
        log(f"repaired {state.repaired_lines} torn line(s) left by an interrupted write")
    if state.unreadable_lines:
        log(f"warning: {state.unreadable_lines} unreadable line(s) in the record files were ignored")
    done_before = state.done.count
    if done_before:
        log(f"resuming {spec.name}: {done_before} of {total} rows already done")
    t0 = time.monotonic()
    progress = Progress(total, min(state.done.count, total), enabled=show_progress, desc=spec.name)
    async with _provider_url(spec.provider.base_url, spec.provider.simulate) as base_url:
        runner = RunLoop(prepared, checkpoint, state, base_url, key, progress, log)
        if not checkpoint.manifest.get("ids_checked"):
            runner.refuse_repeated_ids()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.interrupt)
        try:
            await runner.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            progress.close()
    pending = max(0, total - state.done.count)
    if runner.crash is not None:
        final_state, code = RunState.STOPPED, EXIT_FATAL
    elif runner.error is not None:
        final_state, code = RunState.STOPPED, runner.error.exit_code
    elif runner.stopping is RunState.INTERRUPTED:
        final_state, code = RunState.INTERRUPTED, EXIT_INTERRUPTED
    elif pending:  # cannot happen unless the input changed under us; never claim success
        final_state, code = RunState.STOPPED, EXIT_FATAL
        runner.reason = f"{pending} rows were not reached"
    elif runner.usage.rows_failed:
        final_state, code = RunState.FINISHED_WITH_FAILURES, EXIT_FAILED_ROWS
    else:
        final_state, code = RunState.FINISHED, EXIT_OK
    with contextlib.suppress(BatchrunError):
        runner.flush(final_state, final=True)
        checkpoint.set_state(final_state.value, reason=runner.reason)
    if runner.crash is not None:
        raise runner.crash
    return RunOutcome(spec, final_state, code, total, pending, runner.usage, time.monotonic() - t0,
                      state.done.count - done_before, runner.reason, runner.lane.held)


async def list_provider_models(name: str, base_url: str | None = None, api_key_env: str | None = None
                               ) -> list[str]:
    """The preset's models, with the key from its environment variable (a simulated one when needed)."""
    from .providers.openai import list_models

    preset = PRESETS[name]
    key = api_key(name, api_key_env or preset.api_key_env)
    url = (base_url or preset.base_url).rstrip("/")
    async with _provider_url(url, None if url else SimulateSpec()) as reachable:
        return await list_models(reachable, key)


@contextlib.asynccontextmanager
async def _provider_url(base_url: str, simulate: SimulateSpec | None) -> AsyncIterator[str]:
    """The base URL to call: the given one, or an in-process simulated provider's on a free loopback port."""
    if simulate is None:
        yield base_url
        return
    from .simulate import serve

    async with serve(simulate) as sim_url:
        yield sim_url
