"""The driver of a scaled-out run: cuts the input into slices, runs each on a Ray worker under one shared limit,
and writes every record the workers ship into the one run directory, which only it writes.

Why the driver writes (and not the workers, into a shared folder): one writer keeps "one final record per row"
a matter of one process checking its own ledger, the run directory is the ordinary one that `status`, `report`,
`export` and `retry-failed` read, and the cluster needs no shared filesystem for it. A worker that dies loses
only what it had not shipped yet (at most SHIP_S of answers, and what was in flight); its slice is given to
another worker with the rows already recorded passed over. A driver that dies leaves a run directory a new
`submit --ray` resumes, like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from ..engine.context import RunContext
from ..engine.online import STOP_GRACE_S
from ..engine.shared import RunControl
from ..errors import BatchrunError, SpecError
from ..rows.sources import Slice, slices
from ..spec.model import JobSpec, ScaleSpec
from ..store.recordfile import DoneRows
from ..store.resume import ResumeState
from ..store.rundir import REPAIRS, TASKS, RunState
from .limit import SharedLimit, lease_from
from .worker import Assignment, limits_share, run_slice

MAX_RESTARTS = 3  # a slice whose worker died this many times stops the run (it is killing its workers)
SNAPSHOT_S = 1.0


def refuse(spec: JobSpec) -> None:
    """What does not scale out (yet), as a spec error before Ray starts."""
    if importlib.util.find_spec("ray") is None:
        raise SpecError("--ray needs Ray, an optional extra: pip install 'batchrun[ray]'")
    if spec.provider.mode == "batch":
        raise SpecError(f"{spec.called}: provider.mode: batch runs at the provider already; submit it without --ray")
    if spec.limits.max_cost:
        raise SpecError(
            f"{spec.called}: limits.max_cost is not kept across Ray workers yet; run the job without --ray, "
            "or drop the budget"
        )
    if spec.input.format == "csv":
        raise SpecError(
            f"{spec.called}: a CSV input cannot be cut into slices that workers read on their own; convert "
            "it to Parquet or JSONL first"
        )


def connect(scale: ScaleSpec) -> bool:
    """Join or start Ray; True when this call started it (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = None if scale.ray == "local" else scale.ray
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SpecError(f"cannot reach the Ray cluster at {scale.ray}: {exc}") from None
    return address is None


@dataclass
class Worker:
    part: Slice
    pid: int | None = None
    counts: dict[str, int] | None = None


class _Held:
    """What session.py asks of a lane at the end: async tasks still held for a resumed run."""

    def __init__(self, state: ResumeState) -> None:
        self.state = state

    @property
    def held(self) -> int:
        return len(self.state.tasks)


class RayRun(RunControl):
    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        assert ctx.spec.scale is not None, "a scaled-out run's spec has its scale: block"
        self.base_url, self.scale = ctx.base_url, ctx.spec.scale
        self.key_envs = [env for env, _ in ctx.keys]
        self.lane = _Held(ctx.state)
        self.workers: dict[int, Worker] = {}
        self.restarts: dict[int, int] = {}
        self.resumed = self.duplicates = 0
        self.slices_total = self.slices_done = 0
        self.worker_rss: list[float] = []
        self.shared: dict[str, Any] = {}
        self.said: set[str] = set()
        self.started_ray = False
        self.limit: Any = None
        self.flights: dict[asyncio.Task[str], Slice] = {}  # a slice's driving, by the slice
        self.interrupts = 0

    async def run(self) -> None:
        if not await self.preflight():
            return
        try:
            self.started_ray = connect(self.scale)
        except BatchrunError as exc:
            self.failed(exc)
            return
        import ray

        try:
            await self._run_on(ray)
        finally:
            if self.started_ray:
                ray.shutdown()

    async def _run_on(self, ray: Any) -> None:
        spec = self.spec
        workers = self.scale.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        cpus = min(1.0, max(0.01, float(ray.cluster_resources().get("CPU", 1)) / workers))
        self.limit = (
            ray.remote(SharedLimit).options(num_cpus=0).remote(spec.limits, spec.limits.tpm_accounting, self.key_envs)
        )
        call = lease_from(self.limit)
        prepared = ray.put(self.ctx.prepared)
        task = ray.remote(run_slice).options(num_cpus=cpus, max_retries=0)
        done = self.state.done
        last = self.last_row
        todo = deque(
            part
            for part in slices(spec.input, self.scale.slice_rows)
            if (last is None or part.first <= last) and _done_in(done, part) < part.count
        )
        self.slices_total = len(todo)
        self.log(f"on Ray: {len(todo):,} slices of up to {self.scale.slice_rows:,} rows, {workers} at a time")
        background = [asyncio.ensure_future(self.flush_forever()), asyncio.ensure_future(self._watch())]
        running = self.flights
        try:
            while (todo or running) and not self.stopping:
                while todo and len(running) < workers:
                    part = todo.popleft()
                    running[asyncio.ensure_future(self._drive(task, prepared, call, part, workers))] = part
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for flight in finished:
                    part = running.pop(flight)
                    if not flight.cancelled() and flight.result() == "died":
                        self._died(part, todo)
            if running:  # stopping: every worker hears it at its next lease, finishes what is in flight, ships it
                await self._stop_workers(ray, running)
        finally:
            for loop in background:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            with contextlib.suppress(Exception):
                self.shared = await self.limit.snapshot.remote()
            self._say(self.shared.get("messages") or [])

    async def _drive(self, task: Any, prepared: Any, call: Any, part: Slice, workers: int) -> str:
        """Run one slice on a worker until it ends ("ended") or its worker dies ("died")."""
        import ray

        state = self.state
        rows = range(part.first, part.last + 1)
        job = Assignment(
            part,
            self.base_url,
            done=tuple(r for r in rows if r in state.done),
            tasks={r: t for r, t in state.tasks.items() if part.first <= r <= part.last},
            repairs={r: s for r, s in state.repairs.items() if part.first <= r <= part.last},
            last_row=self.last_row,
            concurrency=limits_share(self.spec.limits, workers),
        )
        worker = self.workers[part.index] = Worker(part)
        stream = task.remote(prepared, job, call)
        try:
            async for ref in stream:
                message = await ref
                with self.guard():
                    self._take(worker, message)
                if message.get("end"):
                    self._ended(worker, message)
                    return "ended"
        except ray.exceptions.RayError as exc:
            self.log(f"the worker running slice {part.index} stopped ({type(exc).__name__}): {_first_line(exc)}")
            return "died"
        except asyncio.CancelledError:  # a second Ctrl-C: what the worker has in flight is given up
            with contextlib.suppress(Exception):
                ray.cancel(stream, force=True)
            raise
        finally:
            self.workers.pop(part.index, None)
        return "died"

    def _take(self, worker: Worker, message: dict[str, Any]) -> None:
        hello = message.get("hello")
        if hello:
            worker.pid = hello.get("pid")
            return
        ledger, checkpoint, state = self.ledger, self.checkpoint, self.state
        for line in message.get("results", ()):
            if not ledger.commit_line(line, failed=False):
                self.duplicates += 1
        for line in message.get("failures", ()):
            if not ledger.commit_line(line, failed=True):
                self.duplicates += 1
        for key, name, note in (("tasks", TASKS, state.note_task), ("repairs", REPAIRS, state.note_repair)):
            for line in message.get(key, ()):  # what a resumed slice needs: written and held as a resume reads it
                entry = orjson.loads(line)
                if entry["row"] not in state.done:
                    checkpoint.append_side(name, line)
                    note(entry["row"], entry)
        counts = message.get("counts")
        if counts:
            before = worker.counts or dict.fromkeys(counts, 0)
            self.progress.requests += counts["requests"] - before["requests"]
            self.progress.retries += counts["retries"] - before["retries"]
            self.progress.rate_limited += counts["rate_limited"] - before["rate_limited"]
            worker.counts = counts
        self._say(message.get("logs", ()))

    def _ended(self, worker: Worker, message: dict[str, Any]) -> None:
        self.slices_done += 1
        if message.get("rss_mb"):
            self.worker_rss.append(float(message["rss_mb"]))
        if message.get("crash"):
            self.crashed(RuntimeError(f"a worker failed on slice {worker.part.index}: {message['crash']}"))
        elif message.get("error"):
            code = message.get("exit_code") or 1
            self.failed(_WorkerError(str(message["error"]), int(code)))

    def _died(self, part: Slice, todo: deque[Slice]) -> None:
        """Give a dead worker's slice to another (first in line), the rows it shipped passed over."""
        if self.stopping:
            return
        tries = self.restarts[part.index] = self.restarts.get(part.index, 0) + 1
        if tries > MAX_RESTARTS:
            self.failed(
                _WorkerError(
                    f"slice {part.index} (rows {part.first:,}-{part.last:,}) lost its worker {tries} times; the run "
                    "stopped (resumable): see the Ray logs (ray logs) for why its workers died",
                    1,
                )
            )
            return
        self.resumed += 1
        left = part.count - _done_in(self.state.done, part)
        self.log(f"slice {part.index} goes to another worker: {left:,} of its {part.count:,} rows still to do")
        todo.appendleft(part)

    async def _stop_workers(self, ray: Any, running: dict[asyncio.Task[str], Slice]) -> None:
        with contextlib.suppress(Exception):
            await self.limit.stop.remote()
        grace = STOP_GRACE_S + 2.0
        _, late = await asyncio.wait(running, timeout=grace)
        for flight in late:
            flight.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _watch(self) -> None:
        """The shared limit's figures for usage.json, and the lines its throttles logged."""
        while True:
            await asyncio.sleep(SNAPSHOT_S)
            with contextlib.suppress(Exception):
                self.shared = await self.limit.snapshot.remote()
                self._say(self.shared.get("messages") or [])

    def _say(self, lines: Any) -> None:
        """Each distinct line once: several workers often see the same thing."""
        for line in lines:
            if line not in self.said:
                self.said.add(line)
                self.log(line)

    def interrupt(self, terminal: bool = True) -> None:
        """Ctrl-C / SIGTERM: every worker stops taking rows and ships what is in flight; a second one stops the
        workers at once."""
        self.interrupts += 1
        if self.interrupts == 1:
            again = " (Ctrl-C again to stop at once)" if terminal else ""
            self.log(f"stopping: the workers finish what is in flight and ship it{again}")
            self.stop(RunState.INTERRUPTED, "interrupted")
        else:
            for flight in self.flights:
                flight.cancel()

    def stopped(self) -> None:
        if self.limit is not None:
            self.limit.stop.remote()

    def facts(self) -> dict[str, Any]:
        keys = self.shared.get("keys") or {}
        first = next(iter(keys.values()), None)
        return {
            **({"throttle": first} if first else {}),
            **({"key_throttles": keys} if len(keys) > 1 else {}),
            "ray": {
                "slices": self.slices_total,
                "slices_done": self.slices_done,
                "slices_resumed": self.resumed,
                "duplicates_dropped": self.duplicates,
                "workers": [{"slice": w.part.index, "pid": w.pid} for w in self.workers.values() if w.pid is not None],
                "worker_peak_rss_mb": max(self.worker_rss) if self.worker_rss else None,
                "lease_calls": self.shared.get("calls"),
            },
        }


class _WorkerError(BatchrunError):
    """An error a worker stopped on, with the exit status it carries."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _done_in(done: DoneRows, part: Slice) -> int:
    return done.count_upto(part.last) - (done.count_upto(part.first - 1) if part.first > 1 else 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
