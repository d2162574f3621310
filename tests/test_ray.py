"""Scaled out on Ray: slices of the input on Ray workers, one shared limit, one run directory written by the
driver. The shared limit and the slicing are plain code, tested here without Ray; the rest on a local Ray with
2 CPUs (skipped, saying why, only where the `ray` extra is not installed)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.limits.hints import RateHints
from batchrun.ray.limit import Grant, Lease, Report, SharedLimit
from batchrun.rows.sources import iter_rows, slice_rows, slices
from batchrun.session import run_job
from batchrun.spec.model import InputSpec, Limits
from batchrun.spec.parse import load_spec

from .helpers import cli, make_job, read_jsonl, submit
from .simserver import SimServer
from .test_outside import BatchOutputLine
from .test_structured import SCHEMA

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="the ray extra is not installed (pip install 'batchrun[ray]')")


# --- slicing the input ---------------------------------------------------------------------------------------


def test_jsonl_slices_cover_every_row_once_at_line_ends(tmp_path: Path) -> None:
    lines = [orjson.dumps({"id": i, "text": "x" * (i % 13)}) if i % 9 else b"" for i in range(1, 101)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    spec = InputSpec(path=path, format="jsonl")
    parts = slices(spec, 16)
    assert [p.first for p in parts] == list(range(1, 101, 16))
    assert parts[-1].last == 100 and parts[-1].end == path.stat().st_size
    rows = [r for p in parts for r in slice_rows(spec, p)]
    assert [(r.row, r.data) for r in rows] == [(r.row, r.data) for r in iter_rows(spec)]
    assert sum(p.count for p in parts) == len(rows) == 89  # blank lines are not rows
    skipped = list(slice_rows(spec, parts[1], skip=lambda row: row % 2 == 0))
    assert [r.row for r in skipped] == [r for r in range(17, 33) if r % 2 and r % 9]


def test_parquet_slices_are_whole_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(1000)], "n": list(range(1000))}), path, row_group_size=150)
    spec = InputSpec(path=path, format="parquet", prompt_field="n")
    parts = slices(spec, 400)
    assert [p.groups for p in parts] == [(0, 1, 2), (3, 4, 5), (6,)]
    assert [(p.first, p.last) for p in parts] == [(1, 450), (451, 900), (901, 1000)]
    rows = [r for p in parts for r in slice_rows(spec, p)]
    assert [r.row for r in rows] == list(range(1, 1001))
    assert rows[450].data == {"id": "r450", "n": 450}


# --- the shared limit, without Ray ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_shared_limit_grants_what_its_bucket_holds_and_takes_back_what_was_not_used() -> None:
    shared = SharedLimit(Limits(rpm=600), "reserve", ["K"])  # 10 a second, a bucket of about 1 s
    t0 = time.monotonic()
    first = shared.lease("K", 8, 0.0, Report())
    assert first.requests == 8 and first.tokens is None  # no TPM known: tokens are not held back
    second = shared.lease("K", 8, 0.0, Report())
    assert second.requests is not None and second.requests < 8 and second.wait_s > 0
    elapsed = time.monotonic() - t0
    assert 8 + second.requests <= 10 + 10 * elapsed  # a bucket's worth, and what accrued meanwhile
    shared.lease("K", 0, 0.0, Report(returned_requests=5))  # a worker gives back what it did not use
    assert 5 <= (shared.lease("K", 8, 0.0, Report()).requests or 0) <= 8  # those five, and what accrued
    time.sleep(0.5)
    assert shared.lease("K", 8, 0.0, Report()).requests >= 4  # refilled at the rate


def test_no_known_limit_leases_without_bound_until_429s_teach_one() -> None:
    clock = Clock()
    shared = SharedLimit(Limits(), "auto", ["K"], clock)
    assert shared.lease("K", 5, 100.0, Report()) == Grant(None, None, 0.0, "actual")
    # Workers report what they sent (120 a second for 2 s) and the 429s the provider answered.
    sends = [(2.0 - i * 0.1, 12) for i in range(20)]
    limited = [(0.1 + i * 0.001, {"error": {"code": "rate_limit", "message": "slow down"}}) for i in range(30)]
    clock.now += 2.0
    shared.lease("K", 0, 0.0, Report(sends=sends, limited=limited))
    clock.now += 1.0
    grant = shared.lease("K", 1000, 0.0, Report())
    assert grant.requests is not None  # a limit now, learned from what every worker reported
    assert shared.snapshot()["keys"]["K"]["rpm"] < 120 * 60


def test_a_named_limit_or_rate_headers_reported_by_any_worker_hold_all_of_them() -> None:
    clock = Clock()
    shared = SharedLimit(Limits(), "reserve", ["A", "B"], clock)
    message = "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 300, Used 300, Requested 1."
    body = {"error": {"code": "rate_limit_exceeded", "message": message}}
    shared.lease("A", 0, 0.0, Report(limited=[(0.1, body)]))
    assert shared.snapshot()["keys"]["A"]["rpm"] == pytest.approx(300, rel=0.02)
    assert shared.snapshot()["keys"]["B"]["rpm"] is None  # each key of a pool has its own limit
    shared.lease("B", 0, 0.0, Report(hints=RateHints(limit_requests=60, limit_tokens=6000)))
    assert shared.snapshot()["keys"]["B"]["rpm"] == pytest.approx(60, rel=0.02)
    grant = shared.lease("B", 1, 6000.0, Report())
    assert grant.tokens == 6000.0  # a full bucket admits a request as large as itself
    assert shared.lease("B", 1, 100.0, Report()).tokens == 0.0  # then it is empty


def test_a_stopping_run_is_heard_at_every_workers_next_lease() -> None:
    shared = SharedLimit(Limits(rpm=600), "reserve", ["K"], Clock())
    shared.stop()
    assert shared.lease("K", 5, 0.0, Report()).stop


def test_leases_of_many_workers_never_exceed_the_shared_rate() -> None:
    """Four workers take as fast as they can for a while: together they stay within the rate and one burst."""

    async def main() -> tuple[int, float]:
        shared = SharedLimit(Limits(rpm=1200), "reserve", ["K"])  # 20 a second

        async def call(key: str, requests: int, tokens: float, report: Report) -> Grant:
            await asyncio.sleep(0.002)  # an actor call's round trip
            return shared.lease(key, requests, tokens, report)

        stops: list[int] = []
        leases = [Lease("K", call, lambda: stops.append(1)) for _ in range(4)]
        taken = [0] * 4

        async def worker(i: int) -> None:
            while True:
                await leases[i].take(0.0)
                taken[i] += 1

        t0 = time.monotonic()
        tasks = [asyncio.ensure_future(lease.serve()) for lease in leases]
        tasks += [asyncio.ensure_future(worker(i)) for i in range(4)]
        await asyncio.sleep(1.5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert min(taken) > 0  # every worker got a share
        return sum(taken), time.monotonic() - t0

    total, elapsed = asyncio.run(main())
    assert total <= 20 * elapsed * 0.995 + 20 + 4  # the rate, a bucket's burst, and a request in each stock


# --- on a local Ray -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray() -> Any:
    if not HAVE_RAY:
        pytest.skip("the ray extra is not installed (pip install 'batchrun[ray]')")
    import ray

    # The workers' environment is the one they start with: a test's own variables would not reach them.
    env = {"env_vars": {"ZHIPUAI_API_KEY": "test-key-not-secret"}}
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2, runtime_env=env
    )
    yield ray
    ray.shutdown()


def _job(tmp_path: Path, url: str, n: int, **overrides: Any) -> Path:
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(1, n + 1)]
    return make_job(tmp_path, url, rows, cache={"path": str(tmp_path / "cache.sqlite3")}, **overrides)


def _final_rows(run: Path) -> Counter[int]:
    return Counter(rec["row"] for name in ("results.jsonl", "failures.jsonl") for rec in read_jsonl(run / name))


def _driver_at(ray: Any, job: Path, run: Path, *, rows: int) -> tuple[list[str], subprocess.Popen[str]]:
    """`submit --ray` in a process of its own, joining the test's cluster, once it has recorded `rows` rows; and
    the command, to run again."""
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "batchrun.cli", "submit", str(job), "--no-progress", "--ray", address]
    driver = subprocess.Popen(cmd, cwd=job.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_final_rows(run)) < rows:
        time.sleep(0.05)
    return cmd, driver


@needs_ray
def test_a_job_on_ray_writes_one_final_record_per_row_that_every_command_reads(
    tmp_path: Path, local_ray: Any, start_sim: Any
) -> None:
    server = start_sim(error_rate=0.05, seed=3)
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(1, 1201)]
    rows[10] = {"id": "bad"}  # no prompt: a failure record, never sent
    rows[20] = {"id": "r5", "prompt": "a repeated id"}
    job = make_job(tmp_path, server.base_url, rows, cache="off", scale={"slice_rows": 250, "workers": 3})
    ran = submit(job)
    assert ran.exit_code == 3, ran.output
    assert "on Ray: 5 slices of up to 250 rows, 3 at a time" in ran.stderr
    run = tmp_path / "runs" / "job"
    assert _final_rows(run) == Counter(range(1, 1201))
    for rec in read_jsonl(run / "results.jsonl") + read_jsonl(run / "failures.jsonl"):
        BatchOutputLine.model_validate(rec)
    failures = {rec["custom_id"]: rec["error"]["code"] for rec in read_jsonl(run / "failures.jsonl")}
    assert failures == {"bad": "invalid_input", "r5": "duplicate_id"}
    usage = orjson.loads((run / "usage.json").read_bytes())
    assert usage["rows_succeeded"] == 1198 and usage["state"] == "finished_with_failures"
    assert usage["ray"]["slices_done"] == 5 and usage["ray"]["duplicates_dropped"] == 0
    assert server.stats()["billed_twice"] == 0
    assert cli("status", str(run)).exit_code == 0
    assert "1,198" in cli("report", str(run)).stdout
    assert cli("export", str(run), "--to", str(tmp_path / "out.parquet")).exit_code == 0
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 1200
    # retry-failed on the same directory, still on Ray: only the invalid row is sent again, and fails again
    again = cli("retry-failed", str(run), "--code", "invalid_input", "--no-progress")
    assert again.exit_code == 3 and _final_rows(run) == Counter(range(1, 1201))


@needs_ray
def test_a_worker_killed_mid_slice_loses_no_row_and_duplicates_none(
    tmp_path: Path, local_ray: Any, start_sim: Any
) -> None:
    server = start_sim(latency=0.1, latency_dist="fixed")
    job = _job(tmp_path, server.base_url, 1200, limits={"concurrency": 16}, scale={"slice_rows": 300, "workers": 4})
    spec = load_spec(job)
    run = spec.output_dir
    killed: list[int] = []

    def kill_one() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            time.sleep(0.1)
            try:
                usage = orjson.loads((run / "usage.json").read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            workers = usage.get("ray", {}).get("workers") or []
            if usage["rows_total"] - usage["rows_pending"] >= 200 and workers:
                os.kill(workers[0]["pid"], signal.SIGKILL)
                killed.append(workers[0]["slice"])

    killer = threading.Thread(target=kill_one)
    killer.start()
    outcome = asyncio.run(run_job(spec, progress=False, log=lambda _: None))
    killer.join()
    assert killed, "no worker was running long enough to be killed"
    assert outcome.exit_code == 0
    assert _final_rows(run) == Counter(range(1, 1201))  # every row exactly once
    usage = orjson.loads((run / "usage.json").read_bytes())
    assert usage["ray"]["slices_resumed"] >= 1
    stats = server.stats()
    # sent again: only what the dead worker had in flight or had not shipped yet (16 in flight, 0.1 s of answers)
    assert 1200 <= stats["requests"] <= 1200 + 40


@needs_ray
def test_a_killed_driver_resumes_on_ray_without_sending_a_recorded_row_again(
    tmp_path: Path, local_ray: Any, start_sim: Any
) -> None:
    server = start_sim(latency=0.05, latency_dist="fixed")
    job = _job(tmp_path, server.base_url, 1000, limits={"concurrency": 8}, scale={"slice_rows": 200, "workers": 2})
    run = tmp_path / "runs" / "job"
    cmd, driver = _driver_at(local_ray, job, run, rows=200)
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    assert 200 <= len(_final_rows(run)) < 1000
    time.sleep(1.0)  # the dead driver's workers die with it (Ray's fate sharing)
    before = server.stats()["requests"]
    recorded = len(_final_rows(run))
    resumed = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{recorded:,} of 1,000 rows already done" in resumed.stderr
    assert _final_rows(run) == Counter(range(1, 1001))
    assert server.stats()["requests"] - before == 1000 - recorded  # no recorded row was asked again


@needs_ray
def test_ctrl_c_on_ray_records_what_was_in_flight_and_the_same_command_resumes(
    tmp_path: Path, local_ray: Any, start_sim: Any
) -> None:
    server = start_sim(latency=0.1, latency_dist="fixed")
    job = _job(tmp_path, server.base_url, 800, limits={"concurrency": 8}, scale={"slice_rows": 200, "workers": 2})
    run = tmp_path / "runs" / "job"
    cmd, driver = _driver_at(local_ray, job, run, rows=100)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err
    assert "stopping: the workers finish what is in flight and ship it" in err
    recorded = _final_rows(run)
    assert 100 <= len(recorded) < 800 and max(recorded.values()) == 1
    assert server.stats()["requests"] == len(recorded)  # every request sent has its record: none was lost
    assert orjson.loads((run / "manifest.json").read_bytes())["state"] == "interrupted"
    resumed = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert _final_rows(run) == Counter(range(1, 801)) and server.stats()["requests"] == 800


@needs_ray
def test_zhipu_async_tasks_with_structured_repairs_run_on_ray_and_usage_is_the_bill(
    tmp_path: Path, local_ray: Any, start_sim: Any
) -> None:
    server = start_sim(task_s=(0.05, 0.2))
    root = server.base_url.rsplit("/v1", 1)[0]
    rows = [{"id": f"r{i}", "prompt": f"label {i}" + (" #sim:json=type" if i % 10 == 0 else "")} for i in range(60)]
    job = make_job(
        tmp_path,
        "",
        rows,
        provider={"name": "zhipu", "base_url": root + "/api/paas/v4", "mode": "async"},
        limits={"concurrency": 8, "poll_rps": 200},
        output={"schema": SCHEMA},
        params={"max_tokens": 200},
        cache="off",
        scale={"slice_rows": 25, "workers": 2},
    )
    ran = submit(job, env={"ZHIPUAI_API_KEY": "test-key-not-secret"})
    assert ran.exit_code == 0, ran.output
    run = tmp_path / "runs" / "job"
    results = {r["custom_id"]: r for r in read_jsonl(run / "results.jsonl")}
    assert len(results) == 60
    for rec in results.values():
        jsonschema.validate(rec["output"], SCHEMA)
    assert all(len(results[f"r{i}"].get("repairs", [])) == (1 if i % 10 == 0 else 0) for i in range(60))
    stats = server.stats()
    assert stats["tasks_submitted"] == 66
    assert len(read_jsonl(run / "tasks.jsonl")) == 66 and len(read_jsonl(run / "repairs.jsonl")) == 6
    usage = orjson.loads((run / "usage.json").read_bytes())
    assert usage["prompt_tokens"] == stats["billed_prompt_tokens"]
    assert usage["completion_tokens"] == stats["billed_completion_tokens"]


@needs_ray
def test_a_ray_data_pipeline_gets_every_row_back_with_its_answer_or_its_error(local_ray: Any) -> None:
    import batchrun.ray

    rows = [{"id": i, "text": f"item {i}"} for i in range(10_000)]
    for i in range(0, 10_000, 1000):
        rows[i]["text"] = f"item {i} #sim:status=400"  # the provider refuses these: failed rows, not failed tasks
    spec = {
        "model": "sim-small",
        "provider": {"name": "simulated", "simulate": {"latency": 0.0}},
        "input": {"template": "Say: {text}", "id_field": "id"},
        "params": {"max_tokens": 16},
        "retry": {"max_attempts": 2, "backoff_s": 0, "max_backoff_s": 0},
        "cache": "off",
    }
    out = batchrun.ray.map_rows(local_ray.data.from_items(rows), spec, workers=2).take_all()
    assert sorted(r["id"] for r in out) == list(range(10_000))
    by_id = {r["id"]: r for r in out}
    assert all(by_id[i]["error_code"] == "sim_400" and by_id[i]["answer"] is None for i in range(0, 10_000, 1000))
    fine = [r for r in out if r["id"] % 1000]
    assert all(r["status"] == "succeeded" and r["answer"].startswith("[simulated sim-small] Say: item") for r in fine)
    assert all(r["text"] == f"item {r['id']}" for r in fine)  # the row's own columns are kept


@needs_ray
def test_ray_data_workers_share_one_limit(local_ray: Any, start_sim: Any) -> None:
    """Two actors running four batches each would send eight times the limit if each paced itself."""
    import batchrun.ray

    server = start_sim(rpm=6000, latency=0.05)
    spec = {
        "model": "sim-small",
        "provider": {"name": "simulated", "base_url": server.base_url},
        "input": {"template": "Say: {text}"},
        "limits": {"rpm": 6000},
        "retry": {"max_attempts": 5, "backoff_s": 0.1},
        "cache": "off",
    }
    rows = [{"text": f"item {i}"} for i in range(600)]
    out = batchrun.ray.map_rows(local_ray.data.from_items(rows), spec, workers=2, batch_size=50).take_all()
    assert len(out) == 600 and all(r["status"] == "succeeded" for r in out)
    stats = server.stats()
    assert stats["responses"].get("429", 0) <= 0.01 * stats["requests"]


@needs_ray
def test_structured_output_on_ray_data_comes_back_as_typed_columns(local_ray: Any) -> None:
    import batchrun.ray

    schema = {
        "type": "object",
        "properties": {"label": {"type": "string"}, "score": {"type": "integer"}},
        "required": ["label", "score"],
    }
    rows = [{"text": f"item {i}" + (" #sim:json=bad" if i == 3 else "")} for i in range(20)]
    spec = {
        "model": "sim-small",
        "provider": {"name": "simulated", "simulate": {"latency": 0.0}},
        "input": {"template": "Label: {text}"},
        "output": {"schema": schema},
        "cache": "off",
    }
    table = pa.concat_tables(
        local_ray.get(batchrun.ray.map_rows(local_ray.data.from_items(rows), spec, workers=1).to_arrow_refs())
    )
    assert table.schema.field("score").type == pa.int64() and table.schema.field("label").type == pa.string()
    assert table.column("status").to_pylist() == ["succeeded"] * 20  # the spoilt answer was repaired


def test_what_does_not_scale_out_is_a_spec_error_before_ray_starts(tmp_path: Path, sim: SimServer) -> None:
    batch = make_job(
        tmp_path, sim.base_url, name="b", provider={"name": "openai", "base_url": sim.base_url, "mode": "batch"}
    )
    ran = submit(batch, "--ray", env={"OPENAI_API_KEY": "sk-test-000000000"})
    assert ran.exit_code == 2 and "runs at the provider already; submit it without --ray" in ran.stderr
    budget = make_job(tmp_path, sim.base_url, name="c", limits={"max_cost": {"CNY": 1}})
    ran = submit(budget, "--ray")
    assert ran.exit_code == 2 and "limits.max_cost is not kept across Ray workers yet" in ran.stderr
    assert submit(make_job(tmp_path, sim.base_url, name="d"), "--workers", "2").exit_code == 2
