"""Whether the simulated provider lets a request in, and if not, the answer that says so: no HTTP here, and every
clock reading is passed in (a test drives it with a fake clock).

In the order a request meets them: its key (revoked, wrong, or a Zhipu JWT signed with the right one), the quirks
its prompt stages (`#sim:status`, `fail`, `storm`, `429`, ...), requests in flight (Zhipu's 1302), a key pool's
per-key RPM, the RPM and TPM buckets (429 in OpenAI's, Zhipu's or LiteLLM's manner), then the faults drawn at
random (500s, dropped connections, garbage) and how long the answer takes. TPM is counted either way providers
count it: prompt + max_tokens on admission (`reserve`), or the tokens used once answered (`actual`).

The buckets that enforce RPM and TPM hold about one second of the limit (OpenAI enforces over short periods too);
the `x-ratelimit-*` headers describe the per-minute window, as OpenAI's do: a bucket of the whole minute's limit,
charged as the enforcing one is, refilling continuously (`remaining` of `limit`; `reset`, until it is full again).
"""

from __future__ import annotations

import enum
import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..limits.controllers import TokenBucket
from ..providers.zhipu import verify_jwt
from ..spec.simulator import SimulateSpec
from .answers import error_body, go_duration, litellm_limit_body


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer in place of the one asked for: its status and body, the provider's headers and the gateway's own."""

    status: int
    body: Any
    headers: dict[str, str] | None = None
    own: dict[str, str] | None = None


class Fault(enum.Enum):
    """An answer that is no JSON answer at all."""

    DROP = "drop"  # the connection closed without an answer
    GARBAGE = "garbage"  # HTTP 200 whose body is cut-off JSON
    HTML = "html"  # HTTP 500 with a gateway's HTML error page


Outcome = Refusal | Fault


class Admission:
    """The simulated provider's limits and manners; `injected` counts the faults it made up (the stats)."""

    def __init__(self, cfg: SimulateSpec, rng: random.Random, now: float) -> None:
        self.cfg, self.rng = cfg, rng
        self.rpm = TokenBucket.per_minute(cfg.rpm, now) if cfg.rpm else None
        self.tpm = TokenBucket.per_minute(cfg.tpm, now) if cfg.tpm else None
        # the minute the x-ratelimit-* headers describe: charged as the buckets above are, never refusing
        self.rpm_window = TokenBucket(cfg.rpm / 60, now, burst_s=60.0) if cfg.rpm else None
        self.tpm_window = TokenBucket(cfg.tpm / 60, now, burst_s=60.0) if cfg.tpm else None
        self.tpm_charged = 0.0  # what the TPM bucket was charged, in the configured accounting
        self.storm_until = -math.inf  # a 429 storm (#sim:storm) turns every request away until then
        self.injected: Counter[str] = Counter()  # random faults: 500, drop, slow
        # key pools: the keys in the named variables, each with its own RPM bucket, or refused
        self.key_names = {_env_key(env): env for env, _ in cfg.key_rpm} | {_env_key(env): env for env in cfg.revoked}
        self.key_rpm = {_env_key(env): (rpm, TokenBucket.per_minute(rpm, now)) for env, rpm in cfg.key_rpm}
        self.revoked = {_env_key(env) for env in cfg.revoked}
        self.by_key: Counter[str] = Counter()  # answers by key (its variable's name) and status: "VAR 200"

    def stats(self) -> dict[str, Any]:
        """What it charged and made up, for /_sim/stats."""
        return {"tpm_charged": round(self.tpm_charged), "injected": dict(self.injected), "by_key": dict(self.by_key)}

    def auth(self, token: str, now_ms: int) -> Refusal | None:
        """With a key configured, accept it as a bearer token, or (an `id.secret` key) a Zhipu JWT signed with it.
        A revoked key (simulate.revoked) is refused whatever is configured."""
        if self.revoked and token in self.revoked:
            self.by_key[f"{self.key_names[token]} 401"] += 1
            return Refusal(401, error_body("invalid_api_key", "This API key has been revoked", "authentication_error"))
        key = self.cfg.api_key
        if not key:
            return None
        if token == key:
            return None
        why = ""
        if "." in key and token.count(".") == 2:
            reason = verify_jwt(token, key, now_ms)
            if reason is None:
                return None
            why = f" ({reason})"
        return Refusal(401, error_body("invalid_api_key", f"Incorrect API key provided{why}", "authentication_error"))

    def staged(self, directives: dict[str, str], attempt: int, now: float) -> Outcome | None:
        """What the prompt's `#sim:` quirks make of this attempt, before any limit is looked at."""
        if "status" in directives:
            status = int(float(directives["status"] or 400))
            return Refusal(status, error_body(f"sim_{status}", f"simulated HTTP {status}"))
        for name in ("error", "ma-error"):
            if directives.get(name):
                status_text, _, code = directives[name].partition(":")
                body = (
                    {"error_code": code, "error_msg": f"simulated {code}"}
                    if name == "ma-error"
                    else error_body(code, f"simulated {code}")
                )
                return Refusal(int(status_text), body)
        if directives.get("limit"):  # a limit named in words, as SiliconFlow's 429s do (RPD: a per-day one)
            named = f"Request was rejected due to rate limiting. Details: {directives['limit']} limit reached."
            return Refusal(429, error_body("rate_limit_exceeded", named))
        if attempt <= int(float(directives.get("legacy") or 0)):
            return Refusal(200, {"error_code": 336501, "error_msg": "Rate limit reached for RPM"})
        if attempt <= int(float(directives.get("drop") or 0)):
            return Fault.DROP
        if attempt <= int(float(directives.get("fail") or 0)):
            return Refusal(500, error_body("internal_error", "simulated server error", "server_error"))
        if attempt == 1 and directives.get("storm"):
            self.storm_until = max(self.storm_until, now + float(directives["storm"]))
        if now < self.storm_until:
            self.injected["storm 429"] += 1
            headers = {"Retry-After": str(math.ceil(self.storm_until - now))} if self.cfg.retry_after else None
            return Refusal(
                429, error_body("1305", "The service may be temporarily overloaded, please try again later"), headers
            )
        if attempt <= int(float(directives.get("429") or 0)):
            wait = directives.get("retry-after") or "1"
            return Refusal(429, error_body("rate_limit_exceeded", "simulated rate limit"), {"Retry-After": wait})
        return None

    def admit(self, token: str, tokens: int, inflight: int, now: float) -> Refusal | None:
        """Within the limits (in flight, the key's RPM, RPM and TPM), charged to them; else the 429 that says
        which. `tokens`: the prompt's and the most its answer may take."""
        if self.cfg.max_inflight is not None and inflight > self.cfg.max_inflight:
            busy = error_body("1302", "您当前使用该API的并发数过高，请降低并发，或联系客服增加限额。")
            return Refusal(429, busy, {"Retry-After": "1"} if self.cfg.retry_after else None)
        limited = self._key_limit(token, now)
        if limited is None:
            limited = self._rate_limit(tokens, now)
        return limited

    def fault(self, attempt: int, directives: dict[str, str]) -> Outcome | None:
        """A fault drawn at random (`error_rate`, `drop_rate`), or one the prompt asks of this attempt."""
        if self.cfg.error_rate and self.rng.random() < self.cfg.error_rate:
            self.injected["500"] += 1
            return Refusal(500, error_body("internal_error", "simulated server error", "server_error"))
        if self.cfg.drop_rate and self.rng.random() < self.cfg.drop_rate:
            self.injected["drop"] += 1
            return Fault.DROP
        if attempt <= int(float(directives.get("garbage") or 0)):
            return Fault.GARBAGE
        if attempt <= int(float(directives.get("html") or 0)):
            return Fault.HTML
        return None

    def latency(self) -> float:
        """How long an answer takes, drawn from the configured distribution around its median."""
        median, dist = self.cfg.latency, self.cfg.latency_dist
        if median <= 0 or dist == "fixed":
            return max(0.0, median)
        if dist == "uniform":
            return median * (0.5 + self.rng.random())
        return median * math.exp(0.5 * self.rng.gauss(0.0, 1.0))

    def work_time(self, delay: float) -> float:
        """`delay`, or slow_s for the share of requests that are slow (past a client's timeout)."""
        if self.cfg.slow_rate and self.rng.random() < self.cfg.slow_rate:
            self.injected["slow"] += 1
            return self.cfg.slow_s
        return delay

    def charge_used(self, tokens: int, now: float) -> None:
        """TPM counted on usage: the tokens an answer used, charged once it is ready."""
        if self.tpm is not None and self.cfg.tpm_accounting == "actual":
            self.tpm.refill(now)
            self.tpm.take(tokens)
            self.tpm_charged += tokens
            self._charge_window(self.tpm_window, tokens, now)

    def rate_headers(self, now: float) -> dict[str, str]:
        """x-ratelimit-* as OpenAI sends them: what remains of the per-minute limits, and until when they are whole
        again (one request of 600 RPM taken: `remaining` 599, `reset` 100ms)."""
        return self._headers(now, self.rpm_window, self.tpm_window, reset=True)

    def key_headers(self, now: float) -> dict[str, str]:
        """A LiteLLM virtual key's: what its limiter (the enforcing buckets) has left, and no reset (LiteLLM sends
        none)."""
        return self._headers(now, self.rpm, self.tpm, reset=False)

    def _headers(
        self, now: float, requests: TokenBucket | None, tokens: TokenBucket | None, *, reset: bool
    ) -> dict[str, str]:
        headers = {}
        for kind, bucket, per_minute in (("requests", requests, self.cfg.rpm), ("tokens", tokens, self.cfg.tpm)):
            if bucket is not None and per_minute:
                bucket.refill(now)
                headers[f"x-ratelimit-limit-{kind}"] = str(int(per_minute))
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(bucket.level)))
                if reset:
                    headers[f"x-ratelimit-reset-{kind}"] = go_duration(bucket.reset_s())
        return headers

    @staticmethod
    def _charge_window(window: TokenBucket | None, amount: float, now: float) -> None:
        if window is not None:
            window.refill(now)
            window.take(amount)

    def _key_limit(self, token: str, now: float) -> Refusal | None:
        """A key pool's key: its own RPM bucket (429 naming its limit beyond it), counted by its variable."""
        found = self.key_rpm.get(token)
        if found is None:
            return None
        rpm, bucket = found
        env = self.key_names[token]
        wait = bucket.wait_for(1, now)
        if wait > 0:
            self.by_key[f"{env} 429"] += 1
            message = (
                f"Rate limit reached on requests per min (RPM): Limit {int(rpm)}, Requested 1. Please try again in "
                f"{wait * 1000:.0f}ms."
            )
            headers = {"Retry-After": str(max(1, math.ceil(wait)))} if self.cfg.retry_after else None
            return Refusal(429, error_body("rate_limit_exceeded", message), headers)
        bucket.take(1)
        self.by_key[f"{env} 200"] += 1
        return None

    def _rate_limit(self, tokens: int, now: float) -> Refusal | None:
        """Admit or answer 429. TPM counted on admission charges prompt + max_tokens now; counted on
        usage, it only needs the bucket out of debt now and is charged when the answer is ready."""
        reserve = self.cfg.tpm_accounting == "reserve"
        need = tokens if reserve else 1
        waits = [b.wait_for(n, now) for b, n in ((self.rpm, 1), (self.tpm, need)) if b is not None]
        wait = max(waits, default=0.0)
        if wait > 0:
            if self.cfg.gateway == "litellm-key":  # the virtual key's limit: LiteLLM's own 429, plain retry-after
                rpm_full = self.rpm is not None and self.rpm.wait_for(1, now) > 0
                kind, limit = ("rpm", self.cfg.rpm) if rpm_full else ("tpm", self.cfg.tpm)
                return Refusal(429, litellm_limit_body(kind, limit or 0), own={"retry-after": f"{wait:.3f}"})
            if not self.cfg.retry_after:  # Zhipu's way: a bare 429 that says nothing of the limit
                return Refusal(429, error_body("rate_limit_exceeded", "Rate limit reached, please retry later"))
            # OpenAI's way: Retry-After, and the message names the limit that was hit
            rpm_wait = self.rpm.wait_for(1, now) if self.rpm is not None else 0.0
            kind, limit = ("requests", self.cfg.rpm) if rpm_wait >= wait else ("tokens", self.cfg.tpm)
            short = "RPM" if kind == "requests" else "TPM"
            message = (
                f"Rate limit reached on {kind} per min ({short}): Limit {int(limit or 0)}, Requested "
                f"{1 if kind == 'requests' else need}. Please try again in {wait * 1000:.0f}ms."
            )
            headers = {"Retry-After": str(max(1, math.ceil(wait)))}
            return Refusal(429, error_body("rate_limit_exceeded", message), headers)
        if self.rpm is not None:
            self.rpm.take(1)
            self._charge_window(self.rpm_window, 1, now)
        if self.tpm is not None and reserve:
            self.tpm.take(tokens)
            self.tpm_charged += tokens
            self._charge_window(self.tpm_window, tokens, now)
        return None


def _env_key(env: str) -> str:
    """The key a variable holds: key pools are configured by the variables' names, never the keys."""
    key = os.environ.get(env, "").strip()
    if not key:
        raise SpecError(f"the simulated provider's key_rpm or revoked names ${env}, which is not set")
    return key
