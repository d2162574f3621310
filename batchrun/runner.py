"""Runs one job: streams rows through the limiter and call path into the checkpoint, resumably.

One dispatcher task takes rows (retries first, then the input), waits for a concurrency slot and the rate
limits, and starts one task per attempt. Final records are written the moment a row is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import random
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from .checkpoint import Checkpoint, ResumeState, now_iso
from .control import Charge
from .errors import BatchrunError, FatalProviderError, RunDirError, SpecError
from .limiter import Throttle, Ticket
from .progress import Progress
from .providers import PRESETS, CallPath, call_path, make_auth
from .providers.openai import split_embeddings
from .providers.zhipu import EXPIRED, AsyncCompletions, TaskAction, judge_task, task_id
from .request import BadRow, Request, RequestBuilder, batch
from .retry import Decision, Verdict, backoff_delay, classify, error_details
from .sources import InputScan, first_row, iter_rows, scan_input
from .spec import JobSpec, SimulateSpec
from .tasks import MAX_POLLS_IN_FLIGHT, Poller
from .transport import Reply, new_session
from .usage import Usage, peak_rss_mb

UNCONFIRMED_LIMIT = 5  # unknown task ids, with no task ever found, that mean a wrong poll URL
RATE_WINDOW_S = 30.0
STOP_GRACE_S = 5.0
FLUSH_EVERY_S = 1.0
EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_FAILED_ROWS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass(frozen=True)
class Prepared:
    """A job checked against its input, before any request: what validate and submit share."""

    spec: JobSpec
    scan: InputScan
    builder: RequestBuilder
    fingerprint: dict[str, str]


def prepare(spec: JobSpec) -> Prepared:
    scan = scan_input(spec.input)
    builder = RequestBuilder(spec, first_row(spec.input))
    return Prepared(spec, scan, builder, fingerprint(spec, scan))


def fingerprint(spec: JobSpec, scan: InputScan) -> dict[str, str]:
    """What decides the requests; a resumed run must match it (limits and retry settings may change)."""
    inp = spec.input
    mapping = {"format": inp.format, "id_field": inp.id_field, "messages_field": inp.messages_field,
               "prompt_field": inp.prompt_field, "template": inp.template, "system": inp.system}
    found = {
        "input": scan.digest,
        "input_mapping": _digest(mapping),
        "model": spec.model,
        "params": _digest(dict(spec.params)),
    }
    # Only when not the default, so run directories from before these keys existed still resume.
    if spec.endpoint != "chat":
        found["endpoint"] = spec.endpoint
    if spec.provider.mode == "async":  # held task ids mean nothing to the sync path, and vice versa
        found["tasks"] = "async"
    return found


def _digest(obj: Any) -> str:
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def api_key(preset_name: str, env: str) -> str | None:
    """The key from the environment only; a missing required key is a usage error naming the variable."""
    preset = PRESETS[preset_name]
    key = os.environ.get(env, "").strip() or None
    if key is None and preset.key_required:
        title = preset.title
        raise SpecError(f"the environment variable {env} is not set: export {env}=<your {title} key> "
                        "(keys never go in the job spec)")
    return key


@dataclass
class RunOutcome:
    spec: JobSpec
    state: str  # finished | finished_with_failures | interrupted | stopped
    exit_code: int
    rows_total: int
    rows_pending: int
    usage: Usage
    elapsed_s: float
    rows_this_session: int
    reason: str | None = None  # why the run stopped early
    tasks_pending: int = 0  # async: tasks submitted and still to be collected by a resumed run


class _Item:
    """A row on its way: the request plus what its attempts so far have seen (and, in async mode, its task)."""

    __slots__ = ("attempts", "charge", "polls", "rate_limited", "request", "resubmitted", "shared", "submitted_at",
                 "task_id")

    def __init__(self, request: Request, attempts: int = 0) -> None:
        self.request = request
        self.attempts = attempts
        self.rate_limited = 0
        self.task_id: str | None = None
        self.submitted_at = 0.0  # wall-clock time of the task's submission
        self.polls = 0
        self.charge: Charge | None = None  # the TPM charge, settled when the task's usage is known
        self.resubmitted: list[dict[str, Any]] = []  # tasks given up on (expired, failed) and why
        self.shared: dict[str, int] | None = None  # the shared request this row was split from, if it failed


class Runner:
    def __init__(self, prepared: Prepared, checkpoint: Checkpoint, state: ResumeState, path: CallPath,
                 progress: Progress, log: Callable[[str], None]) -> None:
        spec = prepared.spec
        self.started_at, self.t0, self.t_wall0 = now_iso(), time.monotonic(), time.time()
        self.spec, self.prepared, self.checkpoint, self.state = spec, prepared, checkpoint, state
        self.call_path, self.progress, self.log = path, progress, log
        self.usage = state.usage
        preset = PRESETS[spec.provider.name]
        self.errors = preset.errors
        self.batch_size = (spec.limits.batch_size or preset.embedding_batch) if spec.endpoint == "embeddings" else 1
        accounting = spec.limits.tpm_accounting or preset.tpm_accounting
        # A submission holds no slot while its task runs: what an async provider's "too many in flight" counts
        # is unknown (running tasks, most likely, which limits.max_pending caps), so there it is a plain 429.
        in_flight_codes = preset.errors.concurrency if spec.provider.mode != "async" else frozenset()
        self.throttle = Throttle(spec.limits, accounting, log, concurrency_codes=in_flight_codes)
        self.gate = self.throttle.gate
        self.ready: deque[_Item] = deque()  # retries whose backoff is over
        self.backoffs: set[asyncio.TimerHandle] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()
        self.stopping: str | None = None  # "interrupted" | "stopped"
        self.reason: str | None = None
        self.error: BatchrunError | None = None
        self.crash: Exception | None = None  # an unexpected exception, re-raised once the run is flushed
        self.interrupts = 0
        self.dispatcher: asyncio.Task[None] | None = None
        self.http: aiohttp.ClientSession | None = None
        self.poller: Poller[_Item] | None = None
        self.polls_answered = 0  # polls that found their task: proof the poll URL is right
        self.unconfirmed: list[tuple[_Item, Reply]] = []  # unknown task ids seen before that proof
        self.rate_samples: deque[tuple[float, int]] = deque([(self.t0, state.done.count)])
        if isinstance(path, AsyncCompletions):
            self.poller = Poller(self._poll, self._on_poll, spec.limits.poll_rps)

    # --- the run -------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.http = new_session(self.throttle.concurrency.maximum + (MAX_POLLS_IN_FLIGHT if self.poller else 0))
        background = [asyncio.create_task(self._flush_loop()), asyncio.create_task(self.throttle.tick_forever())]
        if self.poller is not None:
            background.append(asyncio.create_task(self.poller.run()))
            self._resume_tasks()
        self.dispatcher = asyncio.create_task(self._dispatch())
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await self.dispatcher
            if self.tasks:
                _, pending = await asyncio.wait(self.tasks, timeout=STOP_GRACE_S if self.interrupts < 2 else 0)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for handle in self.backoffs:
                handle.cancel()
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.http.close()

    async def _dispatch(self) -> None:
        rows = self._rows()
        exhausted = False
        max_pending = self.spec.limits.max_pending
        while not self.stopping:
            if self.poller is not None and self.poller.pending + self.gate.inflight >= max_pending:
                self.wake.clear()
                await self.wake.wait()
                continue
            if self.ready:
                item = self.ready.popleft()
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
                item = _Item(nxt)
            else:
                self.wake.clear()
                if self.gate.inflight == 0 and not self.backoffs and not (self.poller and self.poller.pending):
                    return
                await self.wake.wait()
                continue
            ticket = await self.throttle.admit(item.request)
            task = asyncio.create_task(self._attempt(item, ticket))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _rows(self) -> Iterator[Request | BadRow]:
        build, done, held = self.prepared.builder.build, self.state.done, self.state.tasks
        skip = (lambda row: row in done or row in held) if held else done.__contains__
        requests = (build(raw) for raw in iter_rows(self.spec.input, skip=skip))
        size = self.batch_size
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

    async def _attempt(self, item: _Item, ticket: Ticket) -> None:
        item.attempts += 1
        assert self.http is not None
        reply: Reply | None = None
        submitted = False
        try:
            reply = await self.call_path.call(self.http, item.request, self.spec.retry.timeout_s)
            decision = self._classify_submission(reply) if self.poller else classify(
                reply.status, reply.body, reply.headers, reply.error, self.errors)
            if reply.status == 429:
                item.rate_limited += 1
            self.progress.attempt(retried=item.attempts > 1, rate_limited=reply.status == 429)
            if decision.verdict is Verdict.OK and self.poller is not None:
                submitted = True
                item.charge = ticket.charge
                await self._hold_task(item, reply)
            else:
                self._decide(item, reply, decision)
        except BatchrunError as exc:  # the checkpoint could not be written: stop cleanly, resumable
            self._failed(exc)
        except Exception as exc:  # a bug: stop rather than leave this row silently unrecorded
            self._crashed(exc)
        finally:
            self.throttle.done(ticket, reply, settle=not submitted)
            self.wake.set()

    def _decide(self, item: _Item, reply: Reply, decision: Decision) -> None:
        """Act on a classified answer: record it, retry the row, or stop the run."""
        parts = item.request.parts
        if parts and decision.verdict is Verdict.FAIL_ROW:
            # One bad input fails the whole request: send the rows one by one to find it. The first row's
            # record carries the shared request's attempts, so that the request counts stay true.
            singles = [_Item(part) for part in parts]
            singles[0].shared = {"attempts": item.attempts, "rate_limited": item.rate_limited}
            self.ready.extend(singles)
            return
        if parts and decision.verdict is Verdict.OK:
            answers = split_embeddings(reply.body, [p.prompt_tokens for p in parts])
            if answers is None:
                decision = Decision(Verdict.RETRY, "embedding_count_mismatch",
                                    f"the answer does not hold one embedding for each of the {len(parts)} inputs")
            else:
                for i, (part, body) in enumerate(zip(parts, answers, strict=True)):
                    self._record(item, replace(reply, body=body), None, part=part, batch={"index": i,
                                                                                        "size": len(parts)})
                return
        if decision.verdict is Verdict.OK:
            self._record(item, reply, None)
        elif decision.verdict is Verdict.STOP_RUN:
            self._fatal(decision, reply.status)
        elif decision.verdict is Verdict.RETRY and item.attempts < self.spec.retry.max_attempts:
            self._retry_later(item, decision)
        else:
            for i, part in enumerate(parts):
                self._record(item, reply, decision, part=part, batch={"index": i, "size": len(parts)})
            if not parts:
                self._record(item, reply, decision)

    def _failed(self, exc: BatchrunError) -> None:
        self.error = self.error or exc
        self.stop("stopped", str(exc))

    def _crashed(self, exc: Exception) -> None:
        self.crash = self.crash or exc
        self.stop("stopped", f"internal error: {exc!r}")

    # --- async mode: submitted tasks and their polls ------------------------------------------------

    def _classify_submission(self, reply: Reply) -> Decision:
        if reply.status == 200 and isinstance(reply.body, dict) and error_details(reply.body)[0] is None:
            if task_id(reply.body) is None:
                return Decision(Verdict.RETRY, "no_task_id", "the submission was accepted without a task id")
            return Decision(Verdict.OK, "ok", "")
        return classify(reply.status, reply.body, reply.headers, reply.error, self.errors)

    async def _hold_task(self, item: _Item, reply: Reply) -> None:
        """Write the task id down durably before waiting on it: a resumed run polls it instead of paying again."""
        assert self.poller is not None
        item.task_id, item.submitted_at = task_id(reply.body), time.time()
        req = item.request
        entry: dict[str, Any] = {"row": req.row, "task_id": item.task_id, "custom_id": req.custom_id,
                                 "attempt": item.attempts, "submitted_at": now_iso(), "t": round(item.submitted_at, 3)}
        if item.resubmitted:  # so that a resumed run's record still says why the row was submitted again
            entry["resubmitted"] = item.resubmitted
        self.checkpoint.append_task(entry)
        await self.checkpoint.tasks_durable()
        self.poller.add(item)

    def _resume_tasks(self) -> None:
        """Poll the tasks an earlier session submitted; their rows are never submitted again unless the
        provider no longer knows the task."""
        assert self.poller is not None
        held = self.state.tasks
        if not held:
            return
        self.log(f"polling {len(held)} task(s) submitted by an earlier session")
        build = self.prepared.builder.build
        for raw in iter_rows(self.spec.input, skip=lambda row: row not in held):
            request = build(raw)
            if isinstance(request, BadRow):  # cannot happen with an unchanged input; never lose the row
                self._record_bad(request)
                continue
            entry = held[raw.row]
            item = _Item(request, attempts=int(entry.get("attempt") or 1))
            item.task_id, item.submitted_at = entry["task_id"], float(entry.get("t") or time.time())
            item.resubmitted = list(entry.get("resubmitted") or [])
            self.poller.add(item, delay=0.0)

    async def _poll(self, task: str) -> Reply:
        assert self.http is not None and isinstance(self.call_path, AsyncCompletions)
        return await self.call_path.poll(self.http, task, self.spec.retry.timeout_s)

    def _on_poll(self, item: _Item, reply: Reply) -> None:
        try:
            self._task_answer(item, reply)
        except BatchrunError as exc:
            self._failed(exc)
        except Exception as exc:
            self._crashed(exc)
        finally:
            self.wake.set()

    def _task_answer(self, item: _Item, reply: Reply) -> None:
        assert self.poller is not None
        verdict = judge_task(reply, self.errors)
        if verdict.found:
            self._task_found()
        if verdict.action is TaskAction.POLL:
            if verdict.pause:
                self.poller.pause(verdict.pause)
            self.poller.add(item)
            return
        assert verdict.decision is not None
        if verdict.action is TaskAction.EXPIRED:
            self._expired(item, reply)
            return
        self._settle_task(item, reply)
        if verdict.action is TaskAction.RESUBMIT:
            self._give_up_task(item, reply, verdict.decision)
        else:
            self._decide(item, reply, verdict.decision)

    def _expired(self, item: _Item, reply: Reply) -> None:
        """An unknown task id: submit the row again. Until some poll has found a task, though, unknown ids of
        tasks just submitted may mean a wrong poll URL rather than expiry: hold them, and stop the run if several
        pile up. (Tasks from an earlier session may simply be gone, as an in-process simulator's are.)"""
        if self.polls_answered or item.submitted_at < self.t_wall0:
            self._give_up_task(item, reply, EXPIRED)
            return
        self.unconfirmed.append((item, reply))
        if len(self.unconfirmed) >= UNCONFIRMED_LIMIT:
            assert isinstance(self.call_path, AsyncCompletions)
            self._failed(FatalProviderError(
                f"{len(self.unconfirmed)} tasks polled at {self.call_path.result_url}<id> were unknown to the "
                f"provider (HTTP {reply.status}) and none was found: check provider.base_url"))

    def _task_found(self) -> None:
        self.polls_answered += 1
        if self.polls_answered == 1:
            for item, reply in self.unconfirmed:
                self._give_up_task(item, reply, EXPIRED)
            self.unconfirmed.clear()

    def _give_up_task(self, item: _Item, reply: Reply, decision: Decision) -> None:
        """Submit the row again (noted in its record), within retry.max_attempts."""
        if item.attempts >= self.spec.retry.max_attempts:
            self._record(item, reply, decision)
            return
        item.resubmitted.append({"task_id": item.task_id, "reason": decision.code, "message": decision.message,
                                 "polls": item.polls})
        item.task_id, item.polls = None, 0
        self._retry_later(item, decision, immediately=decision.code == "task_expired")

    def _settle_task(self, item: _Item, reply: Reply) -> None:
        if item.charge is not None:
            self.throttle.settle(item.charge, reply)
            item.charge = None

    def _retry_later(self, item: _Item, decision: Decision, *, immediately: bool = False) -> None:
        retry = self.spec.retry
        delay = 0.0 if immediately else backoff_delay(item.attempts, base=retry.backoff_s, cap=retry.max_backoff_s,
                                                      retry_after=decision.retry_after, jitter=random.random())
        loop = asyncio.get_running_loop()

        def ready() -> None:
            self.backoffs.discard(handle)
            self.ready.append(item)
            self.wake.set()

        handle = loop.call_later(delay, ready)
        self.backoffs.add(handle)

    # --- records -------------------------------------------------------------------------------------

    def _record(self, item: _Item, reply: Reply, decision: Decision | None, *, part: Request | None = None,
                batch: dict[str, int] | None = None) -> None:
        req = part or item.request
        response = None if reply.status is None else {
            "status_code": reply.status,
            "request_id": reply.request_id,
            "body": reply.body if not isinstance(reply.body, bytes) else reply.body.decode("utf-8", "replace"),
        }
        error = None if decision is None else {
            "code": decision.code, "message": decision.message, "status": reply.status, "attempts": item.attempts}
        record = {
            "row": req.row,
            "id": f"batch_req_{req.row}",
            "custom_id": req.custom_id,
            "model": req.model,
            "response": response,
            "error": error,
            "attempts": item.attempts,
            "rate_limited": item.rate_limited,
            "latency_s": round(reply.elapsed, 4),
            "completed_at": now_iso(),
        }
        if batch is not None:
            record["batch"] = batch
        if item.shared is not None:
            record["shared_request"] = item.shared
        if self.poller is not None:  # async: the wait is submission to result, not the last poll
            record.update(task_id=item.task_id, polls=item.polls + sum(r["polls"] for r in item.resubmitted),
                          latency_s=round(max(0.0, time.time() - item.submitted_at), 3) if item.task_id else 0.0)
            if item.resubmitted:
                record["resubmitted"] = item.resubmitted
        self._commit(record, failed=decision is not None)

    def _record_bad(self, bad: BadRow) -> None:
        record = {
            "row": bad.row,
            "id": f"batch_req_{bad.row}",
            "custom_id": bad.custom_id,
            "model": self.spec.model,
            "response": None,
            "error": {"code": bad.code, "message": bad.message, "status": None, "attempts": 0},
            "attempts": 0,
            "rate_limited": 0,
            "completed_at": now_iso(),
        }
        try:
            self._commit(record, failed=True)
        except BatchrunError as exc:
            self._failed(exc)

    def _commit(self, record: dict[str, Any], *, failed: bool) -> None:
        self.checkpoint.append(record, failed=failed)
        self.state.done.add(record["row"])
        before = self.usage.total_tokens
        self.usage.add(record)
        self.progress.row_done(failed=failed, tokens=self.usage.total_tokens - before)

    # --- stopping ------------------------------------------------------------------------------------

    def _fatal(self, decision: Decision, status: int | None) -> None:
        if self.stopping == "stopped":
            return
        env = self.spec.provider.api_key_env
        if status in (401, 403):
            why = f"the provider refused the key ({decision.message}); check ${env}"
        else:
            why = (f"the provider refused the account ({decision.code}: {decision.message}); top up or wait "
                   "for the quota to reset")
        self.error = FatalProviderError(why)
        self.stop("stopped", why)

    def stop(self, how: str, reason: str) -> None:
        if self.stopping == "stopped" or (self.stopping and how == "interrupted"):
            return
        self.stopping, self.reason = how, reason
        self.wake.set()
        if self.dispatcher is not None:
            self.dispatcher.cancel()

    def interrupt(self) -> None:
        """Ctrl-C / SIGTERM: stop taking rows and let in-flight requests finish; a second one cancels them."""
        self.interrupts += 1
        if self.interrupts == 1:
            self.log(f"stopping: waiting up to {STOP_GRACE_S:.0f} s for {self.gate.inflight} requests in flight "
                     "(Ctrl-C again to stop at once)")
            self.stop("interrupted", "interrupted")
        else:
            for task in self.tasks:
                task.cancel()

    # --- usage.json ----------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            self.progress.refresh()
            try:
                self.flush("running")
            except BatchrunError as exc:
                self._failed(exc)
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

    def flush(self, state: str, *, final: bool = False) -> None:
        prev = self.state.previous
        total = self.prepared.scan.rows
        data: dict[str, Any] = {
            "job": self.spec.name,
            "state": state,
            "rows_total": total,
            "rows_pending": max(0, total - self.state.done.count),
            **self.usage.totals(),
            "started_at": prev.get("started_at") or self.started_at,
            "updated_at": now_iso(),
            "finished_at": now_iso() if final and state.startswith("finished") else None,
            "active_s": round(float(prev.get("active_s") or 0.0) + time.monotonic() - self.t0, 3),
            "sessions": int(prev.get("sessions") or 0) + 1,
            "rate_rows_per_s": self._recent_rate(),
            "throttle": self.throttle.snapshot(),
            **({"tasks_pending": self.poller.pending} if self.poller is not None else {}),
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


def _failure_with_code(codes: frozenset[str], record: Mapping[str, Any]) -> bool:
    error = record.get("error")
    code = str(error.get("code")) if isinstance(error, Mapping) else None
    return not codes or code in codes


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
        path = call_path(base_url, make_auth(key, spec.provider.auth), spec.provider.mode, spec.endpoint)
        runner = Runner(prepared, checkpoint, state, path, progress, log)
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
        final_state, code = "stopped", EXIT_FATAL
    elif runner.error is not None:
        final_state, code = "stopped", runner.error.exit_code
    elif runner.stopping == "interrupted":
        final_state, code = "interrupted", EXIT_INTERRUPTED
    elif pending:  # cannot happen unless the input changed under us; never claim success
        final_state, code = "stopped", EXIT_FATAL
        runner.reason = f"{pending} rows were not reached"
    elif runner.usage.rows_failed:
        final_state, code = "finished_with_failures", EXIT_FAILED_ROWS
    else:
        final_state, code = "finished", EXIT_OK
    with contextlib.suppress(BatchrunError):
        runner.flush(final_state, final=True)
        checkpoint.set_state(final_state, reason=runner.reason)
    if runner.crash is not None:
        raise runner.crash
    return RunOutcome(spec, final_state, code, total, pending, runner.usage, time.monotonic() - t0,
                      state.done.count - done_before, runner.reason,
                      runner.poller.pending if runner.poller is not None else 0)


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


def job_of_run(run_dir: Path, job: str | None = None) -> JobSpec:
    """The job a run directory holds, from the spec file its manifest names (or `job`), writing into it."""
    from .checkpoint import MANIFEST, read_json
    from .spec import load_spec

    run_dir = Path(run_dir)
    manifest = read_json(run_dir / MANIFEST)
    if manifest is None:
        raise RunDirError(f"{run_dir} is not a batchrun run directory (no {MANIFEST})")
    path = job or (manifest.get("job") or {}).get("spec")
    if not path or not Path(path).is_file():
        raise SpecError(f"the job spec {path or '(none recorded)'} of {run_dir} is not there: pass it with --job")
    return replace(load_spec(path), output_dir=run_dir.resolve())


def summary_lines(outcome: RunOutcome) -> list[str]:
    """The closing lines of `batchrun submit`: what happened, where the files are, how to resume."""
    u, spec = outcome.usage, outcome.spec
    out = spec.output_dir
    rel = display_path(out)
    rate = outcome.rows_this_session / outcome.elapsed_s if outcome.elapsed_s > 0 else 0.0
    lines = [
        f"{spec.name}: {outcome.state.replace('_', ' ')}: {u.rows_succeeded} succeeded, {u.rows_failed} failed, "
        f"{outcome.rows_pending} pending of {outcome.rows_total} rows",
        f"  requests {u.requests}, retries {u.retries} (429s {u.rate_limited}), tokens {u.prompt_tokens} prompt + "
        f"{u.completion_tokens} completion",
        f"  this session: {outcome.rows_this_session} rows in {outcome.elapsed_s:.1f} s ({rate:.1f} rows/s)",
        f"  results: {rel}/results.jsonl" + (f"   failures: {rel}/failures.jsonl" if u.rows_failed else ""),
    ]
    if u.failures_by_code:
        codes = ", ".join(f"{c} ×{n}" for c, n in sorted(u.failures_by_code.items(), key=lambda kv: -kv[1])[:5])
        lines.append(f"  failures by code: {codes}")
    if outcome.reason and outcome.state == "stopped":
        lines.append(f"  stopped: {outcome.reason}")
    if outcome.tasks_pending:
        lines.append(f"  {outcome.tasks_pending} submitted tasks are still at the provider: resuming polls them "
                     "(tasks.jsonl holds their ids), it does not submit them again")
    if outcome.rows_pending:
        lines.append(f"  resume with: batchrun submit {display_path(spec.spec_path)}")
    return lines


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the current directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
