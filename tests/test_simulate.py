"""The simulated provider is a product feature: its limits and quirks must behave as documented."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from batchrun.limits.controllers import TokenBucket
from batchrun.limits.hints import parse_duration
from batchrun.rows.tokens import DEFAULT_MAX_OUTPUT_TOKENS
from batchrun.sim.answers import go_duration
from batchrun.spec.simulator import SimulateSpec

from .helpers import cli, make_job, read_jsonl, submit
from .simserver import SimServer


def test_bucket_holds_one_second_and_refills_continuously() -> None:
    bucket = TokenBucket.per_minute(600, now=0.0)  # 10 per second, holds 10
    for _ in range(10):
        assert bucket.wait_for(1, 0.0) == 0
        bucket.take(1)
    assert bucket.wait_for(1, 0.0) == pytest.approx(0.1)
    assert bucket.wait_for(1, 0.05) == pytest.approx(0.05)
    assert bucket.wait_for(1, 0.1) == 0
    assert TokenBucket.per_minute(30, now=0.0).capacity == 1  # slow limits still admit one request


def post(url: str, prompt: str, key: str | None = None) -> tuple[int, dict[str, str], bytes]:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]})
    request = urllib.request.Request(
        url + "/chat/completions",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.parametrize("retry_after", [True, False])
def test_rpm_limit_answers_429_with_or_without_retry_after(retry_after: bool) -> None:
    with SimServer(SimulateSpec(rpm=60, latency=0, retry_after=retry_after)) as server:
        assert post(server.base_url, "a")[0] == 200
        status, headers, body = post(server.base_url, "b")
        assert status == 429
        assert ("Retry-After" in headers) is retry_after
        assert orjson.loads(body)["error"]["code"] == "rate_limit_exceeded"
        assert server.stats()["responses"] == {"200": 1, "429": 1}


def test_a_storm_turns_every_row_away_for_its_length() -> None:
    now = [100.0]
    with SimServer(SimulateSpec(latency=0)) as server:
        server.sim.clock = lambda: now[0]
        status, headers, _ = post(server.base_url, "first #sim:storm=2")
        assert status == 429 and headers["Retry-After"] == "2"
        now[0] = 101.5
        status, headers, body = post(server.base_url, "another row")
        assert status == 429 and headers["Retry-After"] == "1"
        assert orjson.loads(body)["error"]["code"] == "1305"
        now[0] = 102.0
        assert post(server.base_url, "another row")[0] == 200
        assert post(server.base_url, "first #sim:storm=2")[0] == 200  # only a prompt's first arrival starts one
        assert server.stats()["injected"] == {"storm 429": 2}


def test_answers_are_deterministic_and_carry_usage() -> None:
    with SimServer() as server:
        first, second = post(server.base_url, "标题\n正文内容"), post(server.base_url, "标题\n正文内容")
    a, b = orjson.loads(first[2]), orjson.loads(second[2])
    assert a["choices"] == b["choices"] and "正文内容" in a["choices"][0]["message"]["content"]
    assert a["usage"]["total_tokens"] == a["usage"]["prompt_tokens"] + a["usage"]["completion_tokens"]


def test_simulate_command_serves_until_stopped(tmp_path: Path) -> None:
    env = {**os.environ, "BATCHRUN_SIM_API_KEY": "sim-key-1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", "simulate", "--port", "0", "--latency", "0", "--require-key"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split("simulated provider at ", 1)[1].split()[0]
        assert post(url, "x")[0] == 401
        assert post(url, "x", key="sim-key-1")[0] == 200
        job = make_job(tmp_path, url, n=10)
        assert submit(job, env={"BATCHRUN_SIM_API_KEY": "sim-key-1"}).exit_code == 0
        assert len(read_jsonl(tmp_path / "runs" / "job" / "results.jsonl")) == 10
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM is how a server is meant to stop: no error, no traceback


def test_rate_headers_mode_reports_limits_like_openai() -> None:
    with SimServer(SimulateSpec(rpm=600, tpm=60_000, latency=0, rate_headers=True)) as server:
        status, headers, _ = post(server.base_url, "a")
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "600"
    assert headers["x-ratelimit-limit-tokens"] == "60000"
    assert int(headers["x-ratelimit-remaining-requests"]) == 599  # the minute's 600, one taken
    assert parse_duration(headers["x-ratelimit-reset-requests"]) == pytest.approx(0.1, abs=0.02)


@pytest.mark.parametrize(("accounting", "expected"), [("reserve", "prompt+max"), ("actual", "used")])
def test_tpm_accounting_styles(accounting: str, expected: str) -> None:
    with SimServer(SimulateSpec(tpm=600_000, latency=0, tpm_accounting=accounting)) as server:
        _, _, body = post(server.base_url, "count my tokens")
        charged = server.stats()["tpm_charged"]
    usage = orjson.loads(body)["usage"]
    if expected == "used":
        assert charged == usage["total_tokens"]
    else:  # no max_tokens in the request: the default output allowance is reserved
        assert charged == usage["prompt_tokens"] + DEFAULT_MAX_OUTPUT_TOKENS


@pytest.mark.parametrize(("seconds", "text"), [(0.02, "20ms"), (1.5, "1.5s"), (360, "6m0s"), (90.5, "1m30.5s")])
def test_go_durations_round_trip(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_models_command_lists_models_and_checks_the_key() -> None:
    with SimServer(SimulateSpec(latency=0, api_key="right")) as server:
        ok = cli(
            "models", "--provider", "simulated", "--base-url", server.base_url, env={"BATCHRUN_SIM_API_KEY": "right"}
        )
        assert ok.exit_code == 0 and "glm-4-flash" in ok.stdout.split()
        bad = cli(
            "models",
            "--provider",
            "zhipu",
            "--base-url",
            server.base_url.rsplit("/v1", 1)[0] + "/api/paas/v4",
            env={"ZHIPUAI_API_KEY": "wrong-key-55"},
        )
        assert bad.exit_code == 1 and "HTTP 401" in bad.stderr and "check the key" in bad.stderr
        assert "wrong-key-55" not in bad.output
    missing = cli("models", "--provider", "zhipu")
    assert missing.exit_code == 2 and "ZHIPUAI_API_KEY is not set" in missing.stderr
    local = cli("models", "--provider", "simulated")  # no base URL: an in-process simulated provider
    assert local.exit_code == 0 and "sim-small" in local.stdout
