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
    #sim:resource=1     DeepSeek's finish_reason insufficient_system_resource (half an answer, billed), first attempt
    #sim:moderation=violence  Ark's moderation_hit_type on the answer (finish_reason content_filter)
    #sim:limit=RPD      a 429 whose message names that limit hit ("Details: RPD limit reached.", SiliconFlow's)
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

This module holds the routes, which only map HTTP to calls: whether a request is let in (keys, limits, staged and
random faults) is decided in `admission`, what it is answered and billed in `billing`, both without HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import heapq
import itertools
import math
import random
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ..spec.simulator import SimulateSpec
from .admission import Admission, Fault, Outcome, Refusal
from .answers import (
    MODELS,
    decode_task,
    encode_task,
    error_body,
    model_entry,
    prompt_texts,
    stream_events,
    through_gateway,
    unknown_model,
)
from .batches import BatchDesk
from .billing import Billing, Call, directives_of, max_output, prompt_key, prompt_tokens
from .images import look
from .manners import cut_short, hold_queued, insufficient_balance, spoken

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
    """The routes: each maps an HTTP request to admission (`admission`) and billing (`billing`), and what they
    decide back to HTTP."""

    def __init__(self, cfg: SimulateSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.clock = cfg, clock
        now = clock()
        self.rng = random.Random(cfg.seed)
        self.admission = Admission(cfg, self.rng, now)
        self.billing = Billing(self.rng, cfg.invalid_json_rate, cfg.speaks)
        self.responses: Counter[int] = Counter()
        self.requests = self.dropped = 0
        self.images = self.images_refused = 0  # image parts that passed the checks, and requests refused for one
        self.first_request_at: float | None = None  # wall-clock time, for start-up measurements
        self.tasks_submitted = self.polls = self.max_tasks_running = 0
        self.inflight = 0  # requests being handled: read, waited on, not yet answered (billed when answered)
        self.running: list[float] = []  # due times of tasks still running (a heap)
        self.batch_desk = BatchDesk(self._batch_answer, self._auth, clock, cfg.batch_s, speaks=cfg.speaks)
        self.batch_chats = 0  # requests to Ark's batch-chat path
        # whether clients wait as a 429 asks: when each prompt was last answered 429, and the shortest wait seen
        self.limited_at: dict[bytes, float] = {}
        self._last_key: bytes | None = None
        self.retried_after_429, self.min_retry_gap_s = 0, math.inf
        self._other_ids = itertools.count(1)  # request ids of the answers that are no completion
        self._taken_ids: dict[int, str] = {}  # id(request) -> the request id a completion took on arrival

    def app(self) -> web.Application:
        # batch files take 200 MB at most
        app = web.Application(client_max_size=256 * 1024 * 1024, middlewares=[self._request_id])
        app.router.add_get("/_sim/stats", self.stats_view)
        app.router.add_post("/{base:.*}/async/chat/completions", self.submit_task)
        app.router.add_get("/{base:.*}/async-result/{task}", self.task_result)
        app.router.add_post("/{base:.*}/batch/chat/completions", self.batch_chat)
        app.router.add_post("/{base:.*}/chat/completions", self.chat)
        app.router.add_post("/{base:.*}/{kind:completions|embeddings}", self.chat)
        app.router.add_get("/{base:.*}/models", self.models)
        app.router.add_get("/{base:.*}/models/{model}", self.model)
        self.batch_desk.routes(app)
        return app

    @web.middleware
    async def _request_id(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        """Every answer carries an `x-request-id`, errors (4xx, 5xx, 429, an HTML page, the router's 404 and 405)
        included, as OpenAI's do: a client's failure records name the provider's id, not one of their own. A
        completion's is the one taken when it arrived (`_accept`); the rest are numbered apart."""
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as refused:
            refused.headers.setdefault("x-request-id", self._request_id_of(request))
            raise
        finally:
            taken = self._taken_ids.pop(id(request), None)
        if not response.prepared and "x-request-id" not in response.headers:  # a stream has sent its own
            response.headers["x-request-id"] = taken or self._request_id_of(request)
        return response

    def _request_id_of(self, request: web.Request) -> str:
        return self._taken_ids.get(id(request)) or f"sim-api-{next(self._other_ids)}"

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "responses": {str(k): v for k, v in sorted(self.responses.items())},
            "dropped": self.dropped,
            **self.billing.stats(),
            **self.admission.stats(),
            "first_request_at": self.first_request_at,
            "inflight": self.inflight,
            "tasks_submitted": self.tasks_submitted,
            "tasks_running": self._tasks_running(self.clock()),
            "max_tasks_running": self.max_tasks_running,
            "polls": self.polls,
            "images": self.images,
            "images_refused": self.images_refused,
            "retried_after_429": self.retried_after_429,  # attempts of a prompt whose last attempt was answered 429
            "min_retry_gap_s": round(self.min_retry_gap_s, 3) if self.retried_after_429 else None,
            "batch_chat_requests": self.batch_chats,
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
        refused = self.admission.auth(self._token(request), int(time.time() * 1000))
        return None if refused is None else self._refusal(refused)

    @staticmethod
    def _token(request: web.Request) -> str:
        return request.headers.get("Authorization", "").removeprefix("Bearer ")

    def _answer(
        self, status: int, body: Any, headers: dict[str, str] | None = None, own: dict[str, str] | None = None
    ) -> web.Response:
        status, body = spoken(self.cfg.speaks, status, body)  # in the words of the provider it speaks as
        self.responses[status] += 1
        return _json(status, body, self._headers(status, headers, own))

    def _refusal(self, refusal: Refusal) -> web.Response:
        return self._answer(refusal.status, refusal.body, refusal.headers, refusal.own)

    def _outcome(self, outcome: Outcome, request: web.Request) -> web.Response:
        """What admission decided, as HTTP: a JSON answer, or none at all."""
        if isinstance(outcome, Refusal):
            return self._refusal(outcome)
        if outcome is Fault.DROP:
            return self._drop(request)
        if outcome is Fault.GARBAGE:
            return web.Response(status=200, body=b'{"id": "x", "choices": [{"mess', content_type="application/json")
        self.responses[500] += 1
        return web.Response(
            status=500,
            content_type="text/html",
            text="<html><body><h1>500 Internal Server Error</h1><p>nginx</p></body></html>",
        )

    def _headers(
        self, status: int, headers: dict[str, str] | None, own: dict[str, str] | None = None
    ) -> dict[str, str] | None:
        """The provider's headers (x-ratelimit-* too when asked), as the gateway, if any, passes them on, with the
        gateway's `own` (LiteLLM's virtual-key limits on its answers, with no reset header: LiteLLM sends none)."""
        key_limits = self.cfg.gateway == "litellm-key"
        if self.cfg.rate_headers and not key_limits:
            headers = {**self.admission.rate_headers(self.clock()), **(headers or {})}
        if key_limits and status == 200:
            own = {**self.admission.key_headers(self.clock()), **(own or {})}
        return through_gateway(self.cfg.gateway, headers, own)

    def _refused(self, answer: web.StreamResponse) -> web.StreamResponse:
        """Note when a prompt was answered 429: its next attempt shows how long its client waited (the stats)."""
        if answer.status == 429 and self._last_key is not None:
            self.limited_at[self._last_key] = self.clock()
        return answer

    async def _accept(self, request: web.Request) -> Call | web.StreamResponse:
        """Everything before the answer: auth, the body, the prompt's directives, rate limits, injected errors."""
        self.requests += 1
        request_id = f"sim-{self.requests}"  # taken now: other requests arrive while this one is read
        self._taken_ids[id(request)] = request_id  # its answer's x-request-id, whatever it is answered
        if self.first_request_at is None:
            self.first_request_at = time.time()
        if (denied := self._auth(request)) is not None:
            return denied
        billing = self.billing
        if self.cfg.balance is not None and billing.billed_prompt_tokens + billing.billed_completion_tokens >= (
            self.cfg.balance
        ):
            return self._answer(*insufficient_balance(self.cfg.speaks))
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
        key = prompt_key(text)
        attempt = self.billing.attempt(key)
        self._last_key = key  # every 429 below is answered before another request gets this far (no await)
        if (limited_at := self.limited_at.pop(key, None)) is not None:
            self.retried_after_429 += 1
            self.min_retry_gap_s = min(self.min_retry_gap_s, self.clock() - limited_at)
        directives = directives_of(text)
        if (staged := self.admission.staged(directives, attempt, self.clock())) is not None:
            return self._outcome(staged, request)
        tokens = prompt_tokens(kind, body, texts)
        if kind == "chat":  # its images judged as the provider spoken for judges them, and counted
            seen = look(self.cfg.speaks, body)
            if seen.refused is not None:
                self.images_refused += 1
                return self._answer(*seen.refused)
            tokens += seen.tokens
            self.images += seen.images
        most = max_output(kind, body, texts)
        limited = self.admission.admit(self._token(request), tokens + most, self.inflight, self.clock())
        if limited is not None:
            return self._refusal(limited)
        if (fault := self.admission.fault(attempt, directives)) is not None:
            return self._outcome(fault, request)
        return Call(kind, body, texts, key, attempt, directives, tokens, request_id)

    async def _work(self, delay: float) -> None:
        """Take `delay` seconds to answer (or slow_s, for the share of requests that are slow)."""
        delay = self.admission.work_time(delay)
        if delay > 0:
            await asyncio.sleep(delay)

    def _drop(self, request: web.Request) -> web.Response:
        """Close the connection without an answer (the client sees a reset, not a status)."""
        self.dropped += 1
        if request.transport is not None:
            request.transport.close()
        return web.Response(status=500)

    def _bill(self, call: Call) -> dict[str, Any]:
        """The answer the prompt gets, billed, and charged to TPM when TPM is counted on usage."""
        answer = self.billing.answer(call)
        self.admission.charge_used(answer["usage"]["total_tokens"], self.clock())
        return answer

    def _batch_answer(self, kind: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One line of a batch, answered as the online endpoint answers it (no rate limit: a batch has none)."""
        seen = look(self.cfg.speaks, body) if kind == "chat" else None
        if seen is not None and seen.refused is not None:
            return seen.refused
        call = self.billing.batch_call(kind, body)
        if isinstance(call, Call) and seen is not None and seen.tokens:
            call = dataclasses.replace(call, prompt_tokens=call.prompt_tokens + seen.tokens)
        return (200, self._bill(call)) if isinstance(call, Call) else call

    @_counted
    async def chat(self, request: web.Request) -> web.StreamResponse:
        call = await self._accept(request)
        if not isinstance(call, Call):
            return self._refused(call)
        directives, stream = call.directives, bool(call.body.get("stream"))
        held = None  # queued (simulate.queue_s): the answer's head is out, keep-alives follow until inference starts
        if self.cfg.queue_s > 0:
            held = web.StreamResponse(status=200, headers=self._held_headers(stream, call.request_id))
            if not await hold_queued(request, held, self.cfg.queue_s, stream, self.clock):
                return held
        delay = float(directives["sleep"]) if directives.get("sleep") else self.admission.latency()
        await self._work(delay)
        answer = self._bill(call)
        if call.attempt <= int(float(directives.get("nochoices") or 0)):  # billed, and no answer in it
            answer["choices"] = []
        elif call.attempt <= int(float(directives.get("resource") or 0)) or self._drawn(self.cfg.resource_cut_rate):
            cut_short(answer)
        if stream:
            options = call.body.get("stream_options") or {}
            cut = call.attempt <= int(float(directives.get("cut") or 0))
            return await self._stream(request, answer, bool(options.get("include_usage")), cut, call.request_id, held)
        if held is not None:
            self.responses[200] += 1
            with contextlib.suppress(ConnectionError):
                await held.write(orjson.dumps(answer))
                await held.write_eof()
            return held
        return self._answer(200, answer, {"x-request-id": call.request_id})

    def _held_headers(self, stream: bool, request_id: str) -> dict[str, str]:
        kind = "text/event-stream" if stream else "application/json"
        return {"Content-Type": kind, **(self._headers(200, {"x-request-id": request_id}) or {})}

    def _drawn(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    @_counted
    async def batch_chat(self, request: web.Request) -> web.StreamResponse:
        """Ark's batch chat (speaks: ark): an ordinary chat answer, slower (`batch_chat_latency`); no other
        provider has the path."""
        if self.cfg.speaks != "ark":
            return self._answer(404, error_body("not_found", "no such path: batch chat is Ark's"))
        self.batch_chats += 1
        call = await self._accept(request)
        if not isinstance(call, Call):
            return self._refused(call)
        sleep = call.directives.get("sleep")
        await self._work(float(sleep) if sleep else self.cfg.batch_chat_latency)
        return self._answer(200, self._bill(call), {"x-request-id": call.request_id})

    @_counted
    async def submit_task(self, request: web.Request) -> web.StreamResponse:
        """Zhipu's asyncCompletions: billed now, answered by polls once the task's time is up."""
        call = await self._accept(request)
        if not isinstance(call, Call):
            return self._refused(call)
        await self._work(self.admission.latency())
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
        self,
        request: web.Request,
        answer: dict[str, Any],
        include_usage: bool,
        cut: bool,
        request_id: str,
        held: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        """The answer as server-sent chat.completion.chunk events: role, reasoning, content in pieces,
        finish_reason, then usage (when asked) and [DONE]; `held`: the stream begun while the request was queued."""
        self.responses[200] += 1
        # `is not None`, not `or`: a response is a mapping of its own state, empty and so false before aiohttp 3.10
        resp = (
            held if held is not None else web.StreamResponse(status=200, headers=self._held_headers(True, request_id))
        )
        try:
            return await self._send_events(request, resp, answer, include_usage, cut)
        except ConnectionError:  # the client went away (timed out, killed): nothing to tell it
            return resp

    async def _send_events(
        self, request: web.Request, resp: web.StreamResponse, answer: dict[str, Any], include_usage: bool, cut: bool
    ) -> web.StreamResponse:
        if not resp.prepared:
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
