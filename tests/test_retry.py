from __future__ import annotations

import email.utils

import pytest

from batchrun.retry import MAX_SERVER_WAIT_S, Verdict, backoff_delay, classify, retry_after_seconds
from batchrun.spec.presets import PRESETS

OK_BODY = {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 1}}


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    assert classify(status, {"error": {"message": "busy"}}, {}).verdict is Verdict.RETRY


@pytest.mark.parametrize("error", ["timeout", "connection_error (ServerDisconnectedError)"])
def test_no_answer_is_retried(error: str) -> None:
    decision = classify(None, None, {}, error)
    assert decision.verdict is Verdict.RETRY
    assert decision.code == error.split(" ")[0] and error in decision.message


@pytest.mark.parametrize("status", [400, 404, 422])
def test_bad_request_fails_the_row(status: int) -> None:
    decision = classify(status, {"error": {"code": "invalid_request_error", "message": "bad max_tokens"}}, {})
    assert decision.verdict is Verdict.FAIL_ROW
    assert decision.code == "invalid_request_error"
    assert "bad max_tokens" in decision.message


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_stop_the_run(status: int) -> None:
    assert classify(status, {"error": {"message": "Incorrect API key"}}, {}).verdict is Verdict.STOP_RUN


R, F, S = Verdict.RETRY, Verdict.FAIL_ROW, Verdict.STOP_RUN


@pytest.mark.parametrize(
    ("preset", "status", "code", "verdict"),
    [  # docs/providers.md
        ("zhipu", 429, "1302", R),
        ("zhipu", 429, "1305", R),
        ("zhipu", 429, "1113", S),
        ("zhipu", 429, "1304", S),
        ("zhipu", 429, "1310", S),
        ("zhipu", 400, "1213", F),
        ("zhipu", 400, "1301", F),
        ("aistudio", 429, "tpm_rate_limit_exceeded", R),
        ("qianfan", 429, "cluster_rate_limit_exceeded", R),
        ("aistudio", 403, "system_unsafe", F),
        ("aistudio", 403, "account_overdue", S),
        ("qianfan", 403, "model_offline", S),
        ("dashscope", 429, "Throttling.RateQuota", R),
        ("dashscope", 429, "insufficient_quota", R),
        ("dashscope", 429, "PrepaidBillOverdue", S),
        ("dashscope", 400, "DataInspectionFailed", F),
        ("modelarts", 429, "ModelArts.81103", R),
        ("modelarts", 403, "ModelArts.81011", F),
        ("modelarts", 403, "ModelArts.4910", F),
        ("modelarts", 401, "ModelArts.81005", S),
        ("openai", 429, "insufficient_quota", S),
        ("openai", 429, "rate_limit_exceeded", R),
        ("genstudio", 403, "anything", S),
        ("vllm", 400, "anything", F),
    ],
)
def test_provider_error_tables(preset: str, status: int, code: str, verdict: Verdict) -> None:
    body = (
        {"error_code": code, "error_msg": "x"}
        if code.startswith("ModelArts")
        else {"error": {"code": code, "message": "x"}}
    )
    decision = classify(status, body, {}, table=PRESETS[preset].errors)
    assert (decision.verdict, decision.code) == (verdict, code)


def test_ok_and_suspicious_200s() -> None:
    assert classify(200, OK_BODY, {}).verdict is Verdict.OK
    assert classify(200, b"<html>oops</html>", {}).verdict is Verdict.RETRY
    assert classify(200, {"choices": []}, {}).code == "empty_response"
    legacy = classify(
        200, {"error_code": 336501, "error_msg": "Rate limit reached for RPM"}, {}, table=PRESETS["qianfan"].errors
    )
    assert (legacy.verdict, legacy.code) == (Verdict.RETRY, "336501")


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"blocked": True}, "blocked"),
        ({"flag": 3, "ban_round": -1}, "ernie_flag_3"),
        ({"content_filter": [{"role": "assistant", "level": 1}]}, "content_filter"),
    ],
)
def test_moderated_answers_are_failures_not_successes(extra: dict[str, object], code: str) -> None:
    decision = classify(200, {**OK_BODY, **extra}, {})
    assert (decision.verdict, decision.code) == (Verdict.FAIL_ROW, code)


@pytest.mark.parametrize(
    ("finish", "verdict"),
    [("content_filter", F), ("sensitive", F), ("length", Verdict.OK), ("stop", Verdict.OK), ("normal", Verdict.OK)],
)
def test_finish_reasons(finish: str, verdict: Verdict) -> None:
    body = {"choices": [{"message": {"content": "x"}, "finish_reason": finish}]}
    assert classify(200, body, {}).verdict is verdict


def test_low_risk_ernie_flags_and_user_side_filters_pass() -> None:
    assert classify(200, {**OK_BODY, "flag": 1}, {}).verdict is Verdict.OK
    assert classify(200, {**OK_BODY, "content_filter": [{"role": "user", "level": 3}]}, {}).verdict is Verdict.OK


def test_html_error_bodies_become_short_messages() -> None:
    decision = classify(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", {})
    assert decision.message == "HTTP 502: 502 Bad Gateway"


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(1_000_010, usegmt=True)
    assert retry_after_seconds({"retry-after": date}, now=1_000_000) == pytest.approx(10.0)
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_retry_after_is_carried_by_the_decision() -> None:
    assert classify(429, None, {"retry-after": "7"}).retry_after == 7.0


def test_backoff_grows_exponentially_with_jitter_and_cap() -> None:
    delays = [backoff_delay(n, base=1.0, cap=30.0, jitter=1.0) for n in range(1, 8)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delay(3, base=1.0, cap=30.0, jitter=0.0) == 2.0  # jitter spreads between half and full


def test_backoff_honours_retry_after_but_not_forever() -> None:
    assert backoff_delay(1, base=1.0, cap=2.0, retry_after=12.0) == 12.0
    assert backoff_delay(1, base=1.0, cap=2.0, retry_after=1e9) == MAX_SERVER_WAIT_S


def test_zero_base_means_no_waits() -> None:
    assert backoff_delay(5, base=0.0, cap=0.0, jitter=0.7) == 0.0


def test_no_answer_codes_are_one_token_with_the_detail_in_the_message() -> None:
    decision = classify(None, None, {}, "connection_error (ClientConnectorError)")
    assert decision.verdict is Verdict.RETRY and decision.code == "connection_error"
    assert "ClientConnectorError" in decision.message
    assert classify(None, None, {}, "stream_cut (the stream ended before [DONE])").code == "stream_cut"
    assert classify(None, None, {}, "timeout").code == "timeout"
