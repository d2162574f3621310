"""Pure retry logic: which answers are worth another attempt, and how long to wait before it.

No I/O here, so every rule is tested directly; the transport feeds it what came back.
"""

from __future__ import annotations

import email.utils
import enum
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RETRY_STATUSES = frozenset({408, 409, 429})
MAX_SERVER_WAIT_S = 900.0  # a Retry-After longer than this is treated as "later", not obeyed literally
FILTERED_FINISH = frozenset({"content_filter", "sensitive"})  # the answer was cut by moderation
ERNIE_HIDDEN_FLAG = 3  # ERNIE's flag: 0 safe, 1 low risk, 2 stop the chat (shown), 3 do not show, 4 retract
# A proxy's own failures, as the transport names them (`code (what the proxy did)`): every request goes through
# the same proxy, so they doom every row. Credentials wanted stop the run at once; the others are an endpoint
# that is not there, proved by the first rows as a wrong base_url is (endpoint_sign).
PROXY_AUTH = "proxy_auth_required"
PROXY_UNREACHABLE, PROXY_ERROR = "proxy_unreachable", "proxy_error"
PROXY_CODES = frozenset({PROXY_AUTH, PROXY_UNREACHABLE, PROXY_ERROR})


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"  # transient: try this row again after a backoff
    FAIL_ROW = "fail_row"  # this row's request is wrong: a failure record, no retry
    STOP_RUN = "stop_run"  # every row would fail the same way: stop the run


@dataclass(frozen=True)
class ErrorTable:
    """A provider's own error codes, sorted by what to do; codes not listed fall back to the HTTP status.

    A code may also be a status the provider uses for one thing only, as `http_402` (DeepSeek: no balance): it
    applies when the body's own code is not in the table (a provider's bodies vary more than its statuses)."""

    retry: frozenset[str] = frozenset()
    fail_row: frozenset[str] = frozenset()
    stop: frozenset[str] = frozenset()
    # Retried too, and they say the provider's limit on requests in flight was hit (Zhipu's 1302, DeepSeek's
    # every 429): the Throttle holds concurrency under it instead of braking the rate.
    concurrency: frozenset[str] = frozenset()
    # (pattern, code): a body with no code of its own whose message matches goes by that code (SiliconFlow's
    # 429s name the limit hit only in words: "Details: RPD limit reached.")
    messages: tuple[tuple[str, str], ...] = ()
    # finish reasons that say the provider cut the answer for its own trouble (DeepSeek's
    # insufficient_system_resource): retried like a 503, the cut answer's tokens counted as billed
    retry_finish: frozenset[str] = frozenset()
    # (code, what to do): said when that code stops the run ("top up at ...", "resume after midnight ...")
    fixes: tuple[tuple[str, str], ...] = ()

    def verdict(self, code: str) -> Verdict | None:
        if code in self.retry or code in self.concurrency:
            return Verdict.RETRY
        if code in self.fail_row:
            return Verdict.FAIL_ROW
        if code in self.stop:
            return Verdict.STOP_RUN
        return None

    def named(self, status: int, code: str | None, message: str) -> tuple[str, Verdict | None]:
        """The code an error answer goes by and what the table says of it: the body's code, else one its message
        names (`messages`); when the table knows neither, its status (`http_429`)."""
        if code is None:
            code = next((c for pattern, c in self.messages if re.search(pattern, message)), None)
        if code is not None and (known := self.verdict(code)) is not None:
            return code, known
        by_status = f"http_{status}"
        return code or by_status, self.verdict(by_status)

    def in_flight(self, status: int | None, body: Any) -> str | None:
        """The code of an answer that says too many requests were in flight (None: it does not)."""
        if status != 429 or not self.concurrency:
            return None
        code = error_details(body)[0]
        if code in self.concurrency:
            return code
        return f"http_{status}" if f"http_{status}" in self.concurrency else None

    def fix(self, code: str) -> str | None:
        return next((what for known, what in self.fixes if known == code), None)


GENERIC = ErrorTable()


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    code: str
    message: str
    retry_after: float | None = None  # seconds the server asked us to wait
    fix: str | None = None  # what the user does about it, when the provider's table says (a stop)


def classify(
    status: int | None,
    body: Any,
    headers: Mapping[str, str],
    transport_error: str | None = None,
    table: ErrorTable = GENERIC,
) -> Decision:
    """Sort one attempt's outcome into OK / RETRY / FAIL_ROW / STOP_RUN, by the provider's table first."""
    if status is None:  # the code is one token (`connection_error`); the detail goes in the message
        error = transport_error or "connection_error (the connection failed)"
        if error.startswith(PROXY_AUTH):  # the message names the proxy and what to set
            return Decision(Verdict.STOP_RUN, PROXY_AUTH, proxy_failure(error) or error)
        return Decision(Verdict.RETRY, error.split(" ", 1)[0], "no answer: " + error)
    code, message = error_details(body)
    if status == 200:
        if not isinstance(body, Mapping):
            return Decision(Verdict.RETRY, "invalid_response", "HTTP 200 with a body that is not a JSON object")
        if code is not None:  # some providers put errors inside a 200 (Baidu's legacy rate limits)
            return Decision(table.verdict(code) or Verdict.RETRY, code, message)
        if not body.get("choices") and not body.get("data"):  # data: an embeddings answer
            return Decision(Verdict.RETRY, "empty_response", "HTTP 200 with no choices")
        finish = first_choice(body).get("finish_reason")
        if isinstance(finish, str) and finish in table.retry_finish:
            return Decision(Verdict.RETRY, finish, f"the provider cut the answer short (finish_reason: {finish})")
        filtered = answer_problem(body)
        if filtered is not None:
            return Decision(Verdict.FAIL_ROW, *filtered)
        return Decision(Verdict.OK, "ok", "")
    code, known = table.named(status, code, message)
    if known is not None:
        after = retry_after_seconds(headers) if known is Verdict.RETRY else None
        fix = table.fix(code) or table.fix(f"http_{status}")
        return Decision(known, code, f"HTTP {status}: {message}", after, fix)
    if status in RETRY_STATUSES or status >= 500:
        return Decision(Verdict.RETRY, code, f"HTTP {status}: {message}", retry_after_seconds(headers))
    if status in (401, 403):
        return Decision(Verdict.STOP_RUN, code, f"HTTP {status}: {message}", fix=table.fix(f"http_{status}"))
    if status == 407:  # every request goes through the same proxy: none will get past it
        return Decision(
            Verdict.STOP_RUN,
            PROXY_AUTH,
            "HTTP 407 from the proxy: it wants credentials; give them in the proxy URL of HTTPS_PROXY / HTTP_PROXY "
            "(http://user:pass@host:port), never in the spec",
        )
    return Decision(Verdict.FAIL_ROW, code, f"HTTP {status}: {message}")


TLS_HINT = (
    "the server's TLS certificate is not trusted; on a network that inspects TLS, point provider.ca_bundle "
    "(or SSL_CERT_FILE) at its CA bundle"
)


def proxy_failure(transport_error: str | None) -> str | None:
    """What the proxy did, when a transport error says the proxy (not the provider) failed the request."""
    code, _, detail = (transport_error or "").partition(" ")
    return detail[1:-1] if code in PROXY_CODES and detail.startswith("(") else None


def is_tls_error(error: str | None) -> bool:
    """A transport error that says the certificate chain was refused (aiohttp names it in the class)."""
    return error is not None and ("Certificate" in error or "SSLError" in error)


def endpoint_sign(status: int | None, body: Any, transport_error: str | None) -> str | None:
    """What an answer says when the endpoint itself is wrong (None: the endpoint answered like an API).

    Cannot connect (refused, no such host, TLS), a server that does not speak HTTP, or a 404/405 on the endpoint
    (a wrong path, or a model the provider does not have): if the first requests of a run all come back so,
    every row would, and the run stops instead of writing a failure record per row."""
    if status is None:
        error = transport_error or ""
        if not error.startswith(PROXY_AUTH) and (proxied := proxy_failure(error)):  # the proxy: refused, no tunnel
            return proxied
        if is_tls_error(error):
            return f"cannot connect: {TLS_HINT}"
        if "ClientConnector" in error:
            return f"cannot connect ({error.split('(', 1)[-1].rstrip(')')})"
        if "ClientResponseError" in error:
            return "the server does not speak HTTP"
        return None
    if status in (404, 405):
        code, message = error_details(body)
        return f"HTTP {status}" + (f" {code}: {message}" if code else f": {message}" if message else "")
    return None


def answer_problem(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(code, message) when a 200 answer was blocked or filtered by moderation: never a silent success."""
    if body.get("blocked") is True:  # GenStudio
        return "blocked", "the provider's moderation blocked this answer (blocked: true)"
    flag = body.get("flag")  # ERNIE
    if isinstance(flag, int) and not isinstance(flag, bool) and flag >= ERNIE_HIDDEN_FLAG:
        return f"ernie_flag_{flag}", f"ERNIE marked this answer flag={flag} (not to be shown)"
    first = first_choice(body)
    finish = first.get("finish_reason")
    filters = body.get("content_filter")  # Zhipu: [{role, level}]
    assistant_filtered = isinstance(filters, list) and any(
        isinstance(f, Mapping) and f.get("role") == "assistant" for f in filters
    )
    hit = first.get("moderation_hit_type")  # Ark: what the answer's moderation found (violence, severe_violation)
    if finish in FILTERED_FINISH or assistant_filtered or hit:
        why = f"finish_reason: {finish}" + (f", moderation_hit_type: {hit}" if hit else "")
        return "content_filter", f"the answer was cut by content moderation ({why})"
    return None


def first_choice(body: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = body.get("choices")
    return choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}


NO_CODE: tuple[object, ...] = (None, 0, "0", "", 200, "200")


def error_details(body: Any) -> tuple[str | None, str]:
    """(code, message) from the error shapes providers use; code is None when the body holds no error.

    The shapes: OpenAI's `{"error": {"code" | "type", "message"}}` (DeepSeek, Ark, Kimi, Zhipu, DashScope),
    Baidu's and ModelArts' `{"error_code", "error_msg"}`, and SiliconFlow's `{"code": 20012, "message", "data"}`
    (a top-level code beside `data`, never an answer's `choices`)."""
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, Mapping):
            code = err.get("code") or err.get("type")
            return (str(code) if code is not None else "error"), str(err.get("message") or "")[:500]
        if isinstance(err, str):
            return "error", err[:500]
        if body.get("error_code") not in (None, 0, "0", ""):
            return str(body["error_code"]), str(body.get("error_msg") or body.get("message") or "")[:500]
        code = body.get("code")
        if "data" in body and "choices" not in body and code not in NO_CODE and isinstance(code, (int, str)):
            return str(code), str(body.get("message") or "")[:500]
        return None, str(body.get("message") or "")[:500]
    if isinstance(body, (bytes, str)):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        text = re.sub(r"<[^>]*>", " ", text)
        return None, " ".join(text.split())[:200]
    return None, ""


# Where a server's wait is found: its own headers, and those a gateway relays from the provider behind it
# (LiteLLM's proxy renames every upstream header `llm_provider-<name>`, so an upstream 429's Retry-After
# reaches the client only as `llm_provider-retry-after`).
GATEWAY_PREFIXES = ("", "llm_provider-")


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a server asked for: `retry-after-ms`, else `retry-after` (seconds or an HTTP date), each also as a
    gateway relays it (`llm_provider-retry-after`); when both the gateway and the provider ask, the longer wait."""
    waits = [wait for prefix in GATEWAY_PREFIXES if (wait := _asked_wait(headers, prefix, now)) is not None]
    return max(waits) if waits else None


def _asked_wait(headers: Mapping[str, str], prefix: str, now: float | None) -> float | None:
    """The wait one source (the server's own headers, or a gateway's relayed copies) asked for."""
    ms = header(headers, prefix + "retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = header(headers, prefix + "retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, float(when.timestamp()) - (time.time() if now is None else now))


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The header `name` (lowercase) whatever its case: aiohttp's headers ignore case, a plain dict does not."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def backoff_delay(
    attempt: int, *, base: float, cap: float, retry_after: float | None = None, jitter: float = 0.5
) -> float:
    """Seconds to wait before attempt `attempt + 1`.

    The server's Retry-After wins when given; otherwise exponential from `base`, capped at `cap`, with
    `jitter` in [0, 1) spreading retries so a burst of failures does not come back as a burst.
    """
    if retry_after is not None:
        return min(retry_after, MAX_SERVER_WAIT_S)
    delay = min(cap, base * 2.0 ** max(0, attempt - 1))
    return delay * (0.5 + jitter / 2)
