"""Each provider's own manners on the wire, for `simulate.speaks`: its error bodies (DeepSeek's, Ark's codes, Kimi's
types, SiliconFlow's `{"code", "message", "data"}`), its answer to an empty balance, and DeepSeek's queue (the
answer's head at once, then keep-alives until inference starts). The simulator decides in its own words (OpenAI's
error objects, Zhipu's 1302 and 1305 codes); this module says them as `speaks` would. The bodies follow
`providers-2026.md` section 1.3; where that marks a shape unverified, so do the docs (docs/simulator.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

Said = tuple[int, Any]  # an answer's status and body
KEEPALIVE_S = 0.25  # how often a queued request is sent a keep-alive (DeepSeek's interval is not documented)

# The simulator's codes: rate_limit_exceeded (RPM/TPM, its message names which), 1302 (too many in flight),
# 1305 (overloaded), model_not_found, invalid_api_key, internal_error, balance (the account ran dry).
_ARK = {
    "1302": "RateLimitExceeded.EndpointRPMExceeded",
    "1305": "ServerOverloaded",
    "model_not_found": "InvalidEndpointOrModel.NotFound",
    "invalid_api_key": "AuthenticationError",
    "internal_error": "InternalServiceError",
    "balance": "AccountOverdueError",
}
_KIMI = {
    "rate_limit_exceeded": "rate_limit_reached_error",
    "1302": "rate_limit_reached_error",
    "1305": "engine_overloaded_error",
    "model_not_found": "resource_not_found_error",
    "invalid_api_key": "invalid_authentication_error",
    "internal_error": "server_error",
    "balance": "exceeded_current_quota_error",
}
_SILICONFLOW = {"model_not_found": 20012, "balance": 30001, "1305": 50505}
_SILICONFLOW_WORDS = {
    20012: "Model does not exist. Please check it carefully.",
    30001: "Sorry, your account balance is insufficient",
    50505: "Model service overloaded. Please try again later.",
}


def spoken(speaks: str, status: int, body: Any) -> Said:
    """An error answer (status >= 400, an OpenAI error object) as `speaks`'s provider gives it; others as they are."""
    err = body.get("error") if isinstance(body, dict) else None
    if status < 400 or not isinstance(err, dict):
        return status, body
    code, message = str(err.get("code") or ""), str(err.get("message") or "")
    if speaks == "deepseek":
        return _deepseek(status, code, message)
    if speaks == "ark":
        named = _ARK.get(code) or (_ark_rate(message) if code == "rate_limit_exceeded" else code)
        return status, {"error": {"code": named, "message": message, "type": err.get("type") or "BadRequest"}}
    if speaks == "moonshot":
        return status, {"error": {"type": _KIMI.get(code, code or "invalid_request_error"), "message": message}}
    if speaks == "siliconflow":
        return _siliconflow(status, code, message)
    return status, body


def insufficient_balance(speaks: str) -> Said:
    """The answer to a request once the account's balance is used up (`simulate.balance`)."""
    if speaks == "deepseek":
        return 402, {"error": {"message": "Insufficient Balance", "type": "unknown_error", "param": None, "code": None}}
    if speaks == "zhipu":
        return 429, {"error": {"code": "1113", "message": "您的账户已欠费，请充值后重试。"}}
    if speaks == "openai":
        return 429, {"error": {"code": "insufficient_quota", "message": "You exceeded your current quota."}}
    return spoken(speaks, 403, {"error": {"code": "balance", "message": "Insufficient account balance"}})


def _deepseek(status: int, code: str, message: str) -> Said:
    """DeepSeek's error page names statuses, not codes: 429 Rate Limit Reached (its limit is on requests in
    flight), 503 Server Overloaded, the rest OpenAI-like."""
    if code in ("1302", "rate_limit_exceeded"):
        return 429, _deepseek_body("Rate Limit Reached", "rate_limit_error")
    if code == "1305":
        return 503, _deepseek_body("Server Overloaded", "service_unavailable_error")
    return status, _deepseek_body(message, "invalid_request_error" if status < 500 else "api_error")


def _deepseek_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _ark_rate(message: str) -> str:
    return "RateLimitExceeded.Endpoint" + ("TPMExceeded" if "token" in message.lower() else "RPMExceeded")


def _siliconflow(status: int, code: str, message: str) -> Said:
    """SiliconFlow's `{"code", "message", "data": null}`; its 429 has no code and names the limit in words."""
    if status == 429 or code == "1302":
        if "limit reached" not in message:
            message = "Details: " + ("TPM" if "token" in message.lower() else "RPM") + " limit reached."
            message = "Request was rejected due to rate limiting. " + message
        return 429, {"message": message, "data": None}
    number = _SILICONFLOW.get(code) or (int(code) if code.isdigit() else status)
    status = 503 if code == "1305" else status
    return status, {"code": number, "message": _SILICONFLOW_WORDS.get(number, message), "data": None}


def cut_short(answer: dict[str, Any]) -> None:
    """An answer the provider cut for want of resources (DeepSeek's finish_reason insufficient_system_resource):
    half its text, billed in full all the same."""
    choice = answer["choices"][0]
    message = choice.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        message["content"] = message["content"][: len(message["content"]) // 2]
    choice["finish_reason"] = "insufficient_system_resource"


async def hold_queued(
    request: web.Request, resp: web.StreamResponse, queue_s: float, stream: bool, clock: Callable[[], float]
) -> bool:
    """Hold a request queued for `queue_s` before its inference starts, as DeepSeek does: the answer's head goes out
    at once, then a keep-alive every KEEPALIVE_S (a blank line; in a stream a `: keep-alive` comment). False when
    the client went away meanwhile."""
    beat = b": keep-alive\n\n" if stream else b"\n"
    with contextlib.suppress(ConnectionError):
        await resp.prepare(request)
        end = clock() + queue_s
        await resp.write(beat)
        while (left := end - clock()) > 0:
            await asyncio.sleep(min(KEEPALIVE_S, left))
            await resp.write(beat)
        return True
    return False
