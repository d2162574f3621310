"""The spec's `output:` block: the JSON Schema every answer must fit, checked once when the spec is read.

What the spec needs of structured output, apart from the judging (`structured`), so reading a spec does not
depend on how answers are judged.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo

from .base import Derived, LeftOut, Reading, SpecModel, Text, fail, fail_line, reading
from .presets import AskForm

DEFAULT_MAX_REPAIRS = 2
DEFAULT_MAX_TOKENS_CAP = 4096  # a cut answer's max_tokens grows to at most this, unless params set more


def _schema(value: Any, info: ValidationInfo) -> Any:
    """output.schema, or the JSON file output.schema_file names: exactly one, and a usable JSON Schema."""
    spec = reading(info)
    if spec is None:
        return value
    if "schema_file" not in info.data:
        return {}  # schema_file's own error is the one reported
    schema_file = info.data["schema_file"]
    if isinstance(value, LeftOut) == (schema_file is None):
        fail_line("output: give exactly one of output.schema (a mapping) or output.schema_file")
    where = "output.schema"
    if schema_file is not None:
        path = (spec.base / schema_file).resolve()
        where = f"output.schema_file ({schema_file})"
        try:
            value = orjson.loads(path.read_bytes())
        except OSError as exc:
            fail_line(f"output.schema_file cannot be read: {exc.strerror} ({path})")
        except orjson.JSONDecodeError as exc:
            # line and column only: the parser's own wording changes between orjson versions
            fail_line(f"output.schema_file is not JSON: at line {exc.lineno} column {exc.colno} ({schema_file})")
    problem = schema_problem(value)
    if problem is not None:
        fail_line(f"{where} {problem}")
    return dict(value)


def _name(value: str, info: ValidationInfo) -> str:
    if reading(info) is not None and (not all(c.isalnum() or c in "_-" for c in value) or len(value) > 64):
        fail(f"must be letters, digits, _ or - (64 at most), as response_format wants: {value!r}")
    return value


def _ask(value: Any, info: ValidationInfo) -> Any:
    spec = reading(info)
    if spec is None or not isinstance(value, LeftOut):
        return value
    return spec.preset.ask if spec.preset is not None else "instruction"


def _tokens_cap(value: Any, info: ValidationInfo) -> Any:
    spec = reading(info)
    if spec is None or not isinstance(value, LeftOut):
        return value
    return max(DEFAULT_MAX_TOKENS_CAP, 4 * (body_max_tokens(spec.params or {}) or 0))


with warnings.catch_warnings():
    warnings.filterwarnings("ignore", 'Field name "schema"', UserWarning)  # the spec's key, not BaseModel.schema

    class OutputSpec(SpecModel):
        """The spec's `output:` block: the schema every answer must fit, and how hard to try."""

        schema_file: Text | None = Field(
            None, description="A JSON file holding the schema, relative to the spec (instead of output.schema)."
        )
        # The spec's key, not BaseModel.schema (deprecated); Field(...) assigned, so that no pydantic takes the
        # inherited method for its default.
        schema: Annotated[Mapping[str, Any], Derived(), BeforeValidator(_schema)] = Field(  # type: ignore[assignment]
            description="The JSON Schema every answer must fit (or give output.schema_file)."
        )
        name: Annotated[
            Text, Field(description="The schema's name, as response_format wants it."), AfterValidator(_name)
        ] = "output"
        ask: Annotated[
            AskForm,
            Derived(),
            Field(
                description="How to ask for JSON: json_schema, json_object or instruction; default the provider's "
                "strongest."
            ),
            BeforeValidator(_ask),
        ] = "json_schema"
        max_repairs: int = Field(
            DEFAULT_MAX_REPAIRS, ge=0, description="Follow-up requests asking to fix an answer that does not fit."
        )
        max_tokens_cap: Annotated[
            int,
            Derived(),
            Field(ge=1, description="A cut answer's max_tokens grows to at most this; default 4096 or 4x params'."),
            BeforeValidator(_tokens_cap),
        ] = DEFAULT_MAX_TOKENS_CAP

        @classmethod
        def as_written(cls, data: dict[str, Any], spec: Reading) -> dict[str, Any]:
            if spec.endpoint != "chat":
                fail_line("output: structured output applies to endpoint: chat only")
            n = (spec.params or {}).get("n")
            if isinstance(n, int) and n > 1:
                fail_line(f"output: checks one answer per row; leave params.n out (it is {n})")
            return data


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
