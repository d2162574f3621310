"""Turning input rows into request bodies, and the token estimate the TPM limiter charges for them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import SpecError
from .sources import RawRow
from .spec import JobSpec

# Output tokens charged to the TPM budget when neither the spec nor the row sets max_tokens.
DEFAULT_MAX_OUTPUT_TOKENS = 512
MESSAGE_OVERHEAD_TOKENS = 4
ID_FIELDS = ("custom_id", "id")


@dataclass(frozen=True, slots=True)
class Request:
    row: int
    custom_id: str | int
    model: str
    payload: bytes  # the JSON body, serialised once and reused by every attempt
    prompt_tokens: int  # estimated
    max_output: int

    @property
    def tokens(self) -> int:
        """Prompt estimate + max output tokens: what a provider that reserves max_tokens charges."""
        return self.prompt_tokens + self.max_output


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that cannot become a request: recorded as a failure, never sent."""

    row: int
    custom_id: str | int | None
    code: str
    message: str


def estimate_tokens(text: str) -> int:
    """Rough token count without a tokenizer: ~1 token per CJK character, ~4 ASCII characters per token."""
    chars = len(text)
    if not chars:
        return 0
    wide = (len(text.encode("utf-8")) - chars) // 2  # 3-byte UTF-8 characters (CJK) add two bytes each
    return wide + (chars - wide + 3) // 4


def estimate_messages(messages: list[Any]) -> int:
    total = 3
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            total += estimate_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    total += estimate_tokens(part["text"])
    return total


def max_output_tokens(body: Mapping[str, Any]) -> int:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_MAX_OUTPUT_TOKENS


class RequestBuilder:
    """Builds request bodies for one job; defaults are settled once from the first row."""

    def __init__(self, spec: JobSpec, first: Mapping[str, Any] | None) -> None:
        self.spec = spec
        inp = spec.input
        self.id_field = inp.id_field
        if self.id_field is None and first is not None:
            self.id_field = next((f for f in ID_FIELDS if f in first), None)
        self.params = dict(spec.params)
        if first is not None:
            self._preflight(first)

    def _preflight(self, first: Mapping[str, Any]) -> None:
        """Settle, before anything is sent, that the spec fits the input's rows."""
        inp, source = self.spec.input, self.spec.spec_path.name
        if inp.id_field is not None and inp.id_field not in first:
            raise SpecError(f"{source}: input.id_field: the first row has no field {inp.id_field!r} "
                            f"(it has: {_fields(first)})")
        for key, name in (("messages_field", inp.messages_field), ("prompt_field", inp.prompt_field)):
            if name is not None and name not in first:
                raise SpecError(f"{source}: input.{key}: the first row has no field {name!r} "
                                f"(it has: {_fields(first)})")
        for name in inp.template_fields:
            if name not in first:
                raise SpecError(f"{source}: input.template names {{{name}}}, but the first row has no field "
                                f"{name!r} (it has: {_fields(first)})")
        if not (inp.messages_field or inp.prompt_field or inp.template) and not any(
            k in first for k in ("body", "messages", "prompt")
        ):
            raise SpecError(f"{source}: input: rows have no 'messages', 'prompt' or 'body' field (they have: "
                            f"{_fields(first)}); set input.template, input.prompt_field or input.messages_field")

    def build(self, raw: RawRow) -> Request | BadRow:
        if raw.data is None:
            return BadRow(raw.row, None, "invalid_input", raw.error or f"row {raw.row}: unreadable")
        row, data = raw.row, raw.data
        custom_id: Any = row if self.id_field is None else data.get(self.id_field)
        if self.id_field is not None:
            if custom_id is None:
                return BadRow(row, None, "missing_id", f"row {row}: no {self.id_field!r} field")
            if isinstance(custom_id, bool) or not isinstance(custom_id, (str, int)):
                return BadRow(row, None, "invalid_id",
                              f"row {row}: {self.id_field!r} must be a string or a whole number")
        try:
            body = self._body(data)
        except _RowProblem as exc:
            return BadRow(row, custom_id, "invalid_input", f"row {row}: {exc}")
        return Request(row, custom_id, str(body.get("model") or self.spec.model), orjson.dumps(body),
                       estimate_messages(body["messages"]), max_output_tokens(body))

    def _body(self, data: Mapping[str, Any]) -> dict[str, Any]:
        inp = self.spec.input
        if not (inp.messages_field or inp.prompt_field or inp.template) and isinstance(data.get("body"), Mapping):
            url = data.get("url")
            if isinstance(url, str) and not url.rstrip("/").endswith("/chat/completions"):
                raise _RowProblem(f"url {url!r} is not supported yet: only /chat/completions")
            body = {"model": self.spec.model, **self.params, **data["body"]}
            _check_messages(body.get("messages"), "body.messages")
            return self._mode(body)
        if inp.template is not None:
            try:
                text = inp.template.format_map(data)
            except KeyError as exc:
                raise _RowProblem(f"input.template names {{{exc.args[0]}}}, which this row lacks") from None
            except (IndexError, AttributeError, ValueError, TypeError) as exc:
                raise _RowProblem(f"input.template cannot be filled from this row ({exc})") from None
            messages: list[Any] = [{"role": "user", "content": text}]
        elif inp.prompt_field is not None or (inp.messages_field is None and "messages" not in data):
            name = inp.prompt_field or "prompt"
            prompt = data.get(name)
            if not isinstance(prompt, str) or not prompt.strip():
                raise _RowProblem(f"{name!r} must be a non-empty string, got {_kind(prompt)}")
            messages = [{"role": "user", "content": prompt}]
        else:
            name = inp.messages_field or "messages"
            messages = data.get(name)  # type: ignore[assignment]
            _check_messages(messages, name)
        if inp.system is not None and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": inp.system}, *messages]
        return self._mode({"model": self.spec.model, **self.params, "messages": messages})

    def _mode(self, body: dict[str, Any]) -> dict[str, Any]:
        """Streaming asks for usage in the last chunk (ModelArts sends none without it)."""
        if self.spec.provider.mode == "stream":
            body["stream"] = True
            body["stream_options"] = {**body.get("stream_options", {}), "include_usage": True}
        return body


class _RowProblem(Exception):
    pass


def _check_messages(messages: Any, name: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise _RowProblem(f"{name!r} must be a non-empty list of messages, got {_kind(messages)}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or "content" not in m:
            raise _RowProblem(f"{name}[{i}] must be an object with 'role' and 'content'")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return type(value).__name__


def _fields(row: Mapping[str, Any]) -> str:
    names = list(row)
    return ", ".join(names[:12]) + (", …" if len(names) > 12 else "") if names else "no fields"
