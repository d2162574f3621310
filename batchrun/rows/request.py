"""Turning input rows into request bodies; what each is estimated to cost against TPM is reckoned in `tokens`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from ..errors import SpecError
from ..spec.model import JobSpec
from ..spec.presets import ENDPOINT_URLS, Endpoint
from ..spec.reasoning import merged, reasoning_params, thinking_reserve
from ..text.words import suggestion
from .images import ImageReader, RowImages, with_images
from .render import INVALID_INPUT, NULL_FIELD, RowProblem, Template, is_null
from .sources import RawRow
from .structured import Asking
from .tokens import estimate_input, estimate_messages, estimate_tokens, max_output_tokens

ID_FIELDS = ("custom_id", "id")


@dataclass(frozen=True, slots=True)
class Request:
    row: int
    custom_id: str
    model: str
    payload: bytes  # the JSON body, serialised once and reused by every attempt
    prompt_tokens: int  # estimated
    max_output: int
    # Embeddings only: the row's text and the rest of its body, so that rows alike can share one request;
    # a shared request lists the rows' own requests in `parts`.
    text: str | None = None
    group: bytes | None = None
    parts: tuple[Request, ...] = ()
    stream: bool = False  # the body asks for server-sent events (mode stream, or a line's own "stream": true)
    cache_key: bytes | None = None  # the response cache's key of this row's first question (None: not cached)
    images: tuple[dict[str, Any], ...] = ()  # input.images: each image's reference, as its record keeps it
    fetch: tuple[str, ...] = ()  # input.fetch_images: URLs in the payload fetched and put in when it is sent
    image_tokens: int = 0  # of prompt_tokens, the images' (estimated by the provider's rule)
    files: tuple[tuple[str, str, str], ...] = ()  # local image files put into the payload as it is sent (`ready`)

    @property
    def tokens(self) -> int:
        """Prompt estimate + max output tokens: what a provider that reserves max_tokens charges."""
        return self.prompt_tokens + self.max_output


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that cannot become a request: recorded as a failure, never sent."""

    row: int
    custom_id: str  # the row's id when it could be read, else its row number
    code: str
    message: str


def with_body(request: Request, before: dict[str, Any], body: dict[str, Any]) -> Request:
    """The same row's chat request with another body (a repair step: `before` with messages added or max_tokens
    changed); the prompt estimate grows by the messages added."""
    added = estimate_messages(body["messages"]) - estimate_messages(before["messages"])
    reserve = request.max_output - max_output_tokens(before)  # a chain of thought's, beyond max_tokens
    return replace(
        request,
        payload=orjson.dumps(body),
        prompt_tokens=request.prompt_tokens + added,
        max_output=max_output_tokens(body) + max(0, reserve),
    )


def url_endpoint(url: str) -> Endpoint | None:
    """Which endpoint a Batch API line's url names (`/v1/chat/completions` is chat, not completions)."""
    path = url.split("?", 1)[0].rstrip("/")
    return next((name for name, tail in ENDPOINT_URLS.items() if path.endswith(tail)), None)


def batch(parts: list[Request]) -> Request:
    """One /embeddings request for several rows alike (same model and parameters): `input` is their texts."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    assert first.group is not None
    body = {**orjson.loads(first.group), "input": [p.text for p in parts]}
    return Request(
        first.row,
        first.custom_id,
        first.model,
        orjson.dumps(body),
        sum(p.prompt_tokens for p in parts),
        0,
        parts=tuple(parts),
    )


def batched(requests: Iterable[Request | BadRow], size: int) -> Iterator[Request | BadRow]:
    """Consecutive embeddings rows with the same model and parameters, `size` at a time, as shared requests."""
    if size <= 1:
        yield from requests
        return
    alike: list[Request] = []
    for request in requests:
        if alike and (not isinstance(request, Request) or request.group != alike[0].group or len(alike) >= size):
            yield batch(alike)
            alike = []
        if isinstance(request, Request) and request.group is not None:
            alike.append(request)
        else:
            yield request
    if alike:
        yield batch(alike)


def row_id(data: Mapping[str, Any], row: int, id_field: str | None) -> str | BadRow:
    """A row's id, always a string: its `id_field`, else its own `custom_id` or `id`, else its row number.

    Each row answers for itself (a file whose first line has no id still keeps every later line's). An OpenAI
    Batch API line (one with a `body`) must carry its `custom_id`, as the Batch API and vLLM require."""
    names = (id_field,) if id_field is not None else ID_FIELDS
    for name in names:
        value = data.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            return BadRow(
                row,
                str(row),
                "invalid_id",
                f"row {row}: {name!r} must be a non-empty string or a whole number, got {_kind(value)}",
            )
        return str(value)
    if id_field is not None:
        return BadRow(row, str(row), "missing_id", f"row {row}: no {id_field!r} field (input.id_field)")
    if isinstance(data.get("body"), Mapping):
        return BadRow(row, str(row), "missing_id", f"row {row}: a Batch API line needs its 'custom_id'")
    return str(row)


class RequestBuilder:
    """Builds request bodies for one job; how messages are built is settled once from the first row."""

    def __init__(self, spec: JobSpec, first: Mapping[str, Any] | None) -> None:
        self.spec = spec
        self.endpoint = spec.endpoint
        self.id_field = spec.input.id_field
        self.params = dict(spec.params)
        self.reserve = 0  # tokens beyond max_tokens a chain of thought may take (max_tokens does not cap it)
        reasoning, name = spec.reasoning, spec.provider.name
        if reasoning is not None and self.endpoint == "chat":
            said = reasoning_params(name, reasoning.thinking, reasoning.effort, reasoning.budget_tokens)
            self.params = merged(self.params, said)
        if self.endpoint == "chat":
            thinking, budget = (reasoning.thinking, reasoning.budget_tokens) if reasoning else (None, None)
            simulate = spec.provider.simulate
            self.reserve = thinking_reserve(name, thinking, budget, simulate.speaks if simulate else None)
        output = spec.output
        self.asking = Asking.of(output, output.ask) if output is not None else None
        # a json_schema response_format is prompt the provider reads (and bills): the TPM estimate counts it
        self.format = self.asking.response_format if self.asking is not None else None
        self.format_tokens = estimate_tokens(orjson.dumps(self.format).decode()) if self.format is not None else 0
        cache = spec.cache
        self.cache_scope = spec.cache_scope if cache.mode != "off" else None
        self.cache_sampled = cache.sampled
        inp = spec.input
        self.template = Template(inp.template, inp.null) if inp.template is not None else None
        self.images = ImageReader(spec) if inp.images else None
        if first is not None:
            self._preflight(first)

    def _preflight(self, first: Mapping[str, Any]) -> None:
        """Settle, before anything is sent, that the spec fits the input's rows."""
        inp, source = self.spec.input, self.spec.called
        if inp.id_field is not None and inp.id_field not in first:
            raise SpecError(
                f"{source}: input.id_field: the first row has no field {inp.id_field!r} {_has(first, inp.id_field)}"
            )
        for key, name in (("messages_field", inp.messages_field), ("prompt_field", inp.prompt_field)):
            if name is not None and name not in first:
                raise SpecError(f"{source}: input.{key}: the first row has no field {name!r} {_has(first, name)}")
        for name in inp.template_fields:
            if name not in first:
                raise SpecError(
                    f"{source}: input.template names {{{name}}}, but the first row has no field "
                    f"{name!r} {_has(first, name)}"
                )
        for name in inp.images or ():
            if name not in first:
                raise SpecError(
                    f"{source}: input.images names {name!r}, but the first row has no field {name!r} "
                    f"{_has(first, name)}"
                )
        unused = [k for k in ("image_detail", "fetch_images", "image_max_side", "image_limits") if getattr(inp, k)]
        if unused and not inp.images:
            raise SpecError(f"{source}: input.{unused[0]} is set, but input.images names no columns: name them")
        if inp.fetch_images and self.spec.provider.mode == "batch":
            raise SpecError(
                f"{source}: input.fetch_images: the batch lane writes its files before sending, and fetches no "
                "images; use provider.mode: sync, or leave fetch_images out"
            )
        if inp.images and self.endpoint != "chat":
            raise SpecError(f"{source}: input.images: endpoint {self.endpoint} takes text; images need endpoint: chat")
        for key, value in (("messages_field", inp.messages_field), ("system", inp.system)):
            if self.endpoint != "chat" and value is not None:
                raise SpecError(
                    f"{source}: input.{key}: endpoint {self.endpoint} takes text, not messages; "
                    "use input.prompt_field or input.template"
                )
        fields = {
            "chat": ("body", "messages", "prompt"),
            "completions": ("body", "prompt"),
            "embeddings": ("body", "input", "prompt", "text"),
        }[self.endpoint]
        if not (inp.messages_field or inp.prompt_field or inp.template) and not any(k in first for k in fields):
            names = " or ".join(repr(f) for f in fields)
            raise SpecError(
                f"{source}: input: rows have no {names} field (they have: {_fields(first)}); set "
                "input.template or input.prompt_field" + (" or input.messages_field" if self.endpoint == "chat" else "")
            )

    def check_only(self) -> None:
        """`validate`: images are checked by their size and first 4 KB (format, pixels, bytes, count), not read in
        full nor encoded, so a million-row input is read in minutes; the requests' image urls are left empty."""
        if self.images is not None:
            self.images.light = True

    def ready(self, request: Request) -> Request | BadRow:
        """The request as it is sent: its local image files read in (built, it holds each one's digest)."""
        if not request.files or self.images is None:
            return request
        try:
            payload = self.images.put_files(request.payload, request.files, request.model)
        except RowProblem as exc:
            return BadRow(request.row, request.custom_id, exc.code, f"row {request.row}: {exc}")
        return replace(request, payload=payload, files=())

    def build(self, raw: RawRow) -> Request | BadRow:
        if raw.data is None:
            return BadRow(raw.row, str(raw.row), INVALID_INPUT, raw.error or f"row {raw.row}: unreadable")
        row, data = raw.row, raw.data
        custom_id = row_id(data, row, self.id_field)
        if isinstance(custom_id, BadRow):
            return custom_id
        try:
            body = self._body(data)
            model = str(body.get("model") or self.spec.model)
            images = self.images.read(data, model) if self.images is not None else None
        except RowProblem as exc:
            return BadRow(row, custom_id, exc.code, f"row {row}: {exc}")
        if self.endpoint != "embeddings":
            prompt = body["messages"] if self.endpoint == "chat" else body["prompt"]
            tokens = estimate_messages(prompt) if self.endpoint == "chat" else estimate_input(prompt)
            if self.format is not None and body.get("response_format") is self.format:
                tokens += self.format_tokens
            stream = body.get("stream") is True
            if images is not None:
                return self._with_images(row, custom_id, model, body, tokens, images)
            payload = orjson.dumps(body)
            key = self._cache_key(payload, body)
            most = max_output_tokens(body) + self.reserve
            return Request(row, custom_id, model, payload, tokens, most, stream=stream, cache_key=key)
        text = body.pop("input")
        alike = orjson.dumps(body, option=orjson.OPT_SORT_KEYS) if isinstance(text, str) else None
        body["input"] = text
        payload = orjson.dumps(body)
        return Request(
            row,
            custom_id,
            model,
            payload,
            estimate_input(text),
            0,
            text if isinstance(text, str) else None,
            alike,
            cache_key=self._cache_key(payload, body),
        )

    def _with_images(
        self, row: int, custom_id: str, model: str, body: dict[str, Any], tokens: int, images: RowImages
    ) -> Request:
        """The row's request with its images in its last user message. The cache key reads each image's digest
        in place of its bytes: the same picture under another path is a hit, a changed file is not."""
        assert self.images is not None
        key = self._cache_key(orjson.dumps(with_images(body, images.keys, self.images.detail)), body)
        payload = orjson.dumps(with_images(body, images.urls, self.images.detail))
        return Request(
            row,
            custom_id,
            model,
            payload,
            tokens + images.tokens,
            max_output_tokens(body),
            stream=body.get("stream") is True,
            cache_key=key,
            images=tuple(ref.record() for ref in images.refs),
            fetch=images.fetch,
            image_tokens=images.tokens,
            files=images.files,
        )

    def _cache_key(self, payload: bytes, body: Mapping[str, Any]) -> bytes | None:
        """The response cache's key: base URL, endpoint and the exact body, hashed; None when the job does not
        cache, or does not cache sampled answers and this one is (any temperature but an explicit 0)."""
        if self.cache_scope is None or (not self.cache_sampled and body.get("temperature") != 0):
            return None
        return hashlib.blake2b(self.cache_scope + payload, digest_size=16).digest()

    def _body(self, data: Mapping[str, Any]) -> dict[str, Any]:
        inp = self.spec.input
        if not (inp.messages_field or inp.prompt_field or inp.template) and isinstance(data.get("body"), Mapping):
            return self._batch_row_body(data)
        if self.template is not None:
            return self._text_body(self.template.fill(data))
        if self.endpoint != "chat":
            fields = ("prompt",) if self.endpoint == "completions" else ("input", "prompt", "text")
            name = inp.prompt_field or next((f for f in fields if f in data), fields[0])
            return self._text_body(_text(data.get(name, _MISSING), name))
        if inp.prompt_field is not None or (inp.messages_field is None and "messages" not in data):
            name = inp.prompt_field or "prompt"
            return self._text_body(_text(data.get(name, _MISSING), name))
        name = inp.messages_field or "messages"
        return self._chat_body(_check_messages(data.get(name, _MISSING), name))

    def _text_body(self, text: str) -> dict[str, Any]:
        if self.endpoint == "chat":
            return self._chat_body([{"role": "user", "content": text}])
        key = "prompt" if self.endpoint == "completions" else "input"
        return self._mode({"model": self.spec.model, **self.params, key: text})

    def _chat_body(self, messages: list[Any]) -> dict[str, Any]:
        system = self.spec.input.system
        if system is not None and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": system}, *messages]
        return self._mode({"model": self.spec.model, **self.params, "messages": messages})

    def _batch_row_body(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """An OpenAI Batch API line: `{"custom_id", "url", "body"}`; its url must be this job's endpoint."""
        url = data.get("url")
        if isinstance(url, str) and url_endpoint(url) != self.endpoint:
            raise RowProblem(
                f"url {url!r} is not this job's endpoint ({ENDPOINT_URLS[self.endpoint]}); set "
                "endpoint: in the job spec, or split the input by url"
            )
        body = {"model": self.spec.model, **self.params, **data["body"]}
        if self.endpoint == "chat":
            _check_messages(body.get("messages", _MISSING), "body.messages")
        else:
            key = "prompt" if self.endpoint == "completions" else "input"
            _check_input(body.get(key, _MISSING), f"body.{key}")
        return self._mode(body)

    def _mode(self, body: dict[str, Any]) -> dict[str, Any]:
        """Structured output asks for its JSON (structured.Asking). Streaming asks for usage in the last chunk
        (ModelArts sends none without it), whether the mode streams every row or a line's own body asks for it:
        either way every token billed is counted."""
        mode = self.spec.provider.mode
        if self.asking is not None:
            body = self.asking.apply(body)
        if mode == "stream" and self.endpoint != "embeddings":
            body["stream"] = True
        if body.get("stream") is True:
            if mode in ("batch", "batch-chat"):
                raise RowProblem("asks for stream: true, which a Batch API cannot do: remove it")
            if mode == "async":
                raise RowProblem(
                    "asks for stream: true, which Zhipu's async tasks cannot do: remove it, or use "
                    "provider.mode: stream"
                )
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
        return body


_MISSING: Any = object()  # a field the row does not have (told apart from one it has, holding null)


def _text(value: Any, name: str) -> str:
    if is_null(value):
        raise RowProblem(f"{name!r} is null in this row, where the prompt should be", NULL_FIELD)
    if not isinstance(value, str) or not value.strip():
        raise RowProblem(f"{name!r} must be a non-empty string, got {_kind(value)}")
    return value


def _check_messages(messages: Any, name: str) -> list[Any]:
    """A non-empty list of objects with a role; what else a message holds (content, tool_calls, name) is the
    provider's to judge, as the OpenAI API does (an assistant message with tool_calls has no content)."""
    if is_null(messages):
        raise RowProblem(f"{name!r} is null in this row, where the messages should be", NULL_FIELD)
    if not isinstance(messages, list) or not messages:
        raise RowProblem(f"{name!r} must be a non-empty list of messages, got {_kind(messages)}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise RowProblem(f"{name}[{i}] must be an object with a 'role'")
    return messages


def _check_input(value: Any, name: str) -> None:
    """A prompt or embeddings input as the OpenAI API takes it: text, a list of texts, token ids (a list of
    whole numbers), or a list of token-id lists."""
    if isinstance(value, str):
        _text(value, name)
        return
    if (
        isinstance(value, list)
        and value
        and (
            all(isinstance(v, str) and v.strip() for v in value)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or all(
                isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
                for v in value
            )
        )
    ):
        return
    raise RowProblem(f"{name!r} must be a non-empty string, a list of strings, or token ids, got {_kind(value)}")


def _kind(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    if is_null(value):
        return "null"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return type(value).__name__


def _has(row: Mapping[str, Any], wanted: str) -> str:
    """`(it has: title, body): did you mean 'title'?` for a field the row lacks."""
    return f"(it has: {_fields(row)}){suggestion(wanted, [str(k) for k in row])}"


def _fields(row: Mapping[str, Any]) -> str:
    names = list(row)
    return ", ".join(names[:12]) + (", …" if len(names) > 12 else "") if names else "no fields"
