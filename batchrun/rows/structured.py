"""Structured output: how a job asks for JSON that fits its schema, and how an answer is judged against it.

Pure functions of bodies and answers. The JSON Schema work is jsonschema-rs's (a Rust validator: 0.4 µs to
check a 5-field answer against 43 µs for the pure-Python jsonschema, with the same path and message for each
error), compiled once per job.

How a request asks (`presets.ASK_FORMS`, strongest first; each preset names its own):
- `json_schema`: OpenAI's `response_format: {type: json_schema, json_schema: {name, schema, strict}}`
  (OpenAI, vLLM's guided decoding, the simulator);
- `json_object`: `response_format: {type: json_object}` plus the schema in the system message (Zhipu, DashScope,
  Baidu: their JSON mode promises JSON, not this JSON, and OpenAI-style JSON modes want the word JSON in the
  prompt);
- `instruction`: the schema in the system message only (providers with no JSON mode).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..spec.output import OutputSpec, json_path
from ..spec.presets import AskForm

SCHEMA_INTRO = "Answer with one JSON object, and nothing else, that fits this JSON Schema:"
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
_SCHEMA_IN_TEXT = re.compile(re.escape(SCHEMA_INTRO) + r"\s*```json\s*\n(.*?)\n```", re.S)
_THINK = re.compile(r"^\s*<think>.*?</think>", re.S)
MAX_LISTED = 5  # errors named in one repair message


# --- asking ------------------------------------------------------------------------------------------------------


def instruction(schema: Mapping[str, Any]) -> str:
    return f"{SCHEMA_INTRO}\n```json\n{orjson.dumps(schema).decode()}\n```"


def schema_in_text(text: str) -> dict[str, Any] | None:
    """The schema an `instruction` put in a prompt (what a model reads; the simulator reads it too)."""
    found = _SCHEMA_IN_TEXT.search(text)
    if found is None:
        return None
    try:
        schema = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return None
    return schema if isinstance(schema, dict) else None


def strict_ok(schema: Any) -> bool:
    """Whether OpenAI's strict mode takes the schema: every object lists all its properties as required and
    forbids others. Strict mode refuses other schemas (400), so they are sent with strict: false."""
    if isinstance(schema, Mapping):
        if schema.get("type") == "object" or "properties" in schema:
            props = schema.get("properties") or {}
            if schema.get("additionalProperties") is not False or set(schema.get("required") or ()) != set(props):
                return False
        return all(strict_ok(v) for k, v in schema.items() if k not in ("enum", "const", "default", "examples"))
    if isinstance(schema, list):
        return all(strict_ok(v) for v in schema)
    return True


@dataclass(frozen=True)
class Asking:
    """What every request of a job adds to ask for its output, made once per job (not once per row)."""

    response_format: dict[str, Any] | None
    instruction: str | None

    @classmethod
    def of(cls, output: OutputSpec, form: AskForm) -> Asking:
        if form == "json_schema":
            spec = {"name": output.name, "schema": dict(output.schema), "strict": strict_ok(output.schema)}
            return cls({"type": "json_schema", "json_schema": spec}, None)
        fmt = {"type": "json_object"} if form == "json_object" else None
        return cls(fmt, instruction(output.schema))

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """A chat body asking for the output. A response_format the user set (params or the row's own body) is
        left as it is."""
        if self.response_format is not None and "response_format" not in body:
            body["response_format"] = self.response_format
        if self.instruction is not None:
            body["messages"] = with_instruction(body["messages"], self.instruction)
        return body


def ask(body: dict[str, Any], output: OutputSpec, form: AskForm) -> dict[str, Any]:
    """`body` asking for the output in the given form (`Asking`, for one body)."""
    return Asking.of(output, form).apply(body)


def with_instruction(messages: list[Any], text: str) -> list[Any]:
    first = messages[0] if messages else None
    if isinstance(first, Mapping) and first.get("role") == "system" and isinstance(first.get("content"), str):
        return [{**first, "content": f"{first['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


# --- judging -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Why an answer is not the output: `kind` is `json` (not JSON), `schema` (JSON that does not fit) or `length`
    (cut at max_tokens); `path` and `message` name the first error, `errors` lists them for the repair."""

    kind: Literal["json", "schema", "length", "empty"]
    path: str
    message: str
    errors: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(frozen=True)
class Judged:
    value: Any = None
    problem: Problem | None = None
    text: str | None = None  # the answer as the model wrote it
    cut: bool = False  # finish_reason length


def parse_answer(text: str) -> Any:
    """The JSON in a model's answer: the whole text, else a ```json fence, else the first JSON value in the
    text (models wrap JSON in talk). Raises ValueError with what was wrong."""
    text = _THINK.sub("", text).strip()
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        first = exc
    for block in _FENCE.findall(text):
        try:
            return orjson.loads(block.strip())
        except orjson.JSONDecodeError:
            continue
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if starts:
        try:
            value, _ = json.JSONDecoder().raw_decode(text, min(starts))
            return value
        except json.JSONDecodeError:
            pass
    raise ValueError(str(first).split(": line")[0] or "not JSON")


class Checker:
    """One job's schema, compiled once; judges each answer."""

    def __init__(self, output: OutputSpec) -> None:
        self.output = output
        import jsonschema_rs

        self.validator = jsonschema_rs.validator_for(dict(output.schema))

    def judge(self, body: Any) -> Judged:
        """The first choice of a chat completion, parsed and checked against the schema."""
        choices = body.get("choices") if isinstance(body, Mapping) else None
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], Mapping) else {}
        message = choice.get("message") if isinstance(choice.get("message"), Mapping) else {}
        text = message.get("content") if isinstance(message, Mapping) else None
        cut = choice.get("finish_reason") == "length"
        if not isinstance(text, str) or not text.strip():
            return Judged(problem=Problem("length" if cut else "empty", "", "the answer is empty"), text=text, cut=cut)
        try:
            value = parse_answer(text)
        except ValueError as exc:
            kind: Literal["json", "length"] = "length" if cut else "json"
            return Judged(problem=Problem(kind, "", f"not valid JSON ({exc})"), text=text, cut=cut)
        if self.validator.is_valid(value):
            return Judged(value=value, text=text, cut=cut)
        errors = [(json_path(e.instance_path), e.message) for e in self.validator.iter_errors(value)]
        listed = tuple(f"{path}: {message}" for path, message in errors[:MAX_LISTED])
        path, message = errors[0]
        return Judged(problem=Problem("length" if cut else "schema", path, message, listed), text=text, cut=cut)


# --- repairing ---------------------------------------------------------------------------------------------------


def repair_message(problem: Problem) -> str:
    """What the model is told about its answer: every error (up to MAX_LISTED), with where it is."""
    if problem.kind == "schema":
        listed = "\n".join(f"- {line}" for line in problem.errors) or f"- {problem.describe()}"
        more = "" if len(problem.errors) < MAX_LISTED else "\n(and perhaps more)"
        return (
            "Your answer does not fit the JSON Schema:\n"
            f"{listed}{more}\nReply with the corrected JSON object only, no other text."
        )
    if problem.kind == "empty":
        return "Your answer was empty. Reply with the JSON object the schema asks for, no other text."
    return f"Your answer is {problem.message}. Reply with the JSON object only, no other text."


def repaired_body(body: dict[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The next request after one repair step (a `repairs.jsonl` entry): a cut answer asks again with more
    max_tokens; an invalid one continues the conversation with the answer and what is wrong with it."""
    if entry.get("kind") == "length":
        key = next((k for k in ("max_tokens", "max_completion_tokens") if k in body), "max_tokens")
        return {**body, key: int(entry["max_tokens"])}
    messages = [
        *body["messages"],
        {"role": "assistant", "content": str(entry.get("answer") or "")},
        {"role": "user", "content": str(entry.get("feedback") or "")},
    ]
    return {**body, "messages": messages}


def grown_max_tokens(current: int | None, completion_tokens: int, cap: int) -> int | None:
    """The max_tokens to ask again with after a cut answer, or None when it cannot grow (already at the cap)."""
    now = current if current is not None else completion_tokens
    grown = min(cap, max(2 * now, 2 * completion_tokens, 16))
    return grown if grown > now else None
