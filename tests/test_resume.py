"""Killed, interrupted and concurrent runs: every row ends with exactly one record."""

from __future__ import annotations

import signal
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson

from .helpers import make_job, read_jsonl, spawn_submit, submit, wait_for_lines
from .simserver import SimServer

CONCURRENCY = 8


def slow_job(tmp_path: Path, base_url: str, n: int = 300) -> Path:
    return make_job(tmp_path, base_url, n=n, limits={"concurrency": CONCURRENCY})


def assert_exactly_once(tmp_path: Path, n: int) -> None:
    results = read_jsonl(tmp_path / "runs" / "job" / "results.jsonl")
    counts = Counter(r["custom_id"] for r in results)
    assert set(counts) == {f"r{i}" for i in range(1, n + 1)}
    assert max(counts.values()) == 1
    usage = orjson.loads((tmp_path / "runs" / "job" / "usage.json").read_bytes())
    assert usage["rows_succeeded"] == n and usage["rows_pending"] == 0 and usage["state"] == "finished"


def start_run(
    tmp_path: Path, start_sim: Callable[..., SimServer], at_least: int, latency: float = 0.02
) -> tuple[SimServer, Path, Path, subprocess.Popen[bytes]]:
    """A 300-row `submit` in its own process, once it has recorded `at_least` results."""
    server = start_sim(latency=latency)
    job = slow_job(tmp_path, server.base_url)
    results = tmp_path / "runs" / "job" / "results.jsonl"
    proc = spawn_submit(job)
    wait_for_lines(results, at_least, proc)
    return server, job, results, proc


def test_resume_after_sigkill(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    server, job, results, proc = start_run(tmp_path, start_sim, 80)
    proc.kill()
    proc.wait(10)
    assert 80 <= results.read_bytes().count(b"\n") < 300
    resumed = submit(job)
    assert resumed.exit_code == 0, resumed.output
    assert "rows already done" in resumed.stderr
    assert_exactly_once(tmp_path, 300)
    stats = server.stats()
    assert stats["billed_prompts"] == 300
    assert stats["billed_twice"] <= CONCURRENCY  # only rows in flight at the kill can be paid twice


def test_ctrl_c_stops_cleanly_and_resumes(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    server, job, _, proc = start_run(tmp_path, start_sim, 50)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    text = out.decode()
    assert proc.returncode == 130, text
    assert "stopping: waiting up to" in text and "resume with: batchrun submit" in text
    usage = orjson.loads((tmp_path / "runs" / "job" / "usage.json").read_bytes())
    assert usage["state"] == "interrupted" and usage["rows_pending"] > 0
    manifest = orjson.loads((tmp_path / "runs" / "job" / "manifest.json").read_bytes())
    assert manifest["state"] == "interrupted"
    assert submit(job).exit_code == 0
    assert_exactly_once(tmp_path, 300)
    assert server.stats()["billed_twice"] == 0  # a clean stop lets in-flight requests finish and records them


def test_sigterm_is_a_clean_stop_too(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    _, _, _, proc = start_run(tmp_path, start_sim, 30)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "stopping: waiting up to" in out.decode() and "Ctrl-C again" not in out.decode()  # no keyboard there


def test_second_submit_on_a_busy_run_directory_is_refused(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    _, job, _, proc = start_run(tmp_path, start_sim, 5, latency=0.05)
    try:
        second = submit(job)
        assert second.exit_code == 2
        assert "is in use by another batchrun" in second.stderr
    finally:
        proc.kill()
        proc.wait(10)


def test_changed_job_is_refused_unless_fresh(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=5)
    assert submit(job).exit_code == 0
    changed = make_job(tmp_path, sim.base_url, n=5, params={"max_tokens": 64})
    refused = submit(changed)
    assert refused.exit_code == 2 and "--fresh" in refused.stderr
    assert "(params.max_tokens changed since it started)" in refused.stderr
    fresh = submit(changed, "--fresh")
    assert fresh.exit_code == 0, fresh.output
    assert "moved to" in fresh.stderr
    assert len(read_jsonl(tmp_path / "runs" / "job" / "results.jsonl")) == 5
    assert len(list((tmp_path / "runs" / "job" / "previous").iterdir())) == 1


def test_limits_may_change_between_resumes(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=5)
    assert submit(job).exit_code == 0
    assert submit(make_job(tmp_path, sim.base_url, n=5, limits={"rpm": 100})).exit_code == 0
