"""The 2026 presets (deepseek, ark, moonshot, siliconflow) against the simulator speaking each: their error tables,
limits and queue, over HTTP; and the pure rules beneath them (retry's error shapes, the spec's region and tier)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.errors import SpecError
from batchrun.limits.throttle import Throttle, Ticket
from batchrun.providers.transport import Reply
from batchrun.retry import ErrorTable, Verdict, classify, error_details
from batchrun.spec.model import Limits
from batchrun.spec.parse import parse_spec
from batchrun.spec.presets import PRESETS

from .helpers import make_job, read_jsonl, submit, write_jsonl
from .simserver import SimServer

KEYS = {"DEEPSEEK_API_KEY": "sk-test", "ARK_API_KEY": "k", "MOONSHOT_API_KEY": "k", "SILICONFLOW_API_KEY": "k"}


def preset_job(tmp_path: Path, preset: str, server: SimServer, rows: list[Any], **overrides: Any) -> Path:
    """A job of `preset` pointed at the simulator (which speaks as that provider)."""
    provider = {"name": preset, "base_url": server.base_url, **overrides.pop("provider", {})}
    return make_job(tmp_path, server.base_url, rows, provider=provider, **overrides)


def prompts(*texts: str) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "prompt": text} for i, text in enumerate(texts)]


def records(tmp_path: Path, name: str) -> dict[str, dict[str, Any]]:
    return {r["custom_id"]: r for r in read_jsonl(tmp_path / "runs" / "job" / name)}


# --- DeepSeek --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "stream"])
def test_a_request_deepseek_holds_queued_with_keep_alives_is_answered_at_the_first_attempt(
    tmp_path: Path, start_sim: Callable[..., SimServer], mode: str
) -> None:
    # Queued 4 s, a keep-alive every quarter second; the answer must come within timeout_s (2.5 s) of silence,
    # not of the whole wait: the preset's queue allowance (600 s) is added to the total.
    server = start_sim(speaks="deepseek", queue_s=4.0)
    retry = {"max_attempts": 1, "timeout_s": 2.5, "backoff_s": 0, "max_backoff_s": 0}
    job = preset_job(tmp_path, "deepseek", server, prompts("a", "b"), provider={"mode": mode}, retry=retry, limits={})
    result = submit(job, env=KEYS)
    assert result.exit_code == 0, result.output
    results = records(tmp_path, "results.jsonl")
    assert sorted(results) == ["r0", "r1"] and all(r["attempts"] == 1 for r in results.values())
    assert all(r["response"]["body"]["choices"][0]["message"]["content"] for r in results.values())
    assert server.stats()["requests"] == 2


def test_deepseek_out_of_balance_stops_the_run_saying_to_top_up(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    server = start_sim(speaks="deepseek", balance=1)  # one answer empties the account
    job = preset_job(tmp_path, "deepseek", server, prompts(*(f"q{i}" for i in range(6))), limits={"concurrency": 1})
    result = submit(job, env=KEYS)
    assert result.exit_code == 1, result.output
    assert "402" in result.output and "top it up at platform.deepseek.com" in result.output, result.output
    assert len(records(tmp_path, "results.jsonl")) == 1 and not records(tmp_path, "failures.jsonl")  # rest pending


def test_an_answer_cut_for_insufficient_system_resource_is_retried_and_its_tokens_counted(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    server = start_sim(speaks="deepseek")
    job = preset_job(tmp_path, "deepseek", server, prompts("fine", "cut once #sim:resource=1"))
    result = submit(job, env=KEYS)
    assert result.exit_code == 0, result.output
    cut = records(tmp_path, "results.jsonl")["r1"]
    assert cut["attempts"] == 2 and cut["response"]["body"]["choices"][0]["finish_reason"] == "stop"
    assert cut["retried_usage"]["completion_tokens"] > 0  # the cut answer was billed
    assert server.stats()["billed_twice"] == 1


def test_deepseek_429s_hold_concurrency_under_its_cap_not_the_rate(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    server = start_sim(speaks="deepseek", max_inflight=3, latency=0.05, latency_dist="fixed", retry_after=False)
    rows = prompts(*(f"q{i}" for i in range(40)))
    job = preset_job(tmp_path, "deepseek", server, rows, limits={}, retry={"max_attempts": 50, "backoff_s": 0})
    result = submit(job, env=KEYS)
    assert result.exit_code == 0, result.output
    assert "the provider limits requests in flight (429" in result.output, result.output
    usage = orjson.loads((tmp_path / "runs" / "job" / "usage.json").read_bytes())
    assert usage["throttle"]["concurrency_ceiling"] is not None and usage["throttle"]["rpm_ceiling"] is None
    assert usage["throttle"]["given"]["concurrency"] == 500  # the preset's: DeepSeek limits requests in flight


def test_the_deepseek_simulator_answers_its_own_error_bodies(start_sim: Callable[..., SimServer]) -> None:
    import urllib.error
    import urllib.request

    server = start_sim(speaks="deepseek")
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi #sim:storm=5"}]})
    statuses = []
    for _ in range(2):
        request = urllib.request.Request(server.base_url + "/chat/completions", body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                statuses.append((resp.status, orjson.loads(resp.read())))
        except urllib.error.HTTPError as exc:
            statuses.append((exc.code, orjson.loads(exc.read())))
    assert statuses[0][0] == 503 and statuses[0][1]["error"]["message"] == "Server Overloaded"  # a storm: overload
    assert statuses[1][0] == 503  # the storm lasts


# --- SiliconFlow -----------------------------------------------------------------------------------------------


def test_siliconflow_error_bodies_are_read_for_their_code(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    server = start_sim(speaks="siliconflow", models=("sim-small",))
    line = {"method": "POST", "url": "/v1/chat/completions"}
    rows = [
        {**line, "custom_id": f"ok{i}", "body": {"messages": [{"role": "user", "content": f"q{i}"}]}} for i in range(3)
    ]
    rows.append({**line, "custom_id": "bad", "body": {"model": "nope", "messages": [{"role": "user", "content": "x"}]}})
    rows.append({**line, "custom_id": "busy", "body": {"messages": [{"role": "user", "content": "y #sim:429=1"}]}})
    write_jsonl(tmp_path / "rows.jsonl", rows)
    job = preset_job(tmp_path, "siliconflow", server, None, input="rows.jsonl")
    result = submit(job, env=KEYS)
    assert result.exit_code == 3, result.output  # one row failed
    failed = records(tmp_path, "failures.jsonl")["bad"]
    assert failed["error"]["code"] == "20012" and "Model does not exist" in failed["error"]["message"]
    assert failed["response"]["body"] == {
        "code": 20012,
        "message": "Model does not exist. Please check it carefully.",
        "data": None,
    }
    assert records(tmp_path, "results.jsonl")["busy"]["attempts"] == 2  # a per-minute limit: retried


def test_a_siliconflow_daily_limit_stops_the_run_saying_when_to_go_on(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    server = start_sim(speaks="siliconflow")
    job = preset_job(tmp_path, "siliconflow", server, prompts("a #sim:limit=RPD"), limits={"concurrency": 1})
    result = submit(job, env=KEYS)
    assert result.exit_code == 1, result.output
    assert "daily_limit_reached" in result.output and "midnight Beijing time" in result.output, result.output
    assert server.stats()["requests"] == 1  # not hammered
    assert not records(tmp_path, "failures.jsonl")  # the row waits for the next run


def test_a_siliconflow_403_stops_the_run_naming_real_name_verification(
    tmp_path: Path, start_sim: Callable[..., SimServer]
) -> None:
    server = start_sim(speaks="siliconflow")
    job = preset_job(tmp_path, "siliconflow", server, prompts("a #sim:error=403:30003"))
    result = submit(job, env=KEYS)
    assert result.exit_code == 1, result.output
    assert "real-name verification" in result.output, result.output


# --- Ark and Kimi ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "stream"])
def test_an_ark_moderation_hit_is_kept_with_the_answer(
    tmp_path: Path, start_sim: Callable[..., SimServer], mode: str
) -> None:
    server = start_sim(speaks="ark")
    rows = prompts("fine", "violent #sim:moderation=violence", "input #sim:error=400:SensitiveContentDetected")
    job = preset_job(tmp_path, "ark", server, rows, provider={"mode": mode})
    result = submit(job, env=KEYS)
    assert result.exit_code == 3, result.output
    failures = records(tmp_path, "failures.jsonl")
    hit = failures["r1"]
    assert hit["error"]["code"] == "content_filter" and "moderation_hit_type: violence" in hit["error"]["message"]
    assert hit["response"]["body"]["choices"][0]["moderation_hit_type"] == "violence"
    assert failures["r2"]["error"]["code"] == "SensitiveContentDetected" and failures["r2"]["attempts"] == 1
    assert set(records(tmp_path, "results.jsonl")) == {"r0"}


def test_ark_arrears_stop_the_run_saying_where_to_top_up(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    server = start_sim(speaks="ark", balance=1)
    job = preset_job(tmp_path, "ark", server, prompts("a", "b", "c"), limits={"concurrency": 1})
    result = submit(job, env=KEYS)
    assert result.exit_code == 1, result.output
    assert "AccountOverdueError" in result.output and "Volcengine" in result.output, result.output


def test_kimi_errors_by_type(tmp_path: Path, start_sim: Callable[..., SimServer]) -> None:
    server = start_sim(speaks="moonshot", max_inflight=1, retry_after=False)
    rows = prompts("a", "risky #sim:error=400:content_filter", "c", "d")
    job = preset_job(tmp_path, "moonshot", server, rows, limits={"concurrency": 4}, retry={"max_attempts": 30})
    result = submit(job, env=KEYS)
    assert result.exit_code == 3, result.output
    failed = records(tmp_path, "failures.jsonl")["r1"]
    assert failed["error"]["code"] == "content_filter" and failed["attempts"] == 1
    assert failed["response"]["body"]["error"]["type"] == "content_filter"
    assert set(records(tmp_path, "results.jsonl")) == {"r0", "r2", "r3"}  # 429 rate_limit_reached_error: retried


# --- pure rules ------------------------------------------------------------------------------------------------


def test_error_details_reads_siliconflow_bodies_and_leaves_answers_alone() -> None:
    assert error_details({"code": 20012, "message": "Model does not exist.", "data": None}) == (
        "20012",
        "Model does not exist.",
    )
    assert error_details({"message": "Details: TPM limit reached.", "data": None}) == (
        None,
        "Details: TPM limit reached.",
    )
    assert error_details({"object": "list", "data": [{"embedding": [0.1]}]})[0] is None
    assert error_details({"code": 0, "message": "ok", "data": {}})[0] is None


def test_a_table_names_codes_by_status_and_by_message() -> None:
    deepseek, siliconflow = PRESETS["deepseek"].errors, PRESETS["siliconflow"].errors
    body = {"error": {"message": "Insufficient Balance", "type": "unknown_error", "code": "invalid_request_error"}}
    stop = classify(402, body, {}, table=deepseek)
    assert stop.verdict is Verdict.STOP_RUN and stop.fix is not None and "platform.deepseek.com" in stop.fix
    assert classify(402, body, {}).verdict is Verdict.FAIL_ROW  # another provider's 402 is not DeepSeek's
    assert deepseek.in_flight(429, {"error": {"message": "Rate Limit Reached", "type": "rate_limit_error"}})
    daily = classify(
        429, {"message": "Request was rejected. Details: TPD limit reached.", "data": None}, {}, None, siliconflow
    )
    assert (daily.verdict, daily.code) == (Verdict.STOP_RUN, "daily_limit_reached")
    minute = classify(429, {"message": "Details: RPM limit reached.", "data": None}, {}, None, siliconflow)
    assert (minute.verdict, minute.code) == (Verdict.RETRY, "rate_limit_reached")
    cut = {"choices": [{"message": {"content": "x"}, "finish_reason": "insufficient_system_resource"}]}
    assert classify(200, cut, {}, table=deepseek).verdict is Verdict.RETRY
    assert classify(200, cut, {}, table=ErrorTable()).verdict is Verdict.OK


def spec_of(tmp_path: Path, provider: Any, **more: Any) -> Any:
    write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    data = {"model": "m", "input": "in.jsonl", "provider": provider, **more}
    return parse_spec(data, spec_path=tmp_path / "job.yaml", source="job.yaml")


def test_region_picks_the_international_base_url_and_tier_the_limits(tmp_path: Path) -> None:
    kimi = spec_of(tmp_path, {"name": "moonshot", "region": "international", "tier": "tier2"}, limits={"rpm": 100})
    assert kimi.provider.base_url == "https://api.moonshot.ai/v1"
    assert (kimi.limits.concurrency, kimi.limits.rpm, kimi.limits.tpm) == (100, 100.0, 3_000_000.0)  # rpm as given
    assert spec_of(tmp_path, {"name": "ark", "region": "international"}).provider.base_url == (
        "https://ark.ap-southeast.bytepluses.com/api/v3"
    )
    assert spec_of(tmp_path, {"name": "zhipu", "region": "international"}).provider.base_url.startswith(
        "https://api.z.ai"
    )
    deepseek = spec_of(tmp_path, "deepseek")
    assert deepseek.limits.concurrency == 500 and deepseek.limits.rpm is None and deepseek.retry.queue_s == 600
    assert spec_of(tmp_path, "siliconflow").provider.base_url == "https://api.siliconflow.cn/v1"


@pytest.mark.parametrize(
    ("provider", "said"),
    [
        (
            {"name": "moonshot", "region": "intl"},
            "provider.region must be one of china, international, got 'intl': did you mean 'international'?",
        ),
        ({"name": "deepseek", "region": "international"}, "provider.region is not offered by DeepSeek"),
        (
            {"name": "ark", "region": "china", "base_url": "https://x"},
            "provider.base_url and provider.region ('china') both",
        ),
        ({"name": "zhipu", "tier": "tier1"}, "provider.tier is not offered by Zhipu GLM"),
        ("doubao", "did you mean 'ark'?"),
        ("kimi", "did you mean 'moonshot'?"),
        ("siliconcloud", "did you mean 'siliconflow'?"),
        ("deepseek-ai", "did you mean 'deepseek'?"),
    ],
)
def test_preset_keys_are_checked_against_the_preset(tmp_path: Path, provider: Any, said: str) -> None:
    with pytest.raises(SpecError) as info:
        spec_of(tmp_path, provider)
    assert said in str(info.value) and "\n" not in str(info.value)


def test_a_queued_wait_is_not_taken_for_a_slower_provider() -> None:
    """Answers that waited in DeepSeek's queue took long, but the provider's work did not: concurrency holds."""
    now = [0.0]
    throttle = Throttle(Limits(concurrency=100), "auto", log=lambda _: None, clock=lambda: now[0])
    for i in range(400):
        now[0] += 0.05
        queued = 9.9 if i >= 100 else 0.0  # after a while, every answer first waited ~10 s queued
        reply = Reply(200, {}, {"choices": [{"finish_reason": "stop"}]}, queued + 0.1, queued=queued)
        throttle.done(Ticket(now[0] - reply.elapsed, None, 60), reply)
    assert throttle.concurrency.value == 100
