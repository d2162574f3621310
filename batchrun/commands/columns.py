"""A record as one flat row of columns: its answer, reasoning, usage and error, structured output's properties each
in a column of its own, and the Arrow type of every column. Shared by `batchrun export` and Ray Data's output
(`ray.data`), which write the same rows to different places.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..store.usage import usage_counts

OUTPUT_COLUMNS = (
    "row",
    "custom_id",
    "status",
    "model",
    "answer",
    "reasoning",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "reasoning_tokens",
    "cached_prompt_tokens",
    "error_code",
    "error_message",
    "attempts",
    "latency_s",
    "cached",
)
INPUT_PREFIX = "input_"
OutputField = tuple[str, str, Any]  # structured output: column name, property name, the property's schema


@dataclass(frozen=True)
class Shape:
    """What an export's rows hold beyond OUTPUT_COLUMNS: an embedding, structured output's columns."""

    embeddings: bool = False
    fields: Sequence[OutputField] = ()  # structured output: one column per property of the schema
    typed: bool = False  # the output's values fitted to their Arrow types (Parquet)


def flatten(row: int, record: Mapping[str, Any] | None, shape: Shape = Shape()) -> dict[str, Any]:
    """The export's columns for one row: its answer text, reasoning, finish_reason, usage and error.

    Written for speed (a million rows): records come from orjson, so plain `type(x) is dict` checks."""
    if record is None:
        out = dict.fromkeys(OUTPUT_COLUMNS)
        out.update(row=row, status="pending")
        if shape.embeddings:
            out["embedding"] = None
        if shape.fields:
            output_values(out, None, shape.fields, shape.typed)
        return out
    error = record.get("error")
    response = record.get("response")
    body = response.get("body") if type(response) is dict else None
    if type(body) is not dict:
        body = _EMPTY
    usage = body.get("usage")
    if type(usage) is not dict:
        usage = _EMPTY
    counts = usage_counts(usage)
    choices = body.get("choices")
    choice = choices[0] if type(choices) is list and choices and type(choices[0]) is dict else _EMPTY
    message = choice.get("message")
    if type(message) is not dict:
        message = _EMPTY
    text = message.get("content") if message else choice.get("text")
    reasoning = message.get("reasoning_content")
    custom_id = record.get("custom_id")
    out = {
        "row": row,
        "custom_id": None if custom_id is None else str(custom_id),
        "status": "failed" if error else "succeeded",
        "model": record.get("model"),
        "answer": text if type(text) is str else None,
        "reasoning": reasoning if type(reasoning) is str else None,
        "finish_reason": choice.get("finish_reason"),
        "prompt_tokens": _count(usage.get("prompt_tokens")),
        "completion_tokens": _count(usage.get("completion_tokens")),
        "total_tokens": _count(usage.get("total_tokens")),
        # of those: the chain of thought, and the prompt the provider's cache served (None: no usage)
        "reasoning_tokens": counts.reasoning if usage else None,
        "cached_prompt_tokens": counts.cached_prompt if usage else None,
        "error_code": error.get("code") if type(error) is dict else None,
        "error_message": error.get("message") if type(error) is dict else None,
        "attempts": record.get("attempts"),
        "latency_s": record.get("latency_s"),
        "cached": record.get("cached") is True,  # answered from the response cache: no request, no latency
    }
    if shape.embeddings:
        data = body.get("data")
        first = data[0] if type(data) is list and data and type(data[0]) is dict else _EMPTY
        out["embedding"] = first.get("embedding")
    if shape.fields:
        output_values(out, None if error else record.get("output"), shape.fields, shape.typed)
    return out


_EMPTY: dict[str, Any] = {}


def _count(value: Any) -> int | None:
    return value if type(value) is int else None


# --- structured output: one column per top-level property of the job's schema ----------------------------------


def output_fields(schema: Mapping[str, Any]) -> list[OutputField]:
    """The schema's top-level properties as columns, named as the properties are (with `output_` before a name
    that batchrun's own columns already use)."""
    props = schema.get("properties")
    if not isinstance(props, Mapping):
        return [("output", "", schema)]  # not an object of properties: the whole output in one column
    taken = {*OUTPUT_COLUMNS, "embedding", "output"}
    return [
        (f"output_{name}" if name in taken or name.startswith(INPUT_PREFIX) else name, name, sub)
        for name, sub in props.items()
    ]


def output_values(out: dict[str, Any], value: Any, fields: Sequence[OutputField], typed: bool) -> None:
    """A row's output values in its columns: for Parquet fitted to each column's type (`coerce`)."""
    for column, name, sub in fields:
        item = (value.get(name) if isinstance(value, dict) else None) if name else value
        out[column] = coerce(item, sub) if typed else item


def arrow_type(schema: Any) -> Any:
    """The Arrow type of a JSON Schema: string, int64, double, bool, lists and structs; anything else (anyOf, an
    object without properties) as JSON text."""
    import pyarrow as pa

    kind = _kind(schema)
    if kind == "string":
        return pa.string()
    if kind == "integer":
        return pa.int64()
    if kind == "number":
        return pa.float64()
    if kind == "boolean":
        return pa.bool_()
    if kind == "array":
        return pa.list_(arrow_type(schema.get("items")))
    if kind == "object":
        return pa.struct([(name, arrow_type(sub)) for name, sub in schema["properties"].items()])
    return pa.string()


def coerce(value: Any, schema: Any) -> Any:
    """`value` in the shape its column's `arrow_type` takes (None where it does not fit)."""
    if value is None:
        return None
    kind = _kind(schema)
    if kind == "string":
        return value if isinstance(value, str) else None
    if kind == "integer":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if kind == "number":
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if kind == "array":
        return [coerce(v, schema.get("items")) for v in value] if isinstance(value, list) else None
    if kind == "object":
        if not isinstance(value, dict):
            return None
        return {name: coerce(value.get(name), sub) for name, sub in schema["properties"].items()}
    return orjson.dumps(value).decode()


def _kind(schema: Any) -> str | None:
    """The one JSON type a schema names (`["string", "null"]` is a string that may be missing), else None."""
    if not isinstance(schema, Mapping):
        return None
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None and isinstance(schema.get("enum"), list) and schema["enum"]:
        values = schema["enum"]
        kind = "string" if all(isinstance(v, str) for v in values) else None
    if kind == "object" and not isinstance(schema.get("properties"), Mapping):
        return None
    if kind is None and isinstance(schema.get("properties"), Mapping):
        return "object"
    return kind if isinstance(kind, str) else None


def output_arrays(rows: Sequence[Mapping[str, Any]], fields: Sequence[OutputField] = ()) -> dict[str, Any]:
    """Flattened rows' output columns as Arrow arrays of their types (structured output's by its schema)."""
    import pyarrow as pa

    types = {**column_types(), **{column: arrow_type(sub) for column, _, sub in fields}}
    return {name: pa.array([r[name] for r in rows], type=types.get(name)) for name in rows[0] if name != "input"}


@functools.cache
def column_types() -> dict[str, Any]:
    """Arrow types of the output columns, made on first use: pyarrow is loaded only for Parquet exports."""
    import pyarrow as pa

    return {
        "row": pa.int64(),
        "custom_id": pa.string(),
        "status": pa.string(),
        "model": pa.string(),
        "answer": pa.string(),
        "reasoning": pa.string(),
        "finish_reason": pa.string(),
        "prompt_tokens": pa.int64(),
        "completion_tokens": pa.int64(),
        "total_tokens": pa.int64(),
        "reasoning_tokens": pa.int64(),
        "cached_prompt_tokens": pa.int64(),
        "error_code": pa.string(),
        "error_message": pa.string(),
        "attempts": pa.int64(),
        "latency_s": pa.float64(),
        "cached": pa.bool_(),
        "embedding": pa.list_(pa.float32()),
    }
