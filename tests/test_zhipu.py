"""Zhipu's own ways over real HTTP: asyncCompletions submit-and-poll (and its resume), and JWT auth."""

from __future__ import annotations

import base64
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from batchrun.providers.transport import Reply
from batchrun.providers.zhipu import (
    TaskAction,
    TaskState,
    ZhipuJWT,
    judge_task,
    poll_delay,
    task_id,
    task_state,
    verify_jwt,
)
from batchrun.retry import Verdict
from batchrun.spec.presets import PRESETS

from .helpers import make_job, read_jsonl, spawn_submit, submit
from .simserver import SimServer

ZHIPU_KEY = "abc123.s3cr3t-not-real"
KEY = {"ZHIPUAI_API_KEY": "test-key-not-secret"}


def async_job(tmp_path: Path, server: SimServer, rows: list[dict[str, Any]], **limits: Any) -> Path:
    root = server.base_url.rsplit("/v1", 1)[0]
    return make_job(
        tmp_path,
        "",
        rows,
        provider={"name": "zhipu", "base_url": root + "/api/paas/v4", "mode": "async"},
        limits={"concurrency": 8, "poll_rps": 200, **limits},
    )


def out(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    return read_jsonl(tmp_path / "runs" / "job" / name)


def test_async_tasks_are_submitted_once_and_polled_to_the_end(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    server = start_sim(task_s=(0.1, 0.5))
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(30)]
    rows[3]["prompt"] += " #sim:expire=1"
    rows[4]["prompt"] += " #sim:task-fail=1"
    rows[5]["prompt"] += " #sim:error=400:1214"
    result = submit(async_job(tmp_path, server, rows), env=KEY)
    assert result.exit_code == 3, result.output  # row 5 is a bad request
    results = {r["custom_id"]: r for r in out(tmp_path, "results.jsonl")}
    failures = {r["custom_id"]: r for r in out(tmp_path, "failures.jsonl")}
    assert len(results) == 29 and set(failures) == {"r5"} and failures["r5"]["error"]["code"] == "1214"
    body = results["r0"]["response"]["body"]
    assert body["task_status"] == "SUCCESS" and body["choices"][0]["message"]["content"]
    assert results["r0"]["task_id"] == body["id"] and results["r0"]["polls"] >= 1
    expired, failed = results["r3"], results["r4"]
    assert [r["reason"] for r in expired["resubmitted"]] == ["task_expired"] and expired["attempts"] == 2
    assert [r["reason"] for r in failed["resubmitted"]] == ["task_failed"] and failed["attempts"] == 2
    assert "resubmitted" not in results["r0"]

    tasks = out(tmp_path, "tasks.jsonl")
    assert len(tasks) == 31 and Counter(t["custom_id"] for t in tasks)["r3"] == 2
    stats = server.stats()
    assert stats["tasks_submitted"] == 31 and stats["billed_twice"] == 2  # only the expired and failed tasks
    usage = orjson.loads((tmp_path / "runs" / "job" / "usage.json").read_bytes())
    assert usage["polls"] == stats["polls"] and usage["tasks_pending"] == 0
    assert usage["prompt_tokens"] == sum(r["response"]["body"]["usage"]["prompt_tokens"] for r in results.values())


def test_a_killed_async_run_polls_its_tasks_and_never_submits_them_again(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    server = start_sim(task_s=(2.0, 2.5))
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(20)]
    job = async_job(tmp_path, server, rows)
    tasks = tmp_path / "runs" / "job" / "tasks.jsonl"
    proc = spawn_submit(job, env=KEY)
    deadline = time.monotonic() + 30
    while not (tasks.exists() and tasks.read_bytes().count(b"\n") == 20):  # all submitted, none answered yet
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.kill()
    proc.wait(10)
    assert out(tmp_path, "results.jsonl") == []
    abandoned = tmp_path / "abandoned"  # the same killed run, started over with --fresh elsewhere
    shutil.copytree(tmp_path / "runs", abandoned / "runs")

    result = submit(job, env=KEY)
    assert result.exit_code == 0, result.output
    assert "polling 20 tasks submitted by an earlier session" in result.output
    assert sorted(r["custom_id"] for r in out(tmp_path, "results.jsonl")) == sorted(r["id"] for r in rows)
    stats = server.stats()
    assert stats["tasks_submitted"] == 20 and stats["billed_twice"] == 0
    assert {r["task_id"] for r in out(tmp_path, "results.jsonl")} == {
        t["task_id"] for t in out(tmp_path, "tasks.jsonl")
    }

    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(yaml.safe_dump({**yaml.safe_load(job.read_text()), "output_dir": str(abandoned / "runs" / "job")}))
    result = submit(fresh, "--fresh", env=KEY)
    assert result.exit_code == 0, result.output
    assert "warning: --fresh gave up 20 async tasks of the earlier run that were still pending" in result.output


def test_max_pending_caps_tasks_in_flight(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    server = start_sim(task_s=(0.2, 0.3))
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(9)]
    result = submit(async_job(tmp_path, server, rows, max_pending=3), env=KEY)
    assert result.exit_code == 0, result.output
    stats = server.stats()
    assert stats["tasks_submitted"] == 9 and 1 <= stats["max_tasks_running"] <= 3


def test_polls_stay_within_their_budget(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    server = start_sim(task_s=(1.5, 1.5))
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(30)]
    t0 = time.monotonic()
    result = submit(async_job(tmp_path, server, rows, poll_rps=10), env=KEY)
    elapsed = time.monotonic() - t0
    assert result.exit_code == 0, result.output
    polls = server.stats()["polls"]
    assert 30 <= polls <= 10 * elapsed + 10  # the rate, plus one second's burst


def test_unknown_task_ids_from_the_start_mean_a_wrong_poll_url(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    server = start_sim(task_s=(0.1, 0.1))
    rows = [{"id": f"r{i}", "prompt": f"question {i} #sim:expire=9"} for i in range(8)]
    result = submit(async_job(tmp_path, server, rows), env=KEY)
    assert result.exit_code == 1
    assert "were unknown to the provider (HTTP 404) and none was found: check provider.base_url" in result.output
    assert out(tmp_path, "results.jsonl") == [] and out(tmp_path, "failures.jsonl") == []
    assert server.stats()["tasks_submitted"] <= 8  # nothing resubmitted on a hunch


def test_async_mode_is_zhipus(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, sim.base_url, n=1, provider={"name": "qianfan", "mode": "async"})
    result = submit(job)
    assert result.exit_code == 2 and "provider.mode 'async' is not offered by Baidu Qianfan" in result.output


@pytest.mark.parametrize(
    ("status", "body", "state"),
    [
        (200, {"task_status": "PROCESSING"}, TaskState.PENDING),
        (200, {"task_status": "SUBMITTED"}, TaskState.PENDING),
        (200, {"task_status": "SUCCESS", "choices": []}, TaskState.SUCCESS),
        (200, {"task_status": "FAIL"}, TaskState.FAILED),
        (200, {"task_status": "FAILED"}, TaskState.FAILED),
        (200, {"task_status": "CANCELLED"}, TaskState.FAILED),
        (404, {"error": {"code": "x"}}, TaskState.EXPIRED),
        (None, None, TaskState.NO_ANSWER),
        (429, None, TaskState.NO_ANSWER),
        (503, b"<html>", TaskState.NO_ANSWER),
        (200, b"not json", TaskState.NO_ANSWER),
        (401, {"error": {"code": "1000"}}, TaskState.REFUSED),
        (200, {"error": {"code": "1214", "message": "bad"}}, TaskState.REFUSED),
    ],
)
def test_task_state(status: int | None, body: Any, state: TaskState) -> None:
    assert task_state(status, body) is state


@pytest.mark.parametrize(
    ("status", "body", "headers", "action", "verdict", "code"),
    [
        (200, {"task_status": "PROCESSING"}, {}, TaskAction.POLL, None, None),
        (429, None, {"Retry-After": "3"}, TaskAction.POLL, None, None),
        (404, None, {}, TaskAction.EXPIRED, Verdict.RETRY, "task_expired"),
        (
            200,
            {"task_status": "SUCCESS", "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]},
            {},
            TaskAction.DECIDE,
            Verdict.OK,
            "ok",
        ),
        (
            200,
            {
                "task_status": "SUCCESS",
                "choices": [{"message": {"content": ""}, "finish_reason": "sensitive"}],
                "content_filter": [{"role": "assistant", "level": 1}],
            },
            {},
            TaskAction.DECIDE,
            Verdict.FAIL_ROW,
            "content_filter",
        ),
        (200, {"task_status": "SUCCESS"}, {}, TaskAction.RESUBMIT, Verdict.RETRY, "empty_response"),
        (200, {"task_status": "FAIL"}, {}, TaskAction.RESUBMIT, Verdict.RETRY, "task_failed"),
        (
            200,
            {"task_status": "FAIL", "error": {"code": "1301", "message": "sensitive"}},
            {},
            TaskAction.DECIDE,
            Verdict.FAIL_ROW,
            "1301",
        ),
        (
            200,
            {"task_status": "FAIL", "error": {"code": "1113", "message": "arrears"}},
            {},
            TaskAction.RESUBMIT,
            Verdict.RETRY,
            "1113",
        ),
        (401, {"error": {"code": "1000", "message": "bad key"}}, {}, TaskAction.DECIDE, Verdict.STOP_RUN, "1000"),
        (400, {"error": {"code": "1214", "message": "bad id"}}, {}, TaskAction.DECIDE, Verdict.FAIL_ROW, "1214"),
    ],
)
def test_judge_task(
    status: int | None,
    body: Any,
    headers: dict[str, str],
    action: TaskAction,
    verdict: Verdict | None,
    code: str | None,
) -> None:
    judged = judge_task(Reply(status, headers, body, 0.1), PRESETS["zhipu"].errors)
    assert judged.action is action
    assert (judged.decision.verdict if judged.decision else None) is verdict
    assert (judged.decision.code if judged.decision else None) == code
    assert judged.found == (status == 200)
    assert judged.pause == (3.0 if status == 429 else None)


def test_task_id() -> None:
    assert task_id({"id": "1014908592669352541651237", "task_status": "PROCESSING"}) == "1014908592669352541651237"
    assert task_id({"id": 42}) == "42"
    assert task_id({"task_status": "PROCESSING"}) is None and task_id(b"x") is None


def test_poll_delay_grows_from_a_second_and_a_half_towards_twelve() -> None:
    delays = [poll_delay(n, 0.5) for n in range(10)]
    assert delays[0] == pytest.approx(1.5) and delays == sorted(delays) and delays[-1] == pytest.approx(12.0)
    assert poll_delay(0, 0.0) == pytest.approx(1.2) and poll_delay(20, 0.999) == pytest.approx(14.4, rel=1e-3)


def test_jwt_matches_the_documented_shape() -> None:
    clock = [1_700_000_000.0]
    auth = ZhipuJWT(ZHIPU_KEY, clock=lambda: clock[0])
    header_value = auth()
    token = header_value.removeprefix("Bearer ")
    head, payload, _ = token.split(".")
    assert orjson.loads(base64.urlsafe_b64decode(head + "==")) == {"alg": "HS256", "sign_type": "SIGN"}
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=="))
    assert claims == {"api_key": "abc123", "exp": 1_700_000_000_000 + 210_000, "timestamp": 1_700_000_000_000}
    assert verify_jwt(token, ZHIPU_KEY, 1_700_000_000_000) is None
    assert verify_jwt(token, "abc123.other", 1_700_000_000_000) == "bad signature"
    assert verify_jwt(token, ZHIPU_KEY, 1_700_000_000_000 + 211_000) == "token expired"
    clock[0] += 179
    assert auth() == header_value  # reused for 180 s
    clock[0] += 2
    assert auth() != header_value


def test_jwt_auth_end_to_end(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    server = start_sim(api_key=ZHIPU_KEY)
    root = server.base_url.rsplit("/v1", 1)[0]
    job = make_job(tmp_path, "", n=3, provider={"name": "zhipu", "base_url": root + "/api/paas/v4", "auth": "jwt"})
    result = submit(job, env={"ZHIPUAI_API_KEY": ZHIPU_KEY})
    assert result.exit_code == 0, result.output
    assert server.stats()["responses"] == {"200": 3}
    run_dir = tmp_path / "runs" / "job"
    assert all(b"s3cr3t" not in p.read_bytes() for p in run_dir.iterdir() if p.is_file())
    result = submit(job, "--fresh", "--no-cache", env={"ZHIPUAI_API_KEY": "abc123.wrong"})  # the wrong secret
    assert result.exit_code == 1 and "bad signature" in result.output


def test_jwt_needs_an_id_dot_secret_key(tmp_path: Path, sim: SimServer) -> None:
    job = make_job(tmp_path, "", n=1, provider={"name": "zhipu", "base_url": sim.base_url, "auth": "jwt"})
    result = submit(job, env={"ZHIPUAI_API_KEY": "plainkey"})
    assert result.exit_code == 2 and "needs a Zhipu key of the form id.secret" in result.output
    assert "plainkey" not in result.output


def test_the_in_process_simulator_keeps_tasks_across_a_restart(tmp_path: Path) -> None:
    """Its task ids carry the task, so a resumed run's polls are answered as a provider that kept them would;
    a row submitted again before the kill still says why in its final record."""
    rows = [{"id": f"r{i}", "prompt": f"question {i}" + (" #sim:expire=1" if i == 3 else "")} for i in range(10)]
    job = make_job(
        tmp_path,
        "",
        rows,
        provider={"name": "simulated", "mode": "async", "simulate": {"task_s": [2.5, 3.0], "latency": 0}},
        limits={"poll_rps": 100},
    )
    tasks = tmp_path / "runs" / "job" / "tasks.jsonl"
    proc = spawn_submit(job)
    deadline = time.monotonic() + 30
    while not (tasks.exists() and tasks.read_bytes().count(b"\n") == 11):  # ten, and row 3 once more
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.kill()
    proc.wait(10)

    result = submit(job)
    assert result.exit_code == 0, result.output
    results = {r["custom_id"]: r for r in out(tmp_path, "results.jsonl")}
    assert sorted(results) == sorted(r["id"] for r in rows)
    assert len(out(tmp_path, "tasks.jsonl")) == 11  # nothing submitted after the restart
    assert [r["reason"] for r in results["r3"]["resubmitted"]] == ["task_expired"]
    assert all("resubmitted" not in r for cid, r in results.items() if cid != "r3")
