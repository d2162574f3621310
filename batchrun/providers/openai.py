"""The OpenAI-compatible call paths (chat completions, completions, embeddings), shared by every preset."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from ..errors import FatalProviderError
from ..retry import TLS_HINT, error_details, is_tls_error
from ..rows.request import Request
from ..spec.presets import ENDPOINT_URLS, Endpoint
from .transport import (
    NO_ANSWER,
    NO_HEADERS,
    Http,
    Network,
    Reply,
    fetch_json,
    no_answer,
    parse_body,
)

Auth = Callable[[], str | None]  # the Authorization header's value at each call


class ChatCompletions:
    """Synchronous call path: one POST per request to `{base_url}/chat/completions` (or the endpoint's path).

    `auth` gives the Authorization header's value at each call (a JWT is re-signed now and then)."""

    def __init__(
        self, base_url: str, auth: Callable[[], str | None], endpoint: Endpoint = "chat", path: str | None = None
    ) -> None:
        self.url = base_url.rstrip("/") + (path or ENDPOINT_URLS[endpoint])  # path: Ark's /batch/chat/completions
        self.auth = auth
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}

    def headers(self, auth: Auth | None = None) -> dict[str, str]:
        value = (auth or self.auth)()
        return {**self._headers, "Authorization": value} if value else self._headers

    async def call(
        self, http: Http, request: Request, timeout: float, auth: Auth | None = None, queue_s: float = 0.0
    ) -> Reply:
        """One attempt; `auth` is the key pool member's sending it (else the path's own); `queue_s`: how long the
        provider may keep it queued before answering (transport.Http.request)."""
        return await fetch_json(http, "POST", self.url, self.headers(auth), timeout, request.payload, queue_s)


class ChatCompletionsStream(ChatCompletions):
    """Streaming call path: server-sent events, assembled into the ordinary chat.completion shape.

    A stream that ends without `[DONE]` or a finish_reason was cut off: it comes back as a transport error
    (retried), never as a short answer. Comment lines (`: keep-alive`, sent while the provider holds the request
    queued) are skipped; the time until the last of them before the first event is the Reply's `queued`."""

    async def call(
        self, http: Http, request: Request, timeout: float, auth: Auth | None = None, queue_s: float = 0.0
    ) -> Reply:
        start = time.monotonic()
        queued = 0.0
        try:
            async with http.request("POST", self.url, self.headers(auth), timeout, request.payload, queue_s) as resp:
                if resp.status != 200 or not resp.content_type.startswith("text/event-stream"):
                    raw = await resp.read()
                    return Reply(resp.status, resp.headers, parse_body(raw), time.monotonic() - start)
                stream = StreamAssembler()
                async for line in resp.content:
                    if not stream.started and not line.startswith(b"data:"):
                        queued = time.monotonic() - start  # a keep-alive (or a blank line) before any event
                    if stream.feed(line):
                        break
                headers = resp.headers
        except NO_ANSWER as exc:
            return no_answer(exc, start)
        elapsed = time.monotonic() - start
        if not stream.complete:
            return Reply(None, NO_HEADERS, None, elapsed, "stream_cut (the stream ended before [DONE])")
        return Reply(200, headers, stream.body(), elapsed, queued=queued)


class StreamAssembler:
    """Joins chat.completion.chunk events (`data: {...}` lines, `data: [DONE]`) into one chat.completion, each
    choice (`n` > 1, or a list of prompts) by its index."""

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: Any = None
        self.extra: dict[str, Any] = {}  # provider fields outside choices (blocked, flag, content_filter)
        self.done = False
        self.started = False  # an event has come (what came before it was the provider's queue)
        self.text = False  # a /completions stream: the answer is choices[i].text

    @property
    def complete(self) -> bool:
        return self.done and bool(self.choices) and all(c.finish_reason is not None for c in self.choices.values())

    def feed(self, line: bytes) -> bool:
        """Take one line; True once `[DONE]` arrived."""
        line = line.strip()
        if not line.startswith(b"data:"):
            return False
        data = line[5:].strip()
        self.started = True
        if data == b"[DONE]":
            self.done = True
            return True
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(chunk, dict):
            return False
        for key, value in chunk.items():
            if key in ("id", "model", "created"):
                self.meta.setdefault(key, value)
            elif key not in ("object", "choices", "usage"):
                self.extra[key] = value
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for raw in chunk.get("choices") or []:
            if not isinstance(raw, dict):
                continue
            index = raw.get("index")
            choice = self.choices.setdefault(index if isinstance(index, int) else 0, _Choice())
            delta = raw.get("delta") or {}
            choice.role = delta.get("role") or choice.role
            if isinstance(delta.get("content"), str):
                choice.content.append(delta["content"])
            if isinstance(raw.get("text"), str):  # /completions streams text, not a delta
                self.text = True
                choice.content.append(raw["text"])
            if isinstance(delta.get("reasoning_content"), str):
                choice.reasoning.append(delta["reasoning_content"])
            if raw.get("finish_reason"):
                choice.finish_reason = raw["finish_reason"]
            for key in CHOICE_SAFETY:
                if raw.get(key) is not None:
                    choice.safety[key] = raw[key]
        return False

    def body(self) -> dict[str, Any]:
        choices = [{"index": i, **self.choices[i].shape(self.text)} for i in sorted(self.choices)]
        body: dict[str, Any] = {
            **self.meta,
            "object": "text_completion" if self.text else "chat.completion",
            "choices": choices,
            **self.extra,
        }
        if self.usage is not None:
            body["usage"] = self.usage
        return body


# a choice's moderation fields beside its delta, kept on the assembled choice as a non-stream answer has them
CHOICE_SAFETY = ("moderation_hit_type",)  # Ark: violence | severe_violation


class _Choice:
    __slots__ = ("content", "finish_reason", "reasoning", "role", "safety")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.role = "assistant"
        self.finish_reason: str | None = None
        self.safety: dict[str, Any] = {}

    def shape(self, text: bool) -> dict[str, Any]:
        if text:
            return {"text": "".join(self.content), "finish_reason": self.finish_reason, **self.safety}
        message: dict[str, Any] = {"role": self.role, "content": "".join(self.content)}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        return {"message": message, "finish_reason": self.finish_reason, **self.safety}


def split_embeddings(body: Any, parts: list[int]) -> list[dict[str, Any]] | None:
    """One /embeddings answer for several rows, as one answer per row: its vector, and a share of the usage
    in proportion to `parts` (each row's estimated tokens) that adds up to the whole. None when the answer
    does not hold one vector per row."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or len(data) != len(parts) or not all(isinstance(d, dict) for d in data):
        return None
    ordered = sorted(data, key=lambda d: d.get("index") if isinstance(d.get("index"), int) else 0)
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    shares = {k: _shares(v, parts) for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
    head = {k: v for k, v in body.items() if k not in ("data", "usage")}
    return [
        {**head, "data": [{**d, "index": 0}], **({"usage": {k: s[i] for k, s in shares.items()}} if shares else {})}
        for i, d in enumerate(ordered)
    ]


def _shares(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights`, in whole numbers that add up to it exactly."""
    whole = sum(weights)
    if whole <= 0:
        weights, whole = [1] * len(weights), len(weights)
    out, given, acc = [], 0, 0
    for w in weights:
        acc += w
        upto = total * acc // whole
        out.append(upto - given)
        given = upto
    return out


async def list_models(
    base_url: str, api_key: str | None, network: Network | None = None, timeout: float = 30.0
) -> list[str]:
    """`GET {base_url}/models`: the model ids a key may use; doubles as a check that the key works."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    http = Http(1, network or Network())
    try:
        reply = await fetch_json(http, "GET", url, headers, timeout)
    finally:
        await http.close()
    if reply.status is None:
        raise FatalProviderError(
            f"cannot reach {url}: {reply.error}; check provider.base_url and the network"
            + (f" ({TLS_HINT})" if is_tls_error(reply.error) else "")
        )
    status, body = reply.status, reply.body
    if status != 200:
        code, message = error_details(body)
        hint = "; check the key" if status in (401, 403) else ""
        raise FatalProviderError(f"{url} answered HTTP {status} ({code or 'no code'}: {message}){hint}")
    data = body.get("data") if isinstance(body, dict) else None
    return sorted(str(m.get("id")) for m in data or [] if isinstance(m, dict) and m.get("id"))
