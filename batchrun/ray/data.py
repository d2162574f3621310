"""`map_rows`: batchrun's requests as a step of a Ray Data pipeline, under one shared limit.

    import ray, batchrun.ray
    ds = ray.data.read_parquet("s3://bucket/reviews/")
    out = batchrun.ray.map_rows(ds, {"model": "glm-4-flash", "provider": "zhipu",
                                     "input": {"template": "Label the sentiment: {text}"}})
    out.write_parquet("s3://bucket/labelled/")

Each row comes back with its own columns and batchrun's: answer, reasoning, finish_reason, tokens, attempts,
latency, cached, status, and error_code/error_message for a row that failed (a failed row is a row, never a failed
task), with structured output's fields as typed columns. Rows are retried, paced and repaired exactly as in a run; there
is no run directory (Ray Data owns where the rows go), so a pipeline that is stopped starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ..commands.columns import Shape, flatten, output_arrays, output_fields
from ..engine.job import Prepared
from ..engine.progress import Progress
from ..errors import SpecError
from ..rows.request import RequestBuilder
from ..rows.snapshot import InputScan
from ..rows.sources import RawRow
from ..spec.model import JobSpec
from ..spec.parse import parse_spec
from ..spec.simulator import SimulateSpec
from ..spec.yamlfile import load_yaml
from ..store.resume import ResumeState
from .limit import SharedLimit, lease_from
from .worker import ShippingCheckpoint, WorkerRun, limits_share

BATCH_ROWS = 256
BATCHES_AT_ONCE = 4  # batches one worker runs at a time: a batch's slowest row does not idle the worker
LOG = logging.getLogger("batchrun")


def map_rows(
    dataset: Any,
    spec: str | os.PathLike[str] | Mapping[str, Any],
    *,
    workers: int | None = None,
    batch_size: int = BATCH_ROWS,
    base_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """`dataset` with batchrun's answer columns added, each row sent as the job spec says (its `input:` says how a
    row becomes a request; there is no input.path). `workers`: actors at a time (default: the cluster's CPUs)."""
    import ray

    job = data_spec(spec, base_dir)
    if job.provider.mode not in ("sync", "stream"):
        raise SpecError(f"map_rows sends each row online: provider.mode {job.provider.mode!r} does not apply")
    if job.limits.max_cost:
        raise SpecError("map_rows keeps no ledger to hold limits.max_cost against: drop the budget")
    cpus = float(ray.cluster_resources().get("CPU", 1))
    workers = workers or max(1, int(cpus))
    limit = (
        ray.remote(SharedLimit).options(num_cpus=0).remote(job.limits, job.limits.tpm_accounting, job.provider.key_envs)
    )
    simulator = None
    base_url = job.provider.base_url
    if job.provider.simulate is not None:  # one simulated provider for every worker, as a real one would be
        simulator = ray.remote(SimulatedProvider).options(num_cpus=0).remote(job.provider.simulate)
        base_url = ray.get(simulator.url.remote())
    return dataset.map_batches(
        RowMapper,
        fn_constructor_kwargs={
            "job": job,
            "limit": limit,
            "base_url": base_url,
            "concurrency": limits_share(job.limits, workers * BATCHES_AT_ONCE),
            "simulator": simulator,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=min(1.0, cpus / workers),
        **_actors(ray, workers),
    )


def _actors(ray: Any, workers: int) -> dict[str, Any]:
    """`workers` actors, each running BATCHES_AT_ONCE batches at a time, in the words this Ray knows."""
    strategy = ray.data.ActorPoolStrategy
    if "max_concurrent_calls_per_actor" in inspect.signature(strategy).parameters:
        return {"compute": strategy(size=workers, max_concurrent_calls_per_actor=BATCHES_AT_ONCE)}
    return {"concurrency": workers, "max_concurrency": BATCHES_AT_ONCE}


def data_spec(spec: str | os.PathLike[str] | Mapping[str, Any], base_dir: str | os.PathLike[str] | None) -> JobSpec:
    """A job spec whose rows are a dataset's: a file or a dict, with no input.path."""
    if isinstance(spec, Mapping):
        base = Path(base_dir or Path.cwd()).resolve()
        return parse_spec(dict(spec), spec_path=base / "map_rows.yaml", source="map_rows spec", rows_given=True)
    path = Path(spec)
    data = load_yaml(path, "job spec")  # its input.path, if any, is passed over: the rows are the dataset's
    if isinstance(data, Mapping) and isinstance(data.get("input"), Mapping) and "path" in data["input"]:
        data = {**data, "input": {k: v for k, v in data["input"].items() if k != "path"}}
    elif isinstance(data, Mapping) and isinstance(data.get("input"), str):
        data = {k: v for k, v in data.items() if k != "input"}
    return parse_spec(data, spec_path=path.resolve(), source=str(path), rows_given=True)


class RowMapper:
    """One Ray Data actor: an event loop in a thread, the shared limit's leases kept from batch to batch."""

    def __init__(self, job: JobSpec, limit: Any, base_url: str, concurrency: int | None, simulator: Any = None) -> None:
        self.job, self.base_url, self.simulator = job, base_url, simulator
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="batchrun-rows", daemon=True)
        self.thread.start()
        self.builder: RequestBuilder | None = None
        self.shape = Shape(
            embeddings=job.endpoint == "embeddings",
            fields=output_fields(job.output.schema) if job.output is not None else (),
            typed=True,
        )
        prepared = Prepared(job, InputScan(0, ""), RequestBuilder(job, None), {})
        self.worker = WorkerRun(prepared, lease_from(limit), concurrency)

    def __call__(self, batch: Any) -> Any:
        rows = batch.to_pylist()
        if not rows:
            return batch
        records = asyncio.run_coroutine_threadsafe(self._run(rows), self.loop).result()
        flat = [flatten(i, records.get(i), self.shape) for i in range(1, len(rows) + 1)]
        for name, column in output_arrays(flat, self.shape.fields).items():
            if name == "row":
                continue
            if name in batch.schema.names:
                batch = batch.set_column(batch.schema.get_field_index(name), name, column)
            else:
                batch = batch.append_column(name, column)
        return batch

    async def _run(self, rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        job = self.job
        if self.builder is None:  # how a row becomes a request is settled once, from the first row
            self.builder = RequestBuilder(job, rows[0])
        prepared = Prepared(job, InputScan(len(rows), ""), self.builder, {})
        checkpoint = ShippingCheckpoint(self.worker.secrets)
        progress = Progress(len(rows), 0, enabled=False, desc=job.name)

        def source(skip: Any) -> Any:
            return (RawRow(i, row) for i, row in enumerate(rows, 1) if not skip(i))

        runner = await self.worker.run(prepared, ResumeState(), source, self.base_url, progress, checkpoint=checkpoint)
        if runner.error is not None:  # every row is doomed (a refused key): that is the pipeline's error
            raise runner.error
        if runner.crash is not None:
            raise runner.crash
        out = checkpoint.out.take(progress)
        for line in [*out["logs"], *self.worker.checkpoint.out.take(progress)["logs"]]:
            LOG.warning("batchrun: %s", line)
        records: dict[int, dict[str, Any]] = {}
        for line in (*out["results"], *out["failures"]):
            rec = orjson.loads(line)
            records[rec["row"]] = rec
        return records

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.worker.close(), self.loop).result(timeout=5)
            self.loop.call_soon_threadsafe(self.loop.stop)


class SimulatedProvider:
    """The simulated provider as a Ray actor: one provider (one rate limit) that every worker calls."""

    def __init__(self, cfg: SimulateSpec) -> None:
        import ray

        # on one machine, loopback; across machines, this node's address (the simulator holds no key)
        host = ray.util.get_node_ip_address() if len(ray.nodes()) > 1 else "127.0.0.1"
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="batchrun-simulator", daemon=True).start()
        self._url = asyncio.run_coroutine_threadsafe(self._start(cfg, host), self.loop).result()

    async def _start(self, cfg: SimulateSpec, host: str) -> str:
        from ..sim.server import serve

        self._serving = serve(cfg, host=host)
        url: str = await self._serving.__aenter__()
        return url

    def url(self) -> str:
        return self._url
