"""`batchrun submit` end to end, over real HTTP against the simulated provider on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from .helpers import cli, make_job, read_jsonl, submit, write_jsonl
from .simserver import SimServer


def records(tmp_path: Path, name: str = "job") -> tuple[list[dict], list[dict], dict]:  # type: ignore[type-arg]
    run = tmp_path / "runs" / name
    return (
        read_jsonl(run / "results.jsonl"),
        read_jsonl(run / "failures.jsonl"),
        orjson.loads((run / "usage.json").read_bytes()),
    )


def test_full_submit(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=50)
    result = submit(job)
    assert result.exit_code == 0, result.output
    results, failures, usage = records(tmp_path)
    assert sorted(r["custom_id"] for r in results) == sorted(f"r{i}" for i in range(1, 51))
    assert failures == []
    first = results[0]
    assert first["response"]["status_code"] == 200 and first["error"] is None
    assert first["response"]["body"]["choices"][0]["message"]["content"].startswith("[simulated sim-small]")
    assert first["id"].startswith("batch_req_") and first["response"]["request_id"].startswith("sim-")
    assert usage["state"] == "finished" and usage["rows_succeeded"] == 50 and usage["rows_pending"] == 0
    assert usage["requests"] == 50 == sim.stats()["billed_requests"]
    assert usage["prompt_tokens"] == sim.stats()["billed_prompt_tokens"]
    assert usage["completion_tokens"] == sum(r["response"]["body"]["usage"]["completion_tokens"] for r in results)
    assert usage["models"]["sim-small"]["rows_succeeded"] == 50
    assert usage["finished_at"] is not None
    manifest = orjson.loads((tmp_path / "runs" / "job" / "manifest.json").read_bytes())
    assert manifest["state"] == "finished" and manifest["job"]["model"] == "sim-small"
    assert "50 succeeded, 0 failed, 0 pending of 50 rows" in result.stdout
    assert "; cost 0." in result.stdout and " CNY" in result.stdout  # sim-small has a (made-up) price
    # A finished run submitted again sends nothing.
    again = submit(job)
    assert again.exit_code == 0 and sim.stats()["requests"] == 50
    assert "50 of 50 rows already done" in again.stderr


def test_in_process_simulated_provider(tmp_path: Path) -> None:
    job = make_job(tmp_path, "", n=10, provider={"name": "simulated", "simulate": {"latency": 0}})
    result = submit(job)
    assert result.exit_code == 0, result.output
    assert len(records(tmp_path)[0]) == 10


def test_retries_on_500_and_429(tmp_path: Path, sim: SimServer) -> None:
    rows = [
        {"id": "flaky", "prompt": "x #sim:fail=2"},
        {"id": "limited", "prompt": "y #sim:429=1"},
        {"id": "plain", "prompt": "z"},
    ]
    result = submit(make_job(tmp_path, sim.base_url, rows))
    assert result.exit_code == 0, result.output
    results, _, usage = records(tmp_path)
    attempts = {r["custom_id"]: (r["attempts"], r["rate_limited"]) for r in results}
    assert attempts == {"flaky": (3, 0), "limited": (2, 1), "plain": (1, 0)}
    assert (usage["requests"], usage["retries"], usage["rate_limited"]) == (6, 3, 1)
    assert sim.stats()["responses"] == {"200": 3, "429": 1, "500": 2}


def test_a_limit_on_requests_in_flight_is_held_by_concurrency_not_the_rate(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    """Zhipu's 1302: the provider refuses requests beyond 4 in flight. The Throttle holds concurrency under
    the limit it learns from the refusals; the rate is left alone."""
    server = start_sim(max_inflight=4, latency=0.05)
    job = make_job(tmp_path, server.base_url, n=60, limits={"concurrency": 16})
    result = submit(job)
    assert result.exit_code == 0, result.output
    assert "the provider limits requests in flight (429 1302)" in result.output
    _, _, usage = records(tmp_path)
    assert usage["rows_succeeded"] == 60
    assert usage["throttle"]["concurrency"] <= 5 and usage["throttle"]["rpm"] is None
    # The first 16 went out together (12 refused); after that, at most a probe above the limit now and then.
    assert 1 <= usage["rate_limited"] <= 12 + 3


def test_a_429_naming_the_limit_sets_the_rate_at_once(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    """No limits given; the provider's 429s say `requests per min (RPM): Limit 600`, as OpenAI's do. The first
    one sets the ceiling: the run holds just under 600 RPM from then on."""
    server = start_sim(rpm=600)
    result = submit(make_job(tmp_path, server.base_url, n=30, limits={}))
    assert result.exit_code == 0, result.output
    assert "a 429 named the provider's limit, 600 requests per minute" in result.stderr
    _, _, usage = records(tmp_path)
    assert usage["rows_succeeded"] == 30 and usage["throttle"]["rpm"] == 597.0  # 600 less the headroom


def test_dropped_connections_are_retried(tmp_path: Path, sim: SimServer) -> None:
    result = submit(make_job(tmp_path, sim.base_url, [{"id": "d", "prompt": "x #sim:drop=1"}]))
    assert result.exit_code == 0, result.output
    assert records(tmp_path)[0][0]["attempts"] == 2 and sim.stats()["dropped"] == 1


def test_retry_after_is_honoured(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, [{"id": "a", "prompt": "x #sim:429=1 #sim:retry-after=1.5"}])
    start = time.monotonic()
    result = submit(job)  # backoff_s is 0: only the server's Retry-After can make it wait
    assert result.exit_code == 0, result.output
    assert time.monotonic() - start >= 1.5
    assert records(tmp_path)[0][0]["attempts"] == 2


def test_exhausted_retries_and_bad_requests_become_failure_records(tmp_path: Path, sim: SimServer) -> None:
    rows = [
        {"id": "bad", "prompt": "x #sim:status=400"},
        {"id": "down", "prompt": "y #sim:fail=99"},
        {"id": "ok", "prompt": "z"},
    ]
    result = submit(make_job(tmp_path, sim.base_url, rows))
    assert result.exit_code == 3, result.output
    results, failures, usage = records(tmp_path)
    assert [r["custom_id"] for r in results] == ["ok"]
    by_id = {f["custom_id"]: f for f in failures}
    assert by_id["bad"]["attempts"] == 1 and by_id["bad"]["error"]["code"] == "sim_400"
    assert by_id["bad"]["error"]["status"] == 400 and by_id["bad"]["response"]["status_code"] == 400
    assert by_id["down"]["attempts"] == 5 and by_id["down"]["error"]["code"] == "internal_error"
    assert usage["state"] == "finished_with_failures" and usage["failures_by_code"] == {
        "internal_error": 1,
        "sim_400": 1,
    }
    assert "failures: runs/job/failures.jsonl" in result.stdout
    # Rows with a final record, success or failure, are not sent again on resume.
    requests = sim.stats()["requests"]
    assert submit(make_job(tmp_path, sim.base_url, rows)).exit_code == 3
    assert sim.stats()["requests"] == requests


def test_401_stops_the_run_and_the_key_leaks_nowhere(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    server = start_sim(api_key="the-right-key")
    job = make_job(tmp_path, server.base_url, n=200)
    wrong = "sk-wrong-key-7f3a9c"
    result = submit(job, env={"BATCHRUN_SIM_API_KEY": wrong})
    assert result.exit_code == 1, result.output
    assert "the provider refused the key" in result.stdout and "$BATCHRUN_SIM_API_KEY" in result.stdout
    assert "resume with: batchrun submit" in result.stdout
    assert server.stats()["requests"] < 200  # stopped at once, not a 401 per row
    _, failures, usage = records(tmp_path)
    assert failures == [] and usage["rows_pending"] == 200 and usage["state"] == "stopped"
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert wrong not in path.read_text(errors="replace"), path
    assert wrong not in result.output
    status = cli("status", str(tmp_path / "runs" / "job"))
    assert "stopped  the provider refused the key" in status.stdout and wrong not in status.stdout
    # With the right key the same run directory resumes and completes.
    fixed = submit(job, env={"BATCHRUN_SIM_API_KEY": "the-right-key"})
    assert fixed.exit_code == 0, fixed.output
    assert len(records(tmp_path)[0]) == 200


def test_bad_input_lines_become_failure_records(tmp_path: Path, sim: SimServer) -> None:
    (tmp_path / "job.jsonl").write_bytes(
        b'{"id": "a", "prompt": "fine"}\n'
        b'{"id": "b", "prompt": \n'
        b"\n"
        b'["not", "an", "object"]\n'
        b'{"id": "a", "prompt": "the same id again"}\n'
        b'{"id": "e", "prompt": ""}\n'
        b'{"id": "f", "prompt": "caf\xe9"}\n'
        b'{"id": "g", "prompt": "also fine"}\n'
    )
    job = make_job(tmp_path, sim.base_url, input="job.jsonl")
    checked = cli("validate", str(job))
    assert checked.exit_code == 2
    for expected in (
        "line 2: not valid JSON",
        "line 4: expected a JSON object",
        "row 5: duplicate id 'a' (first at row 1)",
        "row 6: 'prompt' must be a non-empty string",
        "line 7: not valid UTF-8 (byte 0xe9 at column 27)",
        "5 problems",
    ):
        assert expected in checked.stdout
    assert sim.stats()["requests"] == 0
    result = submit(job)
    assert result.exit_code == 3, result.output
    results, failures, _ = records(tmp_path)
    assert sorted(r["custom_id"] for r in results) == ["a", "g"]
    assert sorted(f["row"] for f in failures) == [2, 4, 5, 6, 7]
    assert {f["error"]["code"] for f in failures} == {"invalid_input", "duplicate_id"}
    assert sim.stats()["requests"] == 2


def test_a_repeated_id_is_a_failure_record_never_sent(tmp_path: Path, sim: SimServer) -> None:
    rows = [
        {"id": "a", "prompt": "x"},
        {"id": "b", "prompt": "y"},
        {"id": "a", "prompt": "z"},
        {"prompt": "no id: its row number"},
        {"custom_id": "4", "prompt": "repeats row 4's number"},
    ]
    job = make_job(tmp_path, sim.base_url, rows)
    checked = cli("validate", str(job))
    assert checked.exit_code == 2
    assert "row 3: duplicate id 'a' (first at row 1)" in checked.stdout
    assert "row 5: duplicate id '4' (first at row 4)" in checked.stdout
    result = submit(job)
    assert result.exit_code == 3, result.output
    results, failures, usage = records(tmp_path)
    assert sorted(r["custom_id"] for r in results) == ["4", "a", "b"]
    assert [(f["row"], f["custom_id"], f["error"]["code"]) for f in failures] == [
        (3, "a", "duplicate_id"),
        (5, "4", "duplicate_id"),
    ]
    assert sim.stats()["requests"] == 3 and usage["failures_by_code"] == {"duplicate_id": 2}
    # Retrying failures never sends a repeated id: its failure stands.
    assert cli("retry-failed", str(tmp_path / "runs" / "job"), "--no-progress").exit_code == 3
    assert sim.stats()["requests"] == 3 and len(records(tmp_path)[1]) == 2


def test_parquet_input_with_template(tmp_path: Path, sim: SimServer) -> None:
    table = pa.table(
        {
            "doc_id": [f"d{i}" for i in range(1, 31)],
            "title": [f"标题{i}" for i in range(1, 31)],
            "body": [f"body {i}" for i in range(1, 31)],
        }
    )
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=7)
    job = make_job(
        tmp_path,
        sim.base_url,
        input={"path": "docs.parquet", "id_field": "doc_id", "template": "总结:{title} {body}", "system": "你是编辑"},
    )
    assert cli("validate", str(job)).exit_code == 0
    result = submit(job)
    assert result.exit_code == 0, result.output
    results = records(tmp_path)[0]
    assert sorted(r["row"] for r in results) == list(range(1, 31))
    by_id = {r["custom_id"]: r for r in results}
    assert "总结:标题7 body 7" in by_id["d7"]["response"]["body"]["choices"][0]["message"]["content"]


def test_openai_batch_input_rows(tmp_path: Path, sim: SimServer) -> None:
    rows = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "sim-large", "messages": [{"role": "user", "content": f"hi {i}"}]},
        }
        for i in range(5)
    ]
    result = submit(make_job(tmp_path, sim.base_url, rows))
    assert result.exit_code == 0, result.output
    results, _, usage = records(tmp_path)
    assert {r["custom_id"] for r in results} == {f"req-{i}" for i in range(5)}
    assert results[0]["response"]["body"]["model"] == "sim-large"
    assert set(usage["models"]) == {"sim-large"}


def test_empty_input(tmp_path: Path, sim: SimServer) -> None:
    write_jsonl(tmp_path / "empty.jsonl", [])
    result = submit(make_job(tmp_path, sim.base_url, input="empty.jsonl"))
    assert result.exit_code == 0, result.output
    assert "0 succeeded, 0 failed, 0 pending of 0 rows" in result.stdout


def test_the_run_directory_follows_the_spec_from_any_folder(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=5)
    first = submit(job)
    assert first.exit_code == 0 and "new run of job in runs/job: 5 rows" in first.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chdir(elsewhere)
    again = submit(job)
    assert again.exit_code == 0 and f"resuming job in {tmp_path / 'runs' / 'job'}: 5 of 5 rows" in again.stderr
    assert sim.stats()["requests"] == 5 and not (elsewhere / "runs").exists()


def test_a_wrong_endpoint_stops_the_run_with_every_row_pending(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    result = submit(make_job(tmp_path, f"http://127.0.0.1:{closed}/v1", n=30))
    assert result.exit_code == 1, result.output
    assert "all failed as if the endpoint were wrong (cannot connect" in result.stdout + result.stderr
    assert "check provider.base_url" in result.output and "0 failed, 30 pending of 30 rows" in result.stdout
    assert not read_jsonl(tmp_path / "runs" / "job" / "failures.jsonl")

    server = start_sim(models=("sim-small",))  # every row names a model the provider does not have: a 404 each
    unknown = make_job(tmp_path, server.base_url, n=20, name="unknown", model="gpt-9")
    result = submit(unknown)
    assert result.exit_code == 1 and "HTTP 404 model_not_found" in result.output
    assert server.stats()["requests"] <= 16  # the first rows, not every row and its retries


def test_rows_failing_for_their_own_reasons_stay_failures(tmp_path: Path, sim: SimServer) -> None:
    rows = [{"id": f"r{i}", "prompt": f"q {i}" + (" #sim:status=404" if i < 3 else "")} for i in range(12)]
    result = submit(make_job(tmp_path, sim.base_url, rows))
    assert result.exit_code == 3, result.output
    failures = read_jsonl(tmp_path / "runs" / "job" / "failures.jsonl")
    assert sorted(f["custom_id"] for f in failures) == ["r0", "r1", "r2"]
    assert {f["error"]["code"] for f in failures} == {"sim_404"}
