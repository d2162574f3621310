"""Reading a job spec: the YAML, validated by the model (`model.JobSpec`), its first error as the one line a user
reads (`render`), and the JSON Schema editors check a spec file against (`job_schema`)."""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from ..errors import BatchrunError, InputError, SpecError
from ..text.words import did_you_mean, suggestion
from .base import Derived, Expect, Internal, Reading, kind, marker, model_of, spec_keys
from .base import members as members  # sim.command reads annotations with it too
from .model import JobSpec
from .yamlfile import load_yaml


def load_spec(path: str | Path) -> JobSpec:
    """Read and check a job spec file; relative paths resolve against the spec's folder."""
    spec_path = Path(path)
    source = str(spec_path)
    data = load_yaml(spec_path, "job spec")
    return parse_spec(data, spec_path=spec_path.resolve(), source=source)


def parse_spec(data: Any, *, spec_path: Path, source: str, rows_given: bool = False, origin: str = "") -> JobSpec:
    """`rows_given`: the rows come from elsewhere (a Ray Dataset), so input says only how a row becomes a request.
    `origin`: how later messages name a spec that is no file of the user's (`batchrun.run(spec)`)."""
    try:
        spec = JobSpec.model_validate(data, context=Reading(source, spec_path, rows_given))
    except ValidationError as exc:
        raise render(exc, JobSpec, source) from None
    return spec.model_copy(update={"origin": origin}) if origin else spec


def render(
    exc: ValidationError, root: type[BaseModel], source: str | None, name: Callable[[str], str] | None = None
) -> BatchrunError:
    """The first of pydantic's errors as one line: `source: key.path what was expected, got what was given`.

    `name` spells a key as the user wrote it where that is not the spec's dotted path (a command's --option)."""
    error = exc.errors(include_url=False)[0]
    loc, kind_, ctx = error["loc"], error["type"], error.get("ctx") or {}
    given = ctx.get("given", error.get("input"))
    key, owner, field = _walk(root, loc)
    key = name(key) if name is not None else key
    if kind_ == "unknown_key":
        at = f"{key}." if key else ""
        top = [ctx["key"]] if at and ctx["key"] in spec_keys(root) else []  # a top-level key written in a section
        meant = did_you_mean([*(f"{at}{k}" for k in ctx.get("suggest", ())), *top])
        line = f"unknown key '{at}{ctx['key']}'{f': {meant}' if meant else ''} (allowed here: {ctx['allowed']})"
    elif kind_ == "spec_line":
        line = ctx["line"]
    elif kind_ == "input_error":
        return InputError(f"{source}: {ctx['line']}")
    elif kind_ == "spec":
        line = f"{key} {ctx['what']}"
    elif kind_ == "spec_at":
        line = f"{key}.{ctx['key']} {ctx['what']}"
    elif kind_ == "missing":
        expect = marker(owner, field, Expect) if owner is not None and field else None
        line = f"{key} {expect.required if expect is not None else 'is required'}"
    elif kind_ == "greater_than":
        line = f"{key} must be > {ctx['gt']:g}, got {given}"
    elif kind_ == "greater_than_equal":
        line = f"{key} must be >= {ctx['ge']:g}, got {given}"
    else:
        line = f"{key or 'the spec'} {_expected(owner, field, given)}"
    return SpecError(f"{source}: {line}" if source else line)


def _walk(root: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[str, type[BaseModel] | None, str]:
    """The key path an error's location names (`provider.simulate.rpm`, `models[1]`), and the model and field the
    error is about (the innermost one the path reaches)."""
    model: type[BaseModel] | None = root
    key, owner, field = "", None, ""
    for part in loc:
        if model is not None and isinstance(part, str) and part in model.model_fields:
            owner, field = model, part
            key = f"{key}.{part}" if key else part
            model = model_of(model.model_fields[part].annotation)
        else:
            key += f"[{part}]" if isinstance(part, int) else f".{part}"
            model = None
    return key, owner, field


def _expected(owner: type[BaseModel] | None, field: str, given: Any) -> str:
    """What the key takes, and what was given: `must be a number, got the string 'fast'`."""
    got = f", got {kind(given)}"
    if owner is None or not field:
        return f"must be a mapping{got}"
    (annotation, *_) = members(owner.model_fields[field].annotation)
    origin = typing.get_origin(annotation)
    if origin is Literal:
        if isinstance(given, str) and given.strip():
            expect = marker(owner, field, Expect)
            names = typing.get_args(annotation)
            meant = suggestion(given, names, dict(expect.aliases) if expect is not None else None)
            return f"must be one of {', '.join(names)}, got {given!r}{meant}"
        return f"must be a non-empty string{got}"
    if annotation is bool:
        return f"must be true or false{got}"
    if annotation is int:
        return f"must be a whole number{got}"
    if annotation is float:
        return f"must be a number{got}"
    if annotation in (str, Path):
        return f"must be a non-empty string{got}"
    if annotation in (list, tuple) or origin in (list, tuple):
        return f"must be a list{got}"
    return f"must be a mapping{got}"


def job_schema() -> dict[str, Any]:
    """The job spec's JSON Schema, from the model: what a spec file may say (internal fields left out, derived
    ones not required), for editors to complete keys and flag typos."""
    schema = JobSpec.model_json_schema()
    defs = schema.get("$defs", {})
    for cls in _models(JobSpec):
        node = schema if cls is JobSpec else defs[cls.__name__]
        hidden = [n for n in cls.model_fields if marker(cls, n, Internal) is not None]
        optional = hidden + [n for n in cls.model_fields if marker(cls, n, Derived) is not None]
        for name in hidden:
            node["properties"].pop(name, None)
        for name in optional:  # derived from what else the spec says: the description tells how
            node["properties"].get(name, {}).pop("default", None)
        node["required"] = [n for n in node.get("required", []) if n not in optional]
        if not node["required"]:
            del node["required"]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **_same_everywhere(schema)}


def _same_everywhere(node: Any) -> Any:
    """The schema as every pydantic since the floor (2.7) writes it: bounds as written (0, not 0.0), and no
    `additionalProperties: true` (what an object without it allows anyway), a $ref beside a description not
    wrapped in allOf, and a literal of one value as `const` alone (older ones add a one-value `enum`)."""
    if isinstance(node, list):
        return [_same_everywhere(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _same_everywhere(v) for k, v in node.items() if not (k == "additionalProperties" and v is True)}
    if "$ref" not in out and len(out.get("allOf", ())) == 1 and set(out["allOf"][0]) == {"$ref"}:
        out = {"$ref": out.pop("allOf")[0]["$ref"], **out}
    if "const" in out and out.get("enum") == [out["const"]]:
        del out["enum"]
    for key in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        if isinstance(out.get(key), float) and out[key].is_integer():
            out[key] = int(out[key])
    return out


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    found = [root]
    for model in found:
        for field in model.model_fields.values():
            inner = model_of(field.annotation)
            if inner is not None and inner not in found:
                found.append(inner)
    return found


def schema_text() -> str:
    """The schema as `batchrun schema` prints it and docs/job.schema.json holds it."""
    return json.dumps(job_schema(), indent=2, ensure_ascii=False) + "\n"
