"""The batch lane over HTTP against the simulator's Batch API: every row once, harvested from whatever state a
batch ends in, resumable from a kill at any step without uploading or creating anything twice."""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.spec import presets

from .helpers import cli, make_job, read_jsonl, spawn_submit, submit
from .simserver import SimServer
from .test_outside import BatchOutputLine

FAST = {"poll_s": 0.05, "max_poll_s": 0.2}


def batch_job(
    tmp_path: Path, sim: SimServer, rows: list[dict[str, Any]], batch: dict[str, Any] | None = None, **extra: Any
) -> Path:
    provider = {"name": "simulated", "base_url": sim.base_url, "mode": "batch"}
    return make_job(tmp_path, sim.base_url, rows, provider=provider, batch={**FAST, **(batch or {})}, **extra)


def stop_at(tmp_path: Path, job: Path, event: bytes, sig: signal.Signals) -> Path:
    """Run `submit` in its own process and send it `sig` once batches.jsonl holds `event`; the events file."""
    proc = spawn_submit(job)
    events = tmp_path / "runs/job/batches.jsonl"
    deadline = time.monotonic() + 30
    while event not in (events.read_bytes() if events.exists() else b""):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(20) == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    return events


def records(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    run = tmp_path / "runs" / "job"
    return read_jsonl(run / "results.jsonl"), read_jsonl(run / "failures.jsonl")


def test_a_batch_job_ends_with_one_record_per_row(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(batch_s=0.3)
    rows = [{"id": f"r{i}", "prompt": f"question {i}" + (" #sim:status=400" if i == 7 else "")} for i in range(30)]
    result = submit(batch_job(tmp_path, sim, rows))
    assert result.exit_code == 3, result.output  # one row's answer was an error
    good, bad = records(tmp_path)
    assert sorted(r["custom_id"] for r in good + bad) == sorted(f"r{i}" for i in range(30))
    assert [r["custom_id"] for r in bad] == ["r7"] and bad[0]["error"]["code"] == "sim_400"
    for line in good + bad:
        BatchOutputLine.model_validate(line)
    assert all(r["batch_id"].startswith("batch-") for r in good)
    stats = sim.stats()
    assert (stats["files_uploaded"], stats["batches_created"], stats["files_deleted"]) == (1, 1, 1)
    usage = orjson.loads((tmp_path / "runs/job/usage.json").read_bytes())
    assert usage["prompt_tokens"] == stats["billed_prompt_tokens"]  # usage matches the bill
    assert usage["completion_tokens"] == stats["billed_completion_tokens"]


def test_shards_keep_the_line_limit(tmp_path: Path, start_sim: Callable[..., SimServer], monkeypatch: Any) -> None:
    small = dataclasses.replace(presets.BATCH_APIS["simulated"], max_lines=7)
    monkeypatch.setitem(presets.PRESETS, "simulated", dataclasses.replace(presets.PRESETS["simulated"], batch=small))
    sim = start_sim(batch_s=0.2)
    assert submit(batch_job(tmp_path, sim, [{"id": i, "prompt": f"q{i}"} for i in range(20)])).exit_code == 0
    assert len(records(tmp_path)[0]) == 20
    assert sim.stats()["batches_created"] == 3  # 7 + 7 + 6


def test_an_expired_batch_keeps_what_it_finished_and_resends_the_rest(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(batch_s=0.3)
    rows = [{"id": f"r{i}", "prompt": f"q{i}" + (" #sim:batch-expire=0.6" if i == 0 else "")} for i in range(10)]
    result = submit(batch_job(tmp_path, sim, rows))
    assert result.exit_code == 0, result.output
    assert "batch expired; 4 rows it did not finish go into a new batch" in result.stderr
    good, _ = records(tmp_path)
    assert sorted(r["custom_id"] for r in good) == [f"r{i}" for i in range(10)]
    stats = sim.stats()
    assert stats["batches_created"] == 2 and stats["billed_twice"] == 0 and stats["billed_requests"] == 10
    attempts = {r["custom_id"]: r["attempts"] for r in good}
    assert attempts["r0"] == 1 and attempts["r9"] == 2  # the resent rows were in two batches


def test_lines_a_batch_refuses_get_failure_records_and_the_rest_go_through(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(batch_s=0.2)
    rows = [{"id": f"r{i}", "prompt": f"q{i}" + (" #sim:batch-invalid" if i in (2, 5, 7) else "")} for i in range(10)]
    result = submit(batch_job(tmp_path, sim, rows))
    assert result.exit_code == 3, result.output
    good, bad = records(tmp_path)
    assert sorted(r["custom_id"] for r in bad) == ["r2", "r5", "r7"]
    assert all("the batch refused line" in r["error"]["message"] for r in bad)
    assert sorted(r["custom_id"] for r in good) == sorted(f"r{i}" for i in range(10) if i not in (2, 5, 7))


def test_a_kill_while_polling_resumes_without_uploading_or_creating_again(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(batch_s=3.0)
    job = batch_job(tmp_path, sim, [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(40)])
    stop_at(tmp_path, job, b'"created"', signal.SIGKILL)
    result = submit(job)
    assert result.exit_code == 0, result.output
    assert sorted(r["custom_id"] for r in records(tmp_path)[0]) == sorted(f"r{i}" for i in range(40))
    stats = sim.stats()
    assert (stats["files_uploaded"], stats["batches_created"], stats["billed_twice"]) == (1, 1, 0)


def test_a_kill_between_creating_a_batch_and_writing_its_id_finds_that_batch(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(batch_s=2.0)
    job = batch_job(tmp_path, sim, [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(20)])
    events = stop_at(tmp_path, job, b'"created"', signal.SIGKILL)
    # as if the kill had come after the provider made the batch but before its id reached the disk
    kept = [line for line in events.read_bytes().splitlines(keepends=True) if b'"created"' not in line]
    events.write_bytes(b"".join(line for line in kept if b'"polled"' not in line))
    result = submit(job)
    assert result.exit_code == 0, result.output
    assert "found its batch" in result.output
    assert len(records(tmp_path)[0]) == 20
    stats = sim.stats()
    assert (stats["batches_created"], stats["files_with_two_batches"], stats["billed_twice"]) == (1, 0, 0)


def test_batch_prices_in_the_summary_report_and_estimate(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(batch_s=0.2)
    pricing = {"sim-small": {"input": 10, "output": 20, "currency": "CNY"}}
    job = batch_job(tmp_path, sim, [{"id": i, "prompt": f"q{i}"} for i in range(10)], pricing=pricing)
    estimate = cli("estimate", str(job)).stdout
    assert "cost (batch)" in estimate and "at 5 / 10 CNY" in estimate and "online " in estimate
    online = make_job(tmp_path, sim.base_url, [{"id": 1, "prompt": "q"}], name="online", pricing=pricing)
    assert "with provider.mode: batch (50% of online" in cli("estimate", str(online)).stdout
    result = submit(job)
    assert result.exit_code == 0, result.output
    stats = sim.stats()
    paid = (stats["billed_prompt_tokens"] * 5 + stats["billed_completion_tokens"] * 10) / 1e6
    assert f"cost {paid:.4f} CNY" in result.stdout  # half the online price
    report = orjson.loads(cli("report", str(tmp_path / "runs/job"), "--format", "json").stdout)
    assert report["batch_share"] == 0.5 and report["lane"].startswith("batch (")
    assert report["cost"]["CNY"] == pytest.approx(paid) and report["saved"]["CNY"] == pytest.approx(paid)


def test_a_full_queue_of_enqueued_tokens_means_wait_and_create_later(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(batch_s=0.2)
    rows = [{"id": f"r{i}", "prompt": f"q{i}" + (" #sim:batch-tokens=1" if i == 3 else "")} for i in range(6)]
    result = submit(batch_job(tmp_path, sim, rows, retry={"max_attempts": 1}))
    assert result.exit_code == 0, result.output  # one try allowed: the refusal was not a try
    assert "queue of enqueued tokens is full" in result.stderr
    good, bad = records(tmp_path)
    assert len(good) == 6 and bad == [] and {r["attempts"] for r in good} == {1}
    assert sim.stats()["batches_created"] == 2


def test_cancel_then_resume_keeps_what_was_finished(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    sim = start_sim(batch_s=4.0)
    job = batch_job(tmp_path, sim, [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(40)])
    stop_at(tmp_path, job, b'"in_progress"', signal.SIGTERM)  # the run stops polling; its batch goes on
    time.sleep(0.5)
    (shard,) = orjson.loads(cli("status", str(tmp_path / "runs/job"), "--json").stdout)["batches"]
    assert shard["status"] == "in_progress" and shard["lines"] == 40 and shard["batch_id"].startswith("batch-")
    assert "  batch    shard 1: batch-" in cli("status", str(tmp_path / "runs/job")).stdout
    cancelled = cli("cancel", str(tmp_path / "runs/job"))
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancel" in cancelled.stdout and "rows already done" in cancelled.stdout
    assert sim.stats()["batches_cancelled"] == 1
    result = submit(job)
    assert result.exit_code == 0, result.output
    assert sorted(r["custom_id"] for r in records(tmp_path)[0]) == sorted(f"r{i}" for i in range(40))
    stats = sim.stats()
    assert stats["batches_created"] == 2 and stats["billed_twice"] == 0 and stats["billed_requests"] == 40
    assert "no batch of this run is still going" in cli("cancel", str(tmp_path / "runs/job")).stdout


def test_the_dashscope_batch_test_job_runs_on_the_simulator(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    """jobs/dashscope-batch-test.yaml as a user runs it, pointed at the simulator: the dashscope preset's Batch
    API, batch-test-model's own line url, 100 lines a file."""
    import yaml

    sim = start_sim(batch_s=0.3)
    repo = Path(__file__).parent.parent
    spec = yaml.safe_load((repo / "jobs/dashscope-batch-test.yaml").read_text(encoding="utf-8"))
    spec["input"]["path"] = str(repo / "sample_data/news.jsonl")
    spec["provider"]["base_url"] = sim.base_url
    spec["batch"].update(FAST)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    result = submit(job, env={"DASHSCOPE_API_KEY": "sk-test-dashscope"})
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "dashscope-batch-test"
    assert len(read_jsonl(run / "results.jsonl")) == 300 and sim.stats()["batches_created"] == 3
    shard = (run / "shards/shard-00001.jsonl").read_bytes().splitlines()
    assert len(shard) == 100 and orjson.loads(shard[0])["url"] == "/v1/chat/ds-test"


def test_a_batch_the_provider_refuses_as_it_is_stops_the_run(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(batch_s=0.2)
    rows = [{"id": i, "prompt": f"q{i}"} for i in range(5)]
    result = submit(batch_job(tmp_path, sim, rows, batch={"line_url": "/v1/chat/unknown"}))
    assert result.exit_code == 1, result.output
    assert "HTTP 400" in result.output and "unsupported endpoint" in result.output
    assert records(tmp_path) == ([], []) and sim.stats()["batches_created"] == 0


def test_fallback_online_sends_what_a_batch_did_not_finish_through_the_online_lane(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(batch_s=0.3)
    rows = [{"id": f"r{i}", "prompt": f"q{i}" + (" #sim:batch-expire=0.6" if i == 0 else "")} for i in range(10)]
    pricing = {"sim-small": {"input": 10, "output": 20, "currency": "CNY"}}
    result = submit(batch_job(tmp_path, sim, rows, batch={"fallback": "online"}, pricing=pricing))
    assert result.exit_code == 0, result.output
    assert "sending the 4 rows the batches did not finish through the online lane" in result.stderr
    good, _ = records(tmp_path)
    assert sorted(r["custom_id"] for r in good) == [f"r{i}" for i in range(10)]
    by_lane = {r["custom_id"]: "batch_id" in r for r in good}
    assert sum(by_lane.values()) == 6  # six from the batch, four online
    stats = sim.stats()
    assert stats["batches_created"] == 1 and stats["billed_twice"] == 0 and stats["requests"] == 4
    # the batch's answers at the batch price, the online ones at the online price
    model = orjson.loads((tmp_path / "runs/job/usage.json").read_bytes())["models"]["sim-small"]
    online_prompt = model["prompt_tokens"] - model["batch_prompt_tokens"]
    online_completion = model["completion_tokens"] - model["batch_completion_tokens"]
    paid = (model["batch_prompt_tokens"] * 5 + model["batch_completion_tokens"] * 10) / 1e6
    paid += (online_prompt * 10 + online_completion * 20) / 1e6
    report = orjson.loads(cli("report", str(tmp_path / "runs/job"), "--format", "json").stdout)
    assert report["cost"]["CNY"] == pytest.approx(paid) and report["lane"].startswith("batch and online")


def test_a_deadline_cancels_the_batches_and_sends_the_rest_online(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(batch_s=6.0)
    rows = [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(30)]
    result = submit(batch_job(tmp_path, sim, rows, batch={"deadline_s": 1.0}))
    assert result.exit_code == 0, result.output
    assert "batch.deadline_s passed" in result.stderr
    good, _ = records(tmp_path)
    assert sorted(r["custom_id"] for r in good) == sorted(f"r{i}" for i in range(30))
    stats = sim.stats()
    in_batch = sum("batch_id" in r for r in good)
    assert stats["batches_cancelled"] == 1 and 0 < in_batch < 30 and stats["requests"] == 30 - in_batch
    assert stats["billed_twice"] == 0


def test_a_models_queue_cap_spreads_its_rows_over_rounds(
    tmp_path: Path, start_sim: Callable[..., SimServer], monkeypatch: Any
) -> None:
    """Zhipu queues at most so many requests of a model at once (glm-4-plus: 2,000,000): the rest wait a round."""
    capped = dataclasses.replace(presets.BATCH_APIS["simulated"], queue_caps=(("sim-small", 4),))
    monkeypatch.setitem(presets.PRESETS, "simulated", dataclasses.replace(presets.PRESETS["simulated"], batch=capped))
    assert dict(presets.PRESETS["zhipu"].batch.queue_caps)["glm-4-plus"] == 2_000_000  # type: ignore[union-attr]
    sim = start_sim(batch_s=0.1)
    assert submit(batch_job(tmp_path, sim, [{"id": i, "prompt": f"q{i}"} for i in range(10)])).exit_code == 0
    assert len(records(tmp_path)[0]) == 10 and sim.stats()["batches_created"] == 3  # 4 + 4 + 2


def test_embeddings_go_through_the_batch_api_one_line_a_row(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    sim = start_sim(batch_s=0.1)
    rows = [{"id": f"e{i}", "input": f"text {i}"} for i in range(12)]
    result = submit(batch_job(tmp_path, sim, rows, endpoint="embeddings", model="sim-embed"))
    assert result.exit_code == 0, result.output
    good, _ = records(tmp_path)
    assert len(good) == 12 and all(len(r["response"]["body"]["data"]) == 1 for r in good)
    line = orjson.loads((tmp_path / "runs/job/shards/shard-00001.jsonl").read_bytes().splitlines()[0])
    assert line["url"] == "/v1/embeddings" and line["body"]["input"] == "text 0"
