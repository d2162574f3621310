"""The simulated provider: OpenAI-compatible chat completions on 127.0.0.1, with a provider's manners.

It enforces RPM/TPM with continuous token buckets holding about one second of the per-minute limit (429
beyond, with or without Retry-After and x-ratelimit-* headers), counts TPM either way providers do
(prompt + max_tokens on admission, or the tokens used once answered), can refuse requests beyond a number
in flight (Zhipu's 429 code 1302), injects HTTP 500s, draws latency from a distribution, and answers
deterministically from the prompt. `gateway` sends its headers as LiteLLM's proxy would in front of it.
Directives in a prompt reproduce a quirk for that one row, so tests and users can stage any failure:

    #sim:status=400     always answer that HTTP status with an error body
    #sim:fail=2         answer 500 to the first 2 attempts of this prompt
    #sim:429=1          answer 429 to the first attempt (Retry-After from #sim:retry-after=SECONDS, default 1)
    #sim:storm=2        a 429 storm: from this prompt's first arrival, every request of any row is answered
                        429 for 2 s, whatever the rate (Zhipu's 1305 "system busy")
    #sim:drop=1         drop the connection on the first attempt
    #sim:sleep=3        take 3 seconds to answer
    #sim:error=403:system_unsafe        answer that status with that provider error code ({"error": {...}})
    #sim:ma-error=403:ModelArts.81011  the same in ModelArts' {"error_code", "error_msg"} shape
    #sim:legacy=1       Baidu's legacy rate limit: HTTP 200 with error_code 336501, first attempt only
    #sim:blocked        GenStudio moderation: blocked: true
    #sim:flag=3         ERNIE safety flag on the answer
    #sim:filter         Zhipu moderation: content_filter [{role: assistant}], finish_reason "sensitive"
    #sim:finish=length  the answer's finish_reason
    #sim:think          a thinking model: reasoning_content beside content
    #sim:cut=1          with stream: true, cut the first attempt's stream midway (no [DONE])
    #sim:garbage=1      HTTP 200 whose body is cut-off JSON, first attempt only
    #sim:nochoices=1    HTTP 200 with an empty choices list (billed all the same), first attempt only
    #sim:html=1         HTTP 500 with an HTML error page (as a gateway sends), first attempt only
    #sim:task=5         async: this task takes 5 s (otherwise uniform within simulate.task_s, 2-20 s)
    #sim:task-fail=1    async: the first submission's task ends with task_status FAIL
    #sim:expire=1       async: the first submission's task id is forgotten (polls answer 404)
    #sim:json=type      asked for JSON: a first answer spoilt (bad, type, missing, cut) or wrapped (fence)
    #sim:stubborn       asked for JSON: repairs and re-asks are spoilt the same way too

Task ids carry their task, so polls are answered correctly even by a restarted simulator.

It serves any base path (`/v1`, `/api/paas/v4`, ...), so a preset's own error table can be tried on it, and
Zhipu's asyncCompletions: `POST .../async/chat/completions` and `GET .../async-result/{id}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import heapq
import math
import os
import random
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from ..errors import SpecError
from ..limits.controllers import TokenBucket
from ..providers.zhipu import verify_jwt
from ..rows.request import estimate_messages, estimate_tokens, max_output_tokens
from ..spec.simulator import SimulateSpec
from .answers import (
    DIRECTIVE,
    MODELS,
    SPOILS,
    apply_answer_quirks,
    choice_count,
    completion_answer,
    decode_task,
    embeddings_answer,
    encode_task,
    error_body,
    go_duration,
    litellm_limit_body,
    model_entry,
    prompt_texts,
    stream_events,
    structured_content,
    through_gateway,
    unknown_model,
)
from .batches import BatchDesk


@dataclass(frozen=True, slots=True)
class _Call:
    """A request the simulator accepted: what answering it needs."""

    kind: str  # chat | completions | embeddings
    body: dict[str, Any]
    texts: list[str]  # the prompt's texts: message contents (the last user message last), prompts, or inputs
    key: bytes  # the prompt's digest: which attempts and bills belong together
    attempt: int
    directives: dict[str, str]
    prompt_tokens: int
    request_id: str  # this request's own, fixed when it arrived


Handler = Callable[["SimProvider", web.Request], Awaitable[web.StreamResponse]]


def _counted(handler: Handler) -> Handler:
    """Count the requests a handler is working on (the stats' `inflight`: what a killed client leaves)."""

    @functools.wraps(handler)
    async def counted(self: SimProvider, request: web.Request) -> web.StreamResponse:
        self.inflight += 1
        try:
            return await handler(self, request)
        finally:
            self.inflight -= 1

    return counted


class SimProvider:
    def __init__(self, cfg: SimulateSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.clock = cfg, clock
        now = clock()
        self.rpm = TokenBucket.per_minute(cfg.rpm, now) if cfg.rpm else None
        self.tpm = TokenBucket.per_minute(cfg.tpm, now) if cfg.tpm else None
        self.rng = random.Random(cfg.seed)
        self.attempts: Counter[bytes] = Counter()
        self.billed: Counter[bytes] = Counter()
        self.responses: Counter[int] = Counter()
        self.requests = self.dropped = 0
        self.billed_prompt_tokens = self.billed_completion_tokens = 0
        self.tpm_charged = 0.0  # what the TPM bucket was charged, in the configured accounting
        self.first_request_at: float | None = None  # wall-clock time, for start-up measurements
        self.tasks_submitted = self.polls = self.max_tasks_running = 0
        self.inflight = 0  # requests being handled: read, waited on, not yet answered (billed when answered)
        self.injected: Counter[str] = Counter()  # random faults: 500, drop, slow
        self.structured: Counter[str] = Counter()  # JSON asked for, repairs seen, answers spoilt, by kind
        self.max_tokens_asked: Counter[str] = Counter()  # of requests asking for JSON
        self.running: list[float] = []  # due times of tasks still running (a heap)
        self.storm_until = -math.inf  # a 429 storm (#sim:storm) turns every request away until then
        self.batch_desk = BatchDesk(self._batch_answer, self._auth, clock, cfg.batch_s)
        # key pools: the keys in the named variables, each with its own RPM bucket, or refused
        self.key_names = {_env_key(env): env for env, _ in cfg.key_rpm} | {_env_key(env): env for env in cfg.revoked}
        self.key_rpm = {_env_key(env): (rpm, TokenBucket.per_minute(rpm, now)) for env, rpm in cfg.key_rpm}
        self.revoked = {_env_key(env) for env in cfg.revoked}
        self.by_key: Counter[str] = Counter()  # answers by key (its variable's name) and status: "VAR 200"
        # whether clients wait as a 429 asks: when each prompt was last answered 429, and the shortest wait seen
        self.limited_at: dict[bytes, float] = {}
        self._last_key: bytes | None = None
        self.retried_after_429, self.min_retry_gap_s = 0, math.inf

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)  # batch files: 200 MB at most
        app.router.add_get("/_sim/stats", self.stats_view)
        app.router.add_post("/{base:.*}/async/chat/completions", self.submit_task)
        app.router.add_get("/{base:.*}/async-result/{task}", self.task_result)
        app.router.add_post("/{base:.*}/chat/completions", self.chat)
        app.router.add_post("/{base:.*}/{kind:completions|embeddings}", self.chat)
        app.router.add_get("/{base:.*}/models", self.models)
        app.router.add_get("/{base:.*}/models/{model}", self.model)
        self.batch_desk.routes(app)
        return app

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "responses": {str(k): v for k, v in sorted(self.responses.items())},
            "dropped": self.dropped,
            "billed_requests": sum(self.billed.values()),
            "billed_prompts": len(self.billed),
            "billed_twice": sum(1 for n in self.billed.values() if n > 1),
            "billed_prompt_tokens": self.billed_prompt_tokens,
            "billed_completion_tokens": self.billed_completion_tokens,
            "tpm_charged": round(self.tpm_charged),
            "first_request_at": self.first_request_at,
            "inflight": self.inflight,
            "injected": dict(self.injected),
            "structured": dict(self.structured),
            "by_key": dict(self.by_key),
            "max_tokens_asked": dict(self.max_tokens_asked),
            "tasks_submitted": self.tasks_submitted,
            "tasks_running": self._tasks_running(self.clock()),
            "max_tasks_running": self.max_tasks_running,
            "polls": self.polls,
            "retried_after_429": self.retried_after_429,  # attempts of a prompt whose last attempt was answered 429
            "min_retry_gap_s": round(self.min_retry_gap_s, 3) if self.retried_after_429 else None,
            **self.batch_desk.stats(),
        }

    def _tasks_running(self, now: float) -> int:
        while self.running and self.running[0] <= now:
            heapq.heappop(self.running)
        return len(self.running)

    async def stats_view(self, request: web.Request) -> web.Response:
        return _json(200, self.stats())

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.cfg.models or MODELS

    async def models(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        return _json(200, {"object": "list", "data": [model_entry(m) for m in self.model_names]})

    async def model(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        name = request.match_info["model"]
        if name not in self.model_names and self.cfg.models is not None:
            return self._answer(404, unknown_model(name))
        return _json(200, model_entry(name))

    def _auth(self, request: web.Request) -> web.Response | None:
        """With a key configured, accept it as a bearer token, or (an `id.secret` key) a Zhipu JWT signed with it.
        A revoked key (simulate.revoked) is refused whatever is configured."""
        if self.revoked and self._token(request) in self.revoked:
            self.by_key[f"{self.key_names[self._token(request)]} 401"] += 1
            return self._answer(
                401, error_body("invalid_api_key", "This API key has been revoked", "authentication_error")
            )
        key = self.cfg.api_key
        if not key:
            return None
        token = self._token(request)
        if token == key:
            return None
        why = ""
        if "." in key and token.count(".") == 2:
            reason = verify_jwt(token, key, int(time.time() * 1000))
            if reason is None:
                return None
            why = f" ({reason})"
        refused = error_body("invalid_api_key", f"Incorrect API key provided{why}", "authentication_error")
        return self._answer(401, refused)

    @staticmethod
    def _token(request: web.Request) -> str:
        return request.headers.get("Authorization", "").removeprefix("Bearer ")

    def _answer(
        self, status: int, body: Any, headers: dict[str, str] | None = None, own: dict[str, str] | None = None
    ) -> web.Response:
        self.responses[status] += 1
        return _json(status, body, self._headers(status, headers, own))

    def _headers(
        self, status: int, headers: dict[str, str] | None, own: dict[str, str] | None = None
    ) -> dict[str, str] | None:
        """The provider's headers (x-ratelimit-* too when asked), as the gateway, if any, passes them on, with the
        gateway's `own` (LiteLLM's virtual-key limits on its answers, with no reset header: LiteLLM sends none)."""
        key_limits = self.cfg.gateway == "litellm-key"
        if self.cfg.rate_headers and not key_limits:
            headers = {**self._rate_headers(), **(headers or {})}
        if key_limits and status == 200:
            own = {**self._rate_headers(reset=False), **(own or {})}
        return through_gateway(self.cfg.gateway, headers, own)

    def _refused(self, answer: web.StreamResponse) -> web.StreamResponse:
        """Note when a prompt was answered 429: its next attempt shows how long its client waited (the stats)."""
        if answer.status == 429 and self._last_key is not None:
            self.limited_at[self._last_key] = self.clock()
        return answer

    def _rate_headers(self, reset: bool = True) -> dict[str, str]:
        now, headers = self.clock(), {}
        for kind, bucket, per_minute in (("requests", self.rpm, self.cfg.rpm), ("tokens", self.tpm, self.cfg.tpm)):
            if bucket is not None and per_minute:
                bucket.refill(now)
                headers[f"x-ratelimit-limit-{kind}"] = str(int(per_minute))
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(bucket.level)))
                if reset:
                    headers[f"x-ratelimit-reset-{kind}"] = go_duration(bucket.reset_s())
        return headers

    def _latency(self) -> float:
        median, dist = self.cfg.latency, self.cfg.latency_dist
        if median <= 0 or dist == "fixed":
            return max(0.0, median)
        if dist == "uniform":
            return median * (0.5 + self.rng.random())
        return median * math.exp(0.5 * self.rng.gauss(0.0, 1.0))

    async def _accept(self, request: web.Request) -> _Call | web.StreamResponse:
        """Everything before the answer: auth, the body, the prompt's directives, rate limits, injected errors."""
        self.requests += 1
        request_id = f"sim-{self.requests}"  # taken now: other requests arrive while this one is read
        if self.first_request_at is None:
            self.first_request_at = time.time()
        if (denied := self._auth(request)) is not None:
            return denied
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._answer(400, error_body("invalid_request_error", "request body is not valid JSON"))
        kind = request.match_info.get("kind", "chat")
        texts = prompt_texts(kind, body)
        if texts is None:
            need = {
                "chat": "messages must be a non-empty list",
                "completions": "prompt must be a non-empty string",
                "embeddings": "input must be a non-empty string or list of strings",
            }[kind]
            return self._answer(400, error_body("invalid_request_error", need))
        if self.cfg.models is not None and body.get("model") not in self.cfg.models:
            return self._answer(404, unknown_model(str(body.get("model"))))
        text = "\n".join(texts)
        key = hashlib.blake2b(text.encode(), digest_size=8).digest()
        self.attempts[key] += 1
        attempt = self.attempts[key]
        self._last_key = key  # every 429 below is answered before another request gets this far (no await)
        if (limited_at := self.limited_at.pop(key, None)) is not None:
            self.retried_after_429 += 1
            self.min_retry_gap_s = min(self.min_retry_gap_s, self.clock() - limited_at)
        directives = {name: value for name, value in DIRECTIVE.findall(text)}

        if "status" in directives:
            status = int(float(directives["status"] or 400))
            return self._answer(status, error_body(f"sim_{status}", f"simulated HTTP {status}"))
        for name in ("error", "ma-error"):
            if directives.get(name):
                status_text, _, code = directives[name].partition(":")
                body = (
                    {"error_code": code, "error_msg": f"simulated {code}"}
                    if name == "ma-error"
                    else error_body(code, f"simulated {code}")
                )
                return self._answer(int(status_text), body)
        if attempt <= int(float(directives.get("legacy") or 0)):
            return self._answer(200, {"error_code": 336501, "error_msg": "Rate limit reached for RPM"})
        if attempt <= int(float(directives.get("drop") or 0)):
            return self._drop(request)
        if attempt <= int(float(directives.get("fail") or 0)):
            return self._answer(500, error_body("internal_error", "simulated server error", "server_error"))
        now = self.clock()
        if attempt == 1 and directives.get("storm"):
            self.storm_until = max(self.storm_until, now + float(directives["storm"]))
        if now < self.storm_until:
            self.injected["storm 429"] += 1
            headers = {"Retry-After": str(math.ceil(self.storm_until - now))} if self.cfg.retry_after else None
            return self._answer(
                429, error_body("1305", "The service may be temporarily overloaded, please try again later"), headers
            )
        if attempt <= int(float(directives.get("429") or 0)):
            wait = directives.get("retry-after") or "1"
            return self._answer(429, error_body("rate_limit_exceeded", "simulated rate limit"), {"Retry-After": wait})

        if kind == "chat":
            prompt_tokens, max_output = estimate_messages(body["messages"]), max_output_tokens(body)
        else:
            prompt_tokens = sum(estimate_tokens(t) for t in texts)
            max_output = max_output_tokens(body) * choice_count(body) * len(texts) if kind == "completions" else 0
        if self.cfg.max_inflight is not None and self.inflight > self.cfg.max_inflight:
            busy = error_body("1302", "您当前使用该API的并发数过高，请降低并发，或联系客服增加限额。")
            return self._answer(429, busy, {"Retry-After": "1"} if self.cfg.retry_after else None)
        limited = self._key_limit(request)  # not `or`: an aiohttp Response is a mapping, and empty is falsy
        if limited is None:
            limited = self._rate_limit(prompt_tokens + max_output)
        if limited is not None:
            return limited
        if self.cfg.error_rate and self.rng.random() < self.cfg.error_rate:
            self.injected["500"] += 1
            return self._answer(500, error_body("internal_error", "simulated server error", "server_error"))
        if self.cfg.drop_rate and self.rng.random() < self.cfg.drop_rate:
            self.injected["drop"] += 1
            return self._drop(request)
        if attempt <= int(float(directives.get("garbage") or 0)):
            return web.Response(status=200, body=b'{"id": "x", "choices": [{"mess', content_type="application/json")
        if attempt <= int(float(directives.get("html") or 0)):
            self.responses[500] += 1
            return web.Response(
                status=500,
                content_type="text/html",
                text="<html><body><h1>500 Internal Server Error</h1><p>nginx</p></body></html>",
            )
        return _Call(kind, body, texts, key, attempt, directives, prompt_tokens, request_id)

    async def _work(self, delay: float) -> None:
        """Take `delay` seconds to answer (or slow_s, for the share of requests that are slow)."""
        if self.cfg.slow_rate and self.rng.random() < self.cfg.slow_rate:
            self.injected["slow"] += 1
            delay = self.cfg.slow_s
        if delay > 0:
            await asyncio.sleep(delay)

    def _drop(self, request: web.Request) -> web.Response:
        """Close the connection without an answer (the client sees a reset, not a status)."""
        self.dropped += 1
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)

    def _bill(self, call: _Call) -> dict[str, Any]:
        """The answer the prompt gets, charged to TPM (when counted on usage) and to the bill; a client that
        has gone (killed, or timed out) is billed all the same, as providers do."""
        if call.kind == "embeddings":
            answer = embeddings_answer(call.body, call.texts, call.prompt_tokens)
        else:
            # chat answers the last user message; completions answer each prompt of a list, n times each
            prompts = call.texts if call.kind == "completions" else call.texts[-1:]
            text = call.kind == "completions"
            answer = completion_answer(call.body, prompts, call.key, call.prompt_tokens, text=text)
            apply_answer_quirks(answer, call.directives)
            if call.kind == "chat":
                self._structure(answer, call)
        if self.tpm is not None and self.cfg.tpm_accounting == "actual":
            self.tpm.refill(self.clock())
            self.tpm.take(answer["usage"]["total_tokens"])
            self.tpm_charged += answer["usage"]["total_tokens"]
        self.billed[call.key] += 1
        self.billed_prompt_tokens += answer["usage"]["prompt_tokens"]
        self.billed_completion_tokens += answer["usage"].get("completion_tokens", 0)
        return answer

    def _batch_answer(self, kind: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One line of a batch, answered as the online endpoint answers it (no rate limit: a batch has none)."""
        texts = prompt_texts(kind, body) or [""]
        text = "\n".join(texts)
        directives = {name: value for name, value in DIRECTIVE.findall(text)}
        if "status" in directives:
            status = int(float(directives["status"] or 400))
            return status, error_body(f"sim_{status}", f"simulated HTTP {status}")
        key = hashlib.blake2b(text.encode(), digest_size=8).digest()
        self.attempts[key] += 1
        if kind == "chat":
            prompt_tokens = estimate_messages(body["messages"])
        else:
            prompt_tokens = sum(estimate_tokens(t) for t in texts)
        call = _Call(kind, body, texts, key, self.attempts[key], directives, prompt_tokens, "")
        return 200, self._bill(call)

    def _structure(self, answer: dict[str, Any], call: _Call) -> None:
        """Asked for JSON (a response_format, or a schema in the prompt): JSON that fits. A first answer may be
        spoilt, as models spoil them (the prompt's `#sim:json=bad|type|missing|cut|fence`, or `invalid_json_rate`
        of them at random); a repair (the conversation holds an assistant answer and what was wrong with it) and
        the same question asked again are answered right."""
        messages = call.body.get("messages") or []
        # a first answer only: not a repair, nor the same question asked again (with more max_tokens, say)
        repair = any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages)
        first = (call.attempt == 1 and not repair) or "stubborn" in call.directives
        spoil = call.directives.get("json") if first else None
        if spoil is None and first and self.cfg.invalid_json_rate and self.rng.random() < self.cfg.invalid_json_rate:
            spoil = SPOILS[self.rng.randrange(len(SPOILS))]
        made = structured_content(call.body, call.key, spoil)
        if made is None:
            return
        self.structured.update(["asked", *(["repairs"] if repair else []), *([f"spoilt_{spoil}"] if spoil else [])])
        self.max_tokens_asked[str(call.body.get("max_tokens"))] += 1
        content, finish = made
        completion = estimate_tokens(content)
        for choice in answer["choices"]:
            choice["message"]["content"], choice["finish_reason"] = content, finish
        usage = answer["usage"]
        usage["completion_tokens"] = completion * len(answer["choices"])
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]

    @_counted
    async def chat(self, request: web.Request) -> web.StreamResponse:
        call = await self._accept(request)
        if not isinstance(call, _Call):
            return self._refused(call)
        directives = call.directives
        delay = float(directives["sleep"]) if directives.get("sleep") else self._latency()
        await self._work(delay)
        answer = self._bill(call)
        if call.attempt <= int(float(directives.get("nochoices") or 0)):  # billed, and no answer in it
            answer["choices"] = []
        if call.body.get("stream"):
            options = call.body.get("stream_options") or {}
            cut = call.attempt <= int(float(directives.get("cut") or 0))
            return await self._stream(request, answer, bool(options.get("include_usage")), cut, call.request_id)
        return self._answer(200, answer, {"x-request-id": call.request_id})

    @_counted
    async def submit_task(self, request: web.Request) -> web.StreamResponse:
        """Zhipu's asyncCompletions: billed now, answered by polls once the task's time is up."""
        call = await self._accept(request)
        if not isinstance(call, _Call):
            return self._refused(call)
        await self._work(self._latency())
        answer, directives = self._bill(call), call.directives
        self.tasks_submitted += 1
        low, high = self.cfg.task_s
        duration = float(directives["task"]) if directives.get("task") else self.rng.uniform(low, high)
        failed = call.attempt <= int(float(directives.get("task-fail") or 0))
        gone = call.attempt <= int(float(directives.get("expire") or 0))  # forgotten at once
        task = encode_task({"due": time.time() + duration, "failed": failed, "gone": gone, "answer": answer})
        now = self.clock()
        if not gone:
            heapq.heappush(self.running, now + duration)
        self.max_tasks_running = max(self.max_tasks_running, self._tasks_running(now))
        return self._answer(
            200, {"id": task, "request_id": call.request_id, "model": answer["model"], "task_status": "PROCESSING"}
        )

    async def task_result(self, request: web.Request) -> web.Response:
        self.polls += 1
        if (denied := self._auth(request)) is not None:
            return denied
        task_id = request.match_info["task"]
        task = decode_task(task_id)
        if task is None or task["gone"]:
            return self._answer(404, error_body("task_not_found", "no such task (expired or never submitted)"))
        head = {"id": task_id, "request_id": f"sim-poll-{self.polls}", "model": task["answer"]["model"]}
        if time.time() < task["due"]:
            return self._answer(200, {**head, "task_status": "PROCESSING"})
        if task["failed"]:
            return self._answer(200, {**head, "task_status": "FAIL"})
        return self._answer(200, {**task["answer"], **head, "task_status": "SUCCESS"})

    async def _stream(
        self, request: web.Request, answer: dict[str, Any], include_usage: bool, cut: bool, request_id: str
    ) -> web.StreamResponse:
        """The answer as server-sent chat.completion.chunk events: role, reasoning, content in pieces,
        finish_reason, then usage (when asked) and [DONE]."""
        self.responses[200] += 1
        headers = self._headers(200, {"x-request-id": request_id}) or {}
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", **headers})
        try:
            return await self._send_events(request, resp, answer, include_usage, cut)
        except ConnectionError:  # the client went away (timed out, killed): nothing to tell it
            return resp

    async def _send_events(
        self, request: web.Request, resp: web.StreamResponse, answer: dict[str, Any], include_usage: bool, cut: bool
    ) -> web.StreamResponse:
        await resp.prepare(request)
        events = stream_events(answer, include_usage)
        for i, event in enumerate(events):
            if cut and i == len(events) // 2:
                if request.transport is not None:
                    request.transport.close()
                return resp
            await resp.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _key_limit(self, request: web.Request) -> web.Response | None:
        """A key pool's key: its own RPM bucket (429 naming its limit beyond it), counted by its variable."""
        token = self._token(request)
        found = self.key_rpm.get(token)
        if found is None:
            return None
        rpm, bucket = found
        env = self.key_names[token]
        wait = bucket.wait_for(1, self.clock())
        if wait > 0:
            self.by_key[f"{env} 429"] += 1
            message = (
                f"Rate limit reached on requests per min (RPM): Limit {int(rpm)}, Requested 1. Please try again in "
                f"{wait * 1000:.0f}ms."
            )
            headers = {"Retry-After": str(max(1, math.ceil(wait)))} if self.cfg.retry_after else None
            return self._answer(429, error_body("rate_limit_exceeded", message), headers)
        bucket.take(1)
        self.by_key[f"{env} 200"] += 1
        return None

    def _rate_limit(self, tokens: int) -> web.Response | None:
        """Admit or answer 429. TPM counted on admission charges prompt + max_tokens now; counted on
        usage, it only needs the bucket out of debt now and is charged when the answer is ready."""
        now = self.clock()
        reserve = self.cfg.tpm_accounting == "reserve"
        need = tokens if reserve else 1
        waits = [b.wait_for(n, now) for b, n in ((self.rpm, 1), (self.tpm, need)) if b is not None]
        wait = max(waits, default=0.0)
        if wait > 0:
            if self.cfg.gateway == "litellm-key":  # the virtual key's limit: LiteLLM's own 429, plain retry-after
                rpm_full = self.rpm is not None and self.rpm.wait_for(1, now) > 0
                kind, limit = ("rpm", self.cfg.rpm) if rpm_full else ("tpm", self.cfg.tpm)
                return self._answer(429, litellm_limit_body(kind, limit or 0), own={"retry-after": f"{wait:.3f}"})
            if not self.cfg.retry_after:  # Zhipu's way: a bare 429 that says nothing of the limit
                return self._answer(429, error_body("rate_limit_exceeded", "Rate limit reached, please retry later"))
            # OpenAI's way: Retry-After, and the message names the limit that was hit
            rpm_wait = self.rpm.wait_for(1, now) if self.rpm is not None else 0.0
            kind, limit = ("requests", self.cfg.rpm) if rpm_wait >= wait else ("tokens", self.cfg.tpm)
            short = "RPM" if kind == "requests" else "TPM"
            message = (
                f"Rate limit reached on {kind} per min ({short}): Limit {int(limit or 0)}, Requested "
                f"{1 if kind == 'requests' else need}. Please try again in {wait * 1000:.0f}ms."
            )
            headers = {"Retry-After": str(max(1, math.ceil(wait)))}
            return self._answer(429, error_body("rate_limit_exceeded", message), headers)
        if self.rpm is not None:
            self.rpm.take(1)
        if self.tpm is not None and reserve:
            self.tpm.take(tokens)
            self.tpm_charged += tokens
        return None


def _env_key(env: str) -> str:
    """The key a variable holds: key pools are configured by the variables' names, never the keys."""
    key = os.environ.get(env, "").strip()
    if not key:
        raise SpecError(f"the simulated provider's key_rpm or revoked names ${env}, which is not set")
    return key


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


@contextlib.asynccontextmanager
async def serve(
    cfg: SimulateSpec,
    host: str = "127.0.0.1",
    port: int = 0,
    sim: SimProvider | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    """Serve a simulated provider in the running loop; yields its base URL (https:// when given a TLS context,
    to try a custom CA bundle or a TLS-inspecting network's certificate)."""
    runner = web.AppRunner((sim or SimProvider(cfg)).app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048, ssl_context=tls)
    await site.start()
    try:
        bound = runner.addresses[0][1]
        yield f"{'https' if tls else 'http'}://{host}:{bound}/v1"
    finally:
        await runner.cleanup()


async def run_forever(
    cfg: SimulateSpec, port: int, announce: Callable[[str], None], tls: ssl.SSLContext | None = None
) -> None:
    async with serve(cfg, port=port, tls=tls) as url:
        announce(url)
        await asyncio.Event().wait()
