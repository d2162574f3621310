"""The spec's `output:` block: the JSON Schema every answer must fit, checked once when the spec is read.

What the spec needs of structured output, apart from the judging (`structured`), so reading a spec does not
depend on how answers are judged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .presets import AskForm

DEFAULT_MAX_REPAIRS = 2
DEFAULT_MAX_TOKENS_CAP = 4096  # a cut answer's max_tokens grows to at most this, unless params set more


@dataclass(frozen=True)
class OutputSpec:
    """The spec's `output:` block: the schema every answer must fit, and how hard to try."""

    schema: Mapping[str, Any]
    name: str = "output"
    ask: AskForm = "json_schema"  # the spec's output.ask, else the provider's strongest form
    max_repairs: int = DEFAULT_MAX_REPAIRS
    max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP
    schema_file: str | None = None  # where the schema came from, as the spec named it


def schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a usable JSON Schema (None when it is): checked against its meta-schema, then compiled."""
    if not isinstance(schema, Mapping):
        return f"must be a JSON Schema object, got {type(schema).__name__}"
    import jsonschema_rs  # loaded by jobs with an output schema only: 6 MB the others need not carry

    try:
        jsonschema_rs.meta.validate(dict(schema))
        jsonschema_rs.validator_for(dict(schema))
    except jsonschema_rs.ValidationError as exc:
        return f"is not a valid JSON Schema: at {json_path(exc.instance_path)}: {exc.message}"
    except (ValueError, jsonschema_rs.ReferencingError) as exc:
        return f"is not a valid JSON Schema: {str(exc).splitlines()[0]}"
    return None


def json_path(parts: Sequence[str | int]) -> str:
    """`$.entities[0].name` from jsonschema-rs's instance path."""
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if part.isidentifier() else f"[{part!r}]")
    return out


def body_max_tokens(body: Mapping[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
