"""One session of a job: open (or resume) its run directory, start the provider when it is simulated, run the
loop until the rows are done, an interrupt, or an error that dooms every row, and settle the run's state."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import halt
from .engine.batch import BatchRun
from .engine.context import RunContext
from .engine.job import Prepared, api_key, display_path, prepare, provider_key, provider_keys, refuse_plain_http
from .engine.online import RunLoop
from .engine.progress import Phases, Progress
from .engine.shards import read_shards
from .errors import BatchrunError, Interrupted, SpecError
from .limits.binding import limit_line
from .providers import make_auth
from .providers.batches import BatchAPIClient
from .providers.transport import Http, Network
from .records import error_code
from .rows.ids import DUPLICATE_ID
from .rows.sources import nth_row
from .spec.cachespec import CacheSpec
from .spec.model import JobSpec, ScaleSpec
from .spec.presets import PRESETS
from .spec.pricing import Prices
from .spec.simulator import SimulateSpec
from .store.cache import Cache
from .store.checkpoint import Checkpoint
from .store.rerun import Rerun
from .store.resume import ResumeState
from .store.rundir import BATCHES, RunDir, RunState, complete_lines
from .store.usage import Usage, cached_line, outputs, outputs_line, tokens_of_which
from .text.redaction import redact, secret_bytes
from .text.words import plural

if TYPE_CHECKING:
    from .ray.driver import RayRun

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
    rerun: Rerun | None = None  # what resumes this run directory (the CLI's command, or the API's call)
    bound_by: str | None = None  # which limit held the run back (limits/binding.py); None: no throttle

    @property
    def run_dir(self) -> Path:
        return self.spec.output_dir


async def run_job(
    spec: JobSpec,
    *,
    fresh: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    retry_codes: Collection[str] | None = None,
    limit: int | None = None,
    use_cache: bool = True,
    scale: ScaleSpec | None = None,
    rerun: Rerun | None = None,
) -> RunOutcome:
    """Run (or resume) a job to the end, an interrupt, or an error that dooms every row.

    `retry_codes` (retry-failed): first drop the failure records with these error codes (empty: all of them),
    so that their rows are sent again. `limit`: only the input's first rows; a later run does the rest.
    `use_cache=False` (--no-cache): neither read nor write the response cache. `scale` (--ray): run on Ray,
    whatever the spec's `scale:` says. `rerun`: what resumes this run directory, for the hints (default: its
    spec, with this `limit`)."""
    if not use_cache:
        spec = spec.model_copy(update={"cache": CacheSpec(mode="off")})
    if scale is not None:
        spec = spec.model_copy(update={"scale": scale})
    if spec.scale is not None:
        from .ray.driver import refuse

        refuse(spec)  # before the run directory is touched
    keys = provider_keys(spec.provider)
    hidden = secret_bytes(key for _, key in keys)
    with _redacted_errors(hidden):
        rerun = rerun or Rerun(spec.spec_path, limit=limit)
        outcome = await _run_job(spec, keys, fresh, progress, _redacting(log, hidden), retry_codes, limit, rerun)
    if outcome.reason and hidden:
        outcome = dataclasses.replace(outcome, reason=_blank(outcome.reason, hidden))
    return outcome


def _blank(text: str, hidden: list[bytes]) -> str:
    return redact(text.encode(), hidden).decode(errors="replace")


def _redacting(log: Callable[[str], None], hidden: list[bytes]) -> Callable[[str], None]:
    return (lambda line: log(_blank(line, hidden))) if hidden else log


@contextlib.contextmanager
def _redacted_errors(hidden: list[bytes]) -> Iterator[None]:
    """A provider's message may quote the key: an error that carries it never shows it."""
    try:
        yield
    except BatchrunError as exc:
        exc.args = (_blank(str(exc), hidden),)
        raise


async def _run_job(
    spec: JobSpec,
    keys: list[tuple[str, str | None]],
    fresh: bool,
    progress: bool,
    log: Callable[[str], None],
    retry_codes: Collection[str] | None,
    limit: int | None,
    rerun: Rerun,
) -> RunOutcome:
    if retry_codes:
        _check_codes(spec.output_dir, retry_codes)
    signals = _Signals(asyncio.get_running_loop())
    phases = Phases(enabled=progress)
    with halt.watching(phases, signals), contextlib.closing(phases):
        try:  # the scan in a worker thread, the event loop free to take a signal
            prepared = await asyncio.to_thread(prepare, spec)
        except Interrupted as exc:
            raise Interrupted(f"{exc}: nothing was sent; `{rerun.text()}` starts again") from None
        phases.close()
        return await _run_prepared(prepared, keys, fresh, progress, log, retry_codes, limit, signals, rerun)


async def _run_prepared(
    prepared: Prepared,
    keys: list[tuple[str, str | None]],
    fresh: bool,
    progress: bool,
    log: Callable[[str], None],
    retry_codes: Collection[str] | None,
    limit: int | None,
    signals: _Signals,
    rerun: Rerun,
) -> RunOutcome:
    spec = prepared.spec
    checkpoint = Checkpoint(spec.output_dir, secrets=[key for _, key in keys if key])
    pick = None if retry_codes is None else functools.partial(_failure_with_code, frozenset(retry_codes))
    held = prepared.held or prepared.fingerprint  # what the run directory may hold for the run to go on
    state = checkpoint.open(held, spec.describe(), fresh=fresh, retry=pick, rows=prepared.scan.rows, rerun=rerun)
    try:
        if prepared.held is not None:  # the input grew (its new rows' ids to check), or an older batchrun's run
            checkpoint.note(fingerprint=prepared.fingerprint, **({"ids_checked": False} if prepared.growth else {}))
        secrets = [key for _, key in keys]
        cache = Cache(spec.cache, secrets=secrets, warn=log) if spec.cache.mode != "off" else None
        try:
            outcome = await _run_opened(prepared, checkpoint, state, keys, progress, log, limit, cache, signals)
            if (
                limit is not None
                and outcome.state is RunState.STOPPED
                and outcome.exit_code in (EXIT_OK, EXIT_FAILED_ROWS)
            ):
                # --limit's rows are all done: what is left is the rest, for a submit without --limit
                rerun = dataclasses.replace(rerun, limit=None)
                with contextlib.suppress(BatchrunError):
                    checkpoint.note(rerun=rerun.facts())
            return dataclasses.replace(outcome, rerun=rerun)
        finally:
            if cache is not None:
                cache.close()
    finally:
        checkpoint.close()


def _failure_with_code(codes: frozenset[str], rec: Mapping[str, Any]) -> bool:
    """A repeated id is never sent: its failure stands whatever is retried. Codes are single tokens (older runs
    wrote some with their detail after a space)."""
    code = (error_code(rec) or "").split(" ", 1)[0]
    return code != DUPLICATE_ID and (not codes or code in codes)


def _check_codes(run_dir: Path, codes: Collection[str]) -> None:
    """A code the run has no failure with is a typo, not a no-op: say which codes it has."""
    found: dict[str, int] = {}
    for code, n in (RunDir(run_dir).usage().get("failures_by_code") or {}).items():
        token = str(code).split(" ", 1)[0]
        found[token] = found.get(token, 0) + int(n)
    unknown = sorted(set(codes) - set(found))
    if unknown:
        have = ", ".join(f"{c} ×{n}" for c, n in sorted(found.items(), key=lambda kv: -kv[1])) or "none"
        raise SpecError(f"--code {unknown[0]}: {run_dir} has no failure with that code (its failure codes: {have})")


async def _run_opened(
    prepared: Prepared,
    checkpoint: Checkpoint,
    state: ResumeState,
    keys: list[tuple[str, str | None]],
    show_progress: bool,
    log: Callable[[str], None],
    limit: int | None,
    cache: Cache | None,
    signals: _Signals,
) -> RunOutcome:
    spec = prepared.spec
    total = prepared.scan.rows
    last_row = nth_row(spec.input, limit) if limit is not None else None
    if state.archived_to is not None:
        log(f"--fresh: the earlier run's files were moved to {state.archived_to}")
        if state.abandoned_tasks:
            log(
                f"warning: --fresh gave up {plural(state.abandoned_tasks, 'async task')} of the earlier run that were "
                f"still pending (already paid for); their ids are in {state.archived_to / 'tasks.jsonl'}"
            )
    for line in prepared.input_notes(fresh=state.archived_to is not None):  # grown, or a last line being written
        log(line)
    if state.released:
        log(
            f"sending {plural(state.released, 'failed row')} again (their old failure records are kept in "
            f"{display_path(spec.output_dir / 'previous')})"
        )
    if state.repaired_lines:
        log(f"repaired {plural(state.repaired_lines, 'torn line')} left by an interrupted write")
    for note in state.notes:  # damaged or repeated record lines set aside (their rows go again), a recount
        log(f"warning: {note}")
    done_before = state.done.count
    where = display_path(spec.output_dir)
    if state.previous or done_before:
        log(f"resuming {spec.name} in {where}: {done_before:,} of {plural(total, 'row')} already done")
    else:
        log(f"new run of {spec.name} in {where}: {plural(total, 'row')}")
    goal, goal_done = total, min(done_before, total)
    if limit is not None and last_row is not None:
        goal, goal_done = min(limit, total), state.done.count_upto(last_row)
        log(
            f"--limit {limit:,}: this session takes the first {plural(goal, 'row')} ({goal_done:,} of them "
            "already done)"
        )
    t0 = time.monotonic()
    progress = Progress(goal, goal_done, enabled=show_progress, desc=spec.name, failed=state.usage.rows_failed)

    def say(message: str) -> None:  # above the bar, never glued to its line
        with progress.above():
            log(message)

    if cache is not None:
        cache.warn = say  # a cache that fails mid-run says so above the bar

    async with _provider_url(spec.provider.base_url, spec.provider.simulate) as base_url:
        ctx = RunContext(prepared, checkpoint, state, base_url, keys, progress, say, last_row, cache)
        runner: BatchRun | RunLoop | RayRun
        if spec.scale is not None:
            from .ray.driver import RayRun

            runner = RayRun(ctx)
        else:
            runner = BatchRun(ctx) if spec.provider.mode == "batch" else RunLoop(ctx)
        try:
            await signals.run(runner)
            if isinstance(runner, BatchRun) and runner.leaves_rows_online and not runner.stopping:
                left = goal - state.done.count_upto(last_row) if last_row is not None else runner.ledger.pending
                if left > 0:
                    say(f"sending the {plural(left, 'row')} the batches did not finish through the online lane")
                    runner = RunLoop(ctx)  # the same run, its rows left over sent online
                    await signals.run(runner)
        finally:
            progress.close(state.done.count_upto(last_row) if last_row is not None else min(state.done.count, total))
    pending = runner.ledger.pending
    if runner.crash is not None:
        final_state, code = RunState.STOPPED, EXIT_FATAL
    elif runner.error is not None:
        final_state, code = RunState.STOPPED, runner.error.exit_code
    elif runner.stopping is RunState.INTERRUPTED:
        final_state, code = RunState.INTERRUPTED, EXIT_INTERRUPTED
    elif pending and limit is not None:  # the rows past the limit wait for the next submit
        final_state, code = RunState.STOPPED, EXIT_FAILED_ROWS if state.usage.rows_failed else EXIT_OK
        runner.reason = f"--limit {limit:,}: the other {plural(pending, 'row')} wait for a submit without --limit"
    elif pending:  # cannot happen unless the input changed under us; never claim success
        final_state, code = RunState.STOPPED, EXIT_FATAL
        runner.reason = f"{plural(pending, 'row')} not reached"
    elif state.usage.rows_failed:
        final_state, code = RunState.FINISHED_WITH_FAILURES, EXIT_FAILED_ROWS
    else:
        final_state, code = RunState.FINISHED, EXIT_OK
    with contextlib.suppress(BatchrunError):
        runner.flush(final_state, final=True)
        checkpoint.set_state(final_state.value, reason=runner.reason)
    if runner.crash is not None:
        raise runner.crash
    return RunOutcome(
        spec,
        final_state,
        code,
        total,
        pending,
        state.usage,
        time.monotonic() - t0,
        state.done.count - done_before,
        runner.reason,
        runner.lane.held,
        bound_by=limit_line(runner.facts()),
    )


async def cancel_run(spec: JobSpec) -> list[str]:
    """Cancel the batches of a run in mode batch that are still going."""
    if spec.provider.mode != "batch":
        raise SpecError(f"{spec.output_dir} is not a run in provider.mode: batch: there are no batches to cancel")
    key = provider_key(spec.provider)
    return await cancel_batches(spec, key)


async def cancel_batches(spec: JobSpec, key: str | None) -> list[str]:
    """`batchrun cancel`: ask the provider to cancel every batch of the run still going. What they finished is
    billed and kept: the next submit harvests it, and sends the rest again (or nothing, with the run left as is)."""
    if spec.provider.simulate is not None:
        raise SpecError(
            "this run's simulated provider lived inside its submit, and its batches ended with it: nothing to cancel"
        )
    run_dir = spec.output_dir
    shards = read_shards(line for _, line in complete_lines(run_dir / BATCHES))
    live = [s for s in shards.values() if s.batch_id is not None and s.next_step == "poll"]
    if not live:
        return [f"{run_dir}: no batch of this run is still going"]
    http = Http(2, Network(spec.provider.proxy, spec.provider.ca_bundle))
    client = BatchAPIClient(http, spec.provider.base_url, make_auth(key, spec.provider.auth), spec.retry.timeout_s)
    lines = []
    try:
        for shard in sorted(live, key=lambda s: s.index):
            assert shard.batch_id is not None
            reply = await client.cancel(shard.batch_id)
            body = reply.body if isinstance(reply.body, dict) else {}
            counts = body.get("request_counts") or {}
            if reply.status == 200:
                lines.append(
                    f"shard {shard.index}: batch {shard.batch_id} {body.get('status')}; "
                    f"{counts.get('completed', 0):,} of {plural(counts.get('total', shard.lines), 'row')} already done "
                    "(billed, and recorded by the next submit)"
                )
            else:
                lines.append(f"shard {shard.index}: batch {shard.batch_id}: {reply.error or f'HTTP {reply.status}'}")
    finally:
        await http.close()
    return lines


class _Signals:
    """Ctrl-C and SIGTERM for the whole session (`halt.watching` installs them and sets the stop flag, which stops
    a long phase: the scan, the id check, a replay from the cache); the runner, once there is one, is told on its
    event loop, to stop taking rows and let those in flight finish (a second Ctrl-C cancels them). On the main
    thread only: a run in another thread, the Python API in a worker, is stopped by whoever owns the process."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.runner: BatchRun | RunLoop | RayRun | None = None

    def __call__(self, from_keyboard: bool) -> None:
        if self.runner is not None:
            with contextlib.suppress(RuntimeError):  # the event loop is closed: the run is over
                self.loop.call_soon_threadsafe(self.runner.interrupt, from_keyboard)

    async def run(self, runner: BatchRun | RunLoop | RayRun) -> None:
        self.runner = runner
        await runner.run()


async def list_provider_models(
    name: str, base_url: str | None = None, api_key_env: str | None = None, allow_insecure_http: bool = False
) -> list[str]:
    """The preset's models, with the key from its environment variable (a simulated one when needed)."""
    from .providers.openai import list_models

    preset = PRESETS[name]
    key = api_key(name, api_key_env or preset.api_key_env)
    url = (base_url or preset.base_url).rstrip("/")
    refuse_plain_http(url, key, allow_insecure_http, option=True)
    with _redacted_errors(secret_bytes([key])):
        async with _provider_url(url, None if url else SimulateSpec()) as reachable:
            return await list_models(reachable, key, Network(trust_env=bool(url)))  # in process: never proxied


@contextlib.asynccontextmanager
async def _provider_url(base_url: str, simulate: SimulateSpec | None) -> AsyncIterator[str]:
    """The base URL to call: the given one, or an in-process simulated provider's on a free loopback port."""
    if simulate is None:
        yield base_url
        return
    from .sim.server import serve

    async with serve(simulate) as sim_url:
        yield sim_url


def summary_lines(outcome: RunOutcome) -> list[str]:
    """The closing lines of `batchrun submit`: what happened, where the files are, how to resume."""
    u, spec = outcome.usage, outcome.spec
    out = spec.output_dir
    rel = display_path(out)
    rate = outcome.rows_this_session / outcome.elapsed_s if outcome.elapsed_s > 0 else 0.0
    cost = Prices.of(spec.pricing, spec.provider.name, spec.provider.batch_price_share).spent_line(u.models, u.slots)
    lines = [
        f"{spec.name}: {outcome.state.value.replace('_', ' ')}: {u.rows_succeeded:,} succeeded, {u.rows_failed:,} "
        f"failed, {outcome.rows_pending:,} pending of {plural(outcome.rows_total, 'row')}",
        f"  {_requests_text(u, spec.provider.mode)}, retries {u.retries:,} (429s {u.rate_limited:,}), "
        + (f"repairs {u.repairs:,}, " if u.repairs else "")
        + f"tokens {u.prompt_tokens:,} prompt + {u.completion_tokens:,} completion"
        + tokens_of_which(u.reasoning_tokens, u.cached_prompt_tokens)
        + f"; cost {cost}",
        f"  this session: {plural(outcome.rows_this_session, 'row')} in {outcome.elapsed_s:,.1f} s "
        f"({rate:,.1f} rows/s)",
        f"  results: {rel}/results.jsonl" + (f"   failures: {rel}/failures.jsonl" if u.rows_failed else ""),
    ]
    if (shaped := outputs_line(outputs(u.models))) is not None:
        lines.append(f"  output: {shaped}")
    if (hits := cached_line(u.models, Prices(spec.pricing), _ask_again(outcome))) is not None:
        lines.append(f"  cache: {hits}")
    if u.failures_by_code:
        codes = ", ".join(f"{c} ×{n}" for c, n in sorted(u.failures_by_code.items(), key=lambda kv: -kv[1])[:5])
        lines.append(f"  failures by code: {codes}")
    if outcome.bound_by is not None:
        lines.append(f"  bound by: {outcome.bound_by}")
    if outcome.reason and outcome.state is RunState.STOPPED:
        lines.append(f"  stopped: {outcome.reason}")
    if outcome.tasks_pending:
        lines.append(
            f"  {plural(outcome.tasks_pending, 'submitted task')} still at the provider: resuming polls them "
            "(tasks.jsonl holds their ids), it does not submit them again"
        )
    if outcome.rows_pending:
        lines.append(f"  resume with: {_resume(outcome).text()}")
    return lines


def _resume(outcome: RunOutcome) -> Rerun:
    return outcome.rerun or Rerun(outcome.spec.spec_path, outcome.spec.output_dir)


def _ask_again(outcome: RunOutcome) -> str:
    """The way out of answers taken from the response cache: the same run started over without it."""
    return f"to have the provider answer every row instead: {_resume(outcome).text(fresh=True, no_cache=True)}"


def _requests_text(u: Usage, mode: str) -> str:
    """`requests 43`; in async mode what they were: tasks submitted and the polls of their results."""
    text = f"requests {u.requests:,}"
    return text + (f" (tasks submitted {u.tasks:,}, polls {u.polls:,})" if mode == "async" else "")
