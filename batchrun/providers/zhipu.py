"""Zhipu GLM's own ways: the asyncCompletions submit-and-poll path, and the legacy HS256 JWT auth.

Submit `POST {base}/async/chat/completions` (the ordinary chat body) → `{"id", "task_status": "PROCESSING"}`;
poll `GET {base}/async-result/{id}` until task_status leaves PROCESSING/SUBMITTED (docs/providers.md).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from ..errors import SpecError
from ..retry import Decision, ErrorTable, Verdict, classify, error_details, retry_after_seconds
from .openai import ChatCompletions
from .transport import Http, Reply, fetch_json

JWT_LIFETIME_MS = 210_000  # what the official SDK signs: exp = now + 210 s
JWT_REUSE_S = 180.0  # and how long it reuses one token
PENDING_STATUSES = frozenset({"PROCESSING", "SUBMITTED"})
SUCCESS_STATUS = "SUCCESS"
EXPIRED_STATUSES = frozenset({404, 410})  # the provider no longer knows the task id
EXPIRED = Decision(Verdict.RETRY, "task_expired", "the provider no longer knows this task id; submitted again")


class TaskState(enum.Enum):
    PENDING = "pending"  # poll again later
    SUCCESS = "success"  # the answer is in the poll body
    FAILED = "failed"  # FAIL / FAILED or any other final status
    EXPIRED = "expired"  # the task id is unknown (expired, or never existed): submit the row again
    NO_ANSWER = "no_answer"  # the poll itself failed (timeout, 5xx, 429): poll again later
    REFUSED = "refused"  # 401/403 or another error answer: classify it as any other error


def task_state(status: int | None, body: Any) -> TaskState:
    """What one poll answer says about its task."""
    if status is None or status == 429 or status >= 500:
        return TaskState.NO_ANSWER
    if status in EXPIRED_STATUSES:
        return TaskState.EXPIRED
    if status != 200 or not isinstance(body, Mapping):
        return TaskState.REFUSED if status != 200 else TaskState.NO_ANSWER
    value = str(body.get("task_status") or "").upper()
    if value in PENDING_STATUSES:
        return TaskState.PENDING
    if value == SUCCESS_STATUS:
        return TaskState.SUCCESS
    if not value:
        return TaskState.REFUSED if body.get("error") or body.get("error_code") else TaskState.NO_ANSWER
    return TaskState.FAILED


class TaskAction(enum.Enum):
    POLL = "poll"  # still running, or the poll went unanswered: poll again on the task's backoff
    EXPIRED = "expired"  # the provider does not know the id: submit the row again
    RESUBMIT = "resubmit"  # the task failed, or succeeded with nothing in it: submit the row again
    DECIDE = "decide"  # final: record the answer, fail the row, or stop the run, as `decision` says


@dataclass(frozen=True, slots=True)
class TaskVerdict:
    action: TaskAction
    decision: Decision | None = None
    found: bool = False  # the provider knew the task: proof that the poll URL is right
    pause: float | None = None  # seconds to hold every poll (the provider answered a poll with 429)


def judge_task(reply: Reply, table: ErrorTable) -> TaskVerdict:
    """What to do with one poll's answer. A failed task fails its row only when its code says the row is at
    fault (moderation, a bad parameter); otherwise the row is submitted again, even on arrears: the new
    submission reports those, where an old task would stop every resumed run that polls it."""
    state = task_state(reply.status, reply.body)
    if state is TaskState.NO_ANSWER:
        unanswered = classify(None, None, {}, reply.error) if reply.status is None else None
        if unanswered is not None and unanswered.verdict is Verdict.STOP_RUN:  # a proxy that wants credentials
            return TaskVerdict(TaskAction.DECIDE, unanswered)
        pause = (retry_after_seconds(reply.headers) or 1.0) if reply.status == 429 else None
        return TaskVerdict(TaskAction.POLL, pause=pause)
    if state is TaskState.PENDING:
        return TaskVerdict(TaskAction.POLL, found=True)
    if state is TaskState.EXPIRED:
        return TaskVerdict(TaskAction.EXPIRED, EXPIRED)
    decision = classify(reply.status, reply.body, reply.headers, reply.error, table)
    if state is TaskState.SUCCESS:  # RETRY here means a SUCCESS with no answer in it: the task is no use
        return TaskVerdict(
            TaskAction.RESUBMIT if decision.verdict is Verdict.RETRY else TaskAction.DECIDE, decision, found=True
        )
    if state is TaskState.FAILED:
        code, message = error_details(reply.body)
        status = str(reply.body.get("task_status")) if isinstance(reply.body, dict) else "FAIL"
        failed = Decision(Verdict.RETRY, code or "task_failed", message or f"the task ended {status}")
        if code and table.verdict(code) is Verdict.FAIL_ROW:
            return TaskVerdict(TaskAction.DECIDE, replace(failed, verdict=Verdict.FAIL_ROW), found=True)
        return TaskVerdict(TaskAction.RESUBMIT, failed, found=True)
    # REFUSED: an error answer to the poll itself (a bad key stops the run; nothing else is worth repeating)
    if decision.verdict is Verdict.RETRY:
        decision = replace(decision, verdict=Verdict.FAIL_ROW)
    return TaskVerdict(TaskAction.DECIDE, decision)


def task_id(body: Any) -> str | None:
    """The id a submission answer carries, or None when it carries none (retried like an empty answer)."""
    if isinstance(body, Mapping):
        value = body.get("id") or body.get("task_id")
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def poll_delay(polls: int, jitter: float, *, first: float = 1.5, growth: float = 1.6, cap: float = 12.0) -> float:
    """Seconds from one poll of a task to the next: ~1.5 s at first, growing towards ~12 s.

    `jitter` in [0, 1) spreads polls of tasks submitted together by ±20 %."""
    base = min(cap, first * growth ** max(0, polls))
    return base * (0.8 + 0.4 * jitter)


class AsyncCompletions(ChatCompletions):
    """Submit one row as a task; poll it separately (the runner schedules polls under their own budget)."""

    def __init__(self, base_url: str, auth: Callable[[], str | None]) -> None:
        super().__init__(base_url, auth)
        root = base_url.rstrip("/")
        self.url = root + "/async/chat/completions"
        self.result_url = root + "/async-result/"

    async def poll(self, http: Http, task: str, timeout: float, auth: Callable[[], str | None] | None = None) -> Reply:
        return await fetch_json(http, "GET", self.result_url + task, self.headers(auth), timeout)


class ZhipuJWT:
    """`Authorization: Bearer <token>` for an `id.secret` key: HS256, re-signed every 180 s."""

    def __init__(self, key: str, clock: Callable[[], float] = time.time) -> None:
        kid, sep, secret = key.partition(".")
        if not sep or not kid or not secret:
            raise SpecError(
                "provider.auth: jwt needs a Zhipu key of the form id.secret; the key in the environment "
                "has no '.': use auth: bearer (the default) for a plain key"
            )
        self.kid, self.secret, self.clock = kid, secret.encode(), clock
        self._token = ""
        self._signed_at = float("-inf")

    def __call__(self) -> str:
        now = self.clock()
        if now - self._signed_at >= JWT_REUSE_S:
            self._token, self._signed_at = self.sign(int(now * 1000)), now
        return f"Bearer {self._token}"

    def sign(self, now_ms: int) -> str:
        header = _b64(orjson.dumps({"alg": "HS256", "sign_type": "SIGN"}))
        payload = _b64(orjson.dumps({"api_key": self.kid, "exp": now_ms + JWT_LIFETIME_MS, "timestamp": now_ms}))
        signing_input = header + b"." + payload
        signature = _b64(hmac.new(self.secret, signing_input, hashlib.sha256).digest())
        return (signing_input + b"." + signature).decode()


def verify_jwt(token: str, key: str, now_ms: int) -> str | None:
    """Why a token is not valid for `key` (None when it is): the simulated provider's check."""
    kid, _, secret = key.partition(".")
    try:
        header, payload, signature = token.encode().split(b".")
        claims = orjson.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return "not a JWT"
    expected = _b64(hmac.new(secret.encode(), header + b"." + payload, hashlib.sha256).digest())
    if not hmac.compare_digest(expected, signature):
        return "bad signature"
    if not isinstance(claims, dict) or claims.get("api_key") != kid:
        return "wrong api_key claim"
    if not isinstance(claims.get("exp"), int) or claims["exp"] < now_ms:
        return "token expired"
    return None


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")
