"""A worker of a scaled-out run: one slice of the input through batchrun's own run loop and lanes, under the
shared limit, its records shipped to the driver as they are made (the driver alone writes the run directory).

The run loop runs on an event loop in a thread of its own; the Ray task is a generator that yields what that
loop ships, every SHIP_S: final records, the tasks.jsonl and repairs.jsonl lines a resumed slice needs, log lines,
and counters. The last message says how the slice ended."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from ..engine.context import RunContext
from ..engine.job import Prepared, provider_keys
from ..engine.online import RunLoop
from ..engine.progress import Progress
from ..errors import BatchrunError
from ..limits.throttle import Throttle
from ..rows.snapshot import InputScan
from ..rows.sources import RawRow, Slice, slice_rows
from ..spec.model import Limits
from ..store.cache import Cache
from ..store.checkpoint import Checkpoint
from ..store.resume import ResumeState
from ..store.rundir import RunState
from ..store.usage import peak_rss_mb
from .limit import Call, Lease, LeasedThrottle

SHIP_S = 0.1


@dataclass(frozen=True)
class Assignment:
    """One slice for one worker, with what the run directory already holds of it."""

    part: Slice
    base_url: str
    done: tuple[int, ...] = ()  # its rows that hold a final record
    tasks: Mapping[int, dict[str, Any]] = field(default_factory=dict)  # async: tasks to poll, not submit again
    repairs: Mapping[int, list[dict[str, Any]]] = field(default_factory=dict)  # repair steps to go on from
    last_row: int | None = None  # submit --limit
    concurrency: int | None = None  # this worker's share of limits.concurrency


class Outbox:
    """What the worker has made since the last shipment; filled on the run's loop, emptied there too."""

    def __init__(self) -> None:
        self.lines: dict[str, list[bytes]] = {"results": [], "failures": [], "tasks": [], "repairs": []}
        self.logs: list[str] = []

    def log(self, line: str) -> None:
        """A line for the driver to print: into the list of the next shipment, whichever list that is by then."""
        self.logs.append(line)

    def take(self, progress: Progress, **extra: Any) -> dict[str, Any]:
        lines, self.lines = self.lines, {name: [] for name in self.lines}
        logs, self.logs = self.logs, []
        counts = {"requests": progress.requests, "retries": progress.retries, "rate_limited": progress.rate_limited}
        return {**lines, "logs": logs, "counts": counts, **extra}


class ShippingCheckpoint(Checkpoint):
    """A checkpoint whose lines go to the driver instead of a file: the run directory has one writer."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__(Path(os.devnull), secrets)
        self.out = Outbox()
        self.manifest = {"ids_checked": True}  # the driver checked the ids before any slice went out

    def append_line(self, line: bytes, *, failed: bool) -> None:
        self.out.lines["failures" if failed else "results"].append(self.redact(line))

    def append_task(self, entry: Mapping[str, Any]) -> None:
        self.out.lines["tasks"].append(self.redact(orjson.dumps(entry) + b"\n"))

    async def tasks_durable(self) -> None:
        """Durable once the driver has it: a worker killed before its next shipment sends those rows again."""

    def append_repair(self, entry: Mapping[str, Any]) -> None:
        self.out.lines["repairs"].append(self.redact(orjson.dumps(entry) + b"\n"))

    def write_usage(self, data: dict[str, Any]) -> None:
        """The driver keeps usage.json."""

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest

    def close(self) -> None:
        """Nothing is open."""


def run_slice(prepared: Prepared, job: Assignment, call: Call) -> Iterator[dict[str, Any]]:
    """The body of a worker's Ray task: its messages, the last with `end: true`."""
    shipped: queue.Queue[dict[str, Any]] = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(
        target=lambda: asyncio.run(_run(prepared, job, call, shipped.put, stop)), name="batchrun-slice", daemon=True
    )
    thread.start()
    try:
        while True:
            message = shipped.get()
            yield message
            if message.get("end"):
                break
    finally:
        stop.set()  # cancelled (Ray's cancel, the driver gone): stop sending; what is in flight is lost with us
        thread.join(timeout=2.0)


class WorkerRun:
    """batchrun's run loop on rows handed over by a driver, under the shared limit: one per worker process, its
    leases (and the stock they hold) kept from one run to the next."""

    def __init__(self, prepared: Prepared, call: Call, concurrency: int | None) -> None:
        spec = prepared.spec
        self.keys = provider_keys(spec.provider)  # from this worker's environment: keys never travel with the job
        self.secrets = [key for _, key in self.keys if key]
        self.checkpoint = ShippingCheckpoint(self.secrets)

        warn = self.checkpoint.out.log
        self.cache = Cache(spec.cache, secrets=self.secrets, warn=warn) if spec.cache.mode != "off" else None
        self.limits = spec.limits.model_copy(update={"concurrency": concurrency}) if concurrency else spec.limits
        self.accounting = spec.limits.tpm_accounting
        self.call = call
        self.leases: dict[str, Lease] = {}
        self.serving: list[asyncio.Future[None]] = []
        self.runners: set[RunLoop] = set()

    def throttle(self, env: str, codes: frozenset[str]) -> Throttle:
        lease = self.leases.get(env)
        if lease is None:
            lease = self.leases[env] = Lease(env, self.call, self._stop)
            self.serving.append(asyncio.ensure_future(lease.serve()))
        return LeasedThrottle(self.limits, self.accounting, lease, self.checkpoint.out.log, codes)

    def _stop(self) -> None:
        """The driver is stopping the run: take no more rows, finish (and ship) what is in flight."""
        for runner in self.runners:
            runner.stop(RunState.INTERRUPTED, "stopped by the driver")

    async def run(
        self,
        prepared: Prepared,
        state: ResumeState,
        source: Callable[[Callable[[int], bool]], Iterator[RawRow]],
        base_url: str,
        progress: Progress,
        last_row: int | None = None,
        checkpoint: ShippingCheckpoint | None = None,
    ) -> RunLoop:
        """Run the rows to their records, shipped through `checkpoint` (by default the worker's own)."""
        checkpoint = checkpoint or self.checkpoint
        ctx = RunContext(
            prepared,
            checkpoint,
            state,
            base_url,
            self.keys,
            progress,
            checkpoint.out.log,  # bound to the outbox: take() swaps its list for a new one
            last_row,
            self.cache,
        )
        runner = RunLoop(ctx, throttle=self.throttle, source=source)
        self.runners.add(runner)
        try:
            await runner.run()
        finally:
            self.runners.discard(runner)
        return runner

    async def close(self) -> None:
        """Give back every lease's stock; close the cache."""
        for task in self.serving:
            task.cancel()
        await asyncio.gather(*self.serving, return_exceptions=True)
        for lease in self.leases.values():
            with contextlib.suppress(Exception):
                await lease.close()
        if self.cache is not None:
            self.cache.close()


async def _run(
    prepared: Prepared, job: Assignment, call: Call, ship: Callable[[dict[str, Any]], None], stop: threading.Event
) -> None:
    part = job.part
    ship({"hello": {"pid": os.getpid(), "slice": part.index}})
    box = Outbox()
    progress = Progress(part.count, len(job.done), enabled=False, desc=prepared.spec.name)
    try:
        worker = WorkerRun(prepared, call, job.concurrency)
        box = worker.checkpoint.out
        state = ResumeState(tasks=dict(job.tasks), repairs={row: list(steps) for row, steps in job.repairs.items()})
        for row in job.done:
            state.done.add(row)
        spec = prepared.spec
        shipper = asyncio.ensure_future(_ship_forever(box, progress, ship, stop, worker))
        try:
            runner = await worker.run(
                replace(prepared, scan=InputScan(part.count, prepared.scan.digest)),
                state,
                lambda skip: slice_rows(spec.input, part, skip),
                job.base_url,
                progress,
                job.last_row,
            )
        finally:
            shipper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shipper
            await worker.close()
        error = runner.error
        ship(
            box.take(
                progress,
                end=True,
                state=(runner.stopping or RunState.FINISHED).value,
                error=str(error) if error else None,
                exit_code=error.exit_code if error else None,
                crash=repr(runner.crash) if runner.crash else None,
                rss_mb=peak_rss_mb(),
            )
        )
    except BatchrunError as exc:  # this worker cannot run the slice (no key in its environment, no input)
        ship(box.take(progress, end=True, state="stopped", error=str(exc), exit_code=exc.exit_code))
    except Exception as exc:
        ship(box.take(progress, end=True, state="stopped", crash=repr(exc)))


async def _ship_forever(
    box: Outbox, progress: Progress, ship: Callable[[dict[str, Any]], None], stop: threading.Event, worker: WorkerRun
) -> None:
    while True:
        await asyncio.sleep(SHIP_S)
        ship(box.take(progress))
        if stop.is_set():  # nobody is left to take the records: stop at once
            for runner in worker.runners:
                runner.interrupt(terminal=False)
                runner.interrupt(terminal=False)


def limits_share(limits: Limits, workers: int) -> int | None:
    """A worker's share of limits.concurrency (the provider counts requests in flight across all of them)."""
    if not limits.concurrency:
        return None
    return max(1, -(-limits.concurrency // workers))
