"""What every model of the job spec shares: strict types, keys refused unless declared, errors kept as data.

A model validates two ways. Built in code (`Limits(rpm=60)`), it checks types and bounds only. Read from a spec
(`model_validate(data, context=Reading(...))`), it reads the data as the user wrote it: shorthands expanded, unknown
keys refused (naming the key and the allowed ones), a key given as null taken as left out, and its checks raise
errors that `parse.render` turns into the one line a user reads.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, NoReturn, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from ..text.words import closest

if TYPE_CHECKING:
    from .presets import Endpoint, Preset


@dataclass
class Reading:
    """The validation context while a spec is read: where it came from, where its relative paths start, and what
    earlier sections settled that later ones depend on (the provider's preset, the endpoint, the params)."""

    source: str  # the spec file as named on the command line (every message starts with it)
    spec_path: Path
    rows_given: bool = False  # the rows come from elsewhere (a Ray Dataset): input says only how a row is sent
    preset: Preset | None = None  # set once provider is read
    tier: str | None = None  # provider.tier: whose limits a job's limits: leaves out
    mode: str = "sync"
    endpoint: Endpoint = "chat"
    params: Mapping[str, Any] | None = None

    @property
    def base(self) -> Path:
        return self.spec_path.parent


@dataclass(frozen=True)
class Internal:
    """Marks a field that is not a key of the spec: batchrun sets it (never in the schema, refused in a spec)."""


@dataclass(frozen=True)
class Derived:
    """Marks a field the spec may leave out although the record always has it: derived when the spec is read."""


@dataclass(frozen=True)
class Expect:
    """What the one-line error says of a key where its type alone does not say it well."""

    required: str = "is required"  # what a missing key's error says after its name
    keep_null: bool = False  # a null is an error (else a null is taken as the key left out)
    aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()  # values a user may write for one of the key's: suggested


@dataclass(frozen=True)
class LeftOut:
    """What a Derived field's validator receives when the spec left the key out."""


def fail(what: str) -> NoReturn:
    """The key being validated is wrong: the error reads `<key> <what>`."""
    raise PydanticCustomError("spec", "{what}", {"what": what})


def fail_at(key: Any, what: str) -> NoReturn:
    """A key within the value being validated is wrong (`limits.max_cost.CNY`): the error reads `<key>.<k> <what>`."""
    raise PydanticCustomError("spec_at", "{what}", {"what": what, "key": str(key)})


def fail_line(line: str) -> NoReturn:
    """A rule across keys is broken: the error is this line as it is (after the spec's name)."""
    raise PydanticCustomError("spec_line", "{line}", {"line": line})


def reading(info: ValidationInfo) -> Reading | None:
    """The spec being read, or None when the model is built in code."""
    return info.context if isinstance(info.context, Reading) else None


def marker(cls: type[BaseModel], name: str, kind: type[Any]) -> Any:
    """The field's marker of this kind (Internal, Derived, Expect), or None."""
    field = cls.model_fields.get(name)
    for meta in field.metadata if field is not None else ():
        if isinstance(meta, kind):
            return meta
    return None


def spec_keys(cls: type[BaseModel]) -> list[str]:
    """The keys a spec may give this model: its fields but the internal ones."""
    return [name for name in cls.model_fields if marker(cls, name, Internal) is None]


class SpecModel(BaseModel):
    """A section of the job spec: frozen, strict (a string is not a number), no key beyond those declared."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    # A section that may be given as a bare value: what that value stands for (`input: in.jsonl` is its path).
    shorthand_key: ClassVar[str | None] = None
    # Keys a user may write for one of this section's, by habit or from another tool: suggested, never taken.
    key_aliases: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _as_written(cls, data: Any, info: ValidationInfo) -> Any:
        spec = reading(info)
        if spec is None:
            return data
        data = cls.shorthand(data, spec)
        if not isinstance(data, Mapping):
            return data  # pydantic says it is not a mapping
        keys = spec_keys(cls)
        unknown = sorted((str(k) for k in data if k not in keys), key=str)
        if unknown:
            raise PydanticCustomError(
                "unknown_key",
                "unknown key {key}",
                {"key": unknown[0], "allowed": ", ".join(sorted(keys)), "suggest": cls.suggest(unknown[0])},
            )
        kept = {k: v for k, v in data.items() if v is not None or _keeps_null(cls, k)}
        for name in cls.model_fields:
            if name not in kept and marker(cls, name, Derived) is not None:
                kept[name] = LeftOut()
        return cls.as_written(kept, spec)

    @classmethod
    def suggest(cls, key: str) -> list[str]:
        """The keys an unknown one was likely meant to be (relative to this section): the same key one section
        down (`rpm` at the top is `limits.rpm`), else one spelt alike, or the key it is an alias of."""
        below = [
            f"{name}.{key}"
            for name in spec_keys(cls)
            if (inner := model_of(cls.model_fields[name].annotation)) is not None and key in spec_keys(inner)
        ]
        return below or closest(key, spec_keys(cls), cls.key_aliases)

    @classmethod
    def shorthand(cls, data: Any, spec: Reading) -> Any:
        """The section given as a bare value, as the mapping it stands for."""
        if cls.shorthand_key is not None and isinstance(data, str):
            return {cls.shorthand_key: data}
        return data

    @classmethod
    def as_written(cls, data: dict[str, Any], spec: Reading) -> dict[str, Any]:
        """The section's keys (nulls dropped, Derived ones left out as LeftOut) before their validation."""
        return data


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The section (a model) a field's annotation holds, if it holds one."""
    for member in members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def members(annotation: Any) -> list[Any]:
    """The types an annotation allows, None left out (`X | None` is X), Annotated's metadata stripped."""
    if typing.get_origin(annotation) is Annotated:
        return members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [m for a in typing.get_args(annotation) if a is not type(None) for m in members(a)]
    return [annotation]


def _text(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("expected", "a non-empty string")
    return value


def _share(value: float) -> float:
    if value > 1:
        fail(f"must be between 0 and 1, got {value}")
    return value


# The types of the spec's keys; the one-line error for each says what it takes (parse._expected).
Text = Annotated[str, Field(min_length=1), AfterValidator(_text)]
Positive = Annotated[float, Field(gt=0)]  # a number > 0 (an int is taken as a float)
NonNegative = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(ge=0, json_schema_extra={"maximum": 1}), AfterValidator(_share)]
Count = Annotated[int, Field(ge=1)]


def _keeps_null(cls: type[BaseModel], name: str) -> bool:
    field = cls.model_fields[name]
    expect = marker(cls, name, Expect)
    return field.annotation is bool or (expect is not None and expect.keep_null)


def either(extra: dict[str, Any], *alternatives: dict[str, Any]) -> None:
    """A field's JSON Schema that also takes a shorthand (`input: in.jsonl`): for `json_schema_extra`."""
    section = {
        k: extra.pop(k)
        for k in ("$ref", "anyOf", "type", "allOf", "items", "prefixItems", "minItems", "maxItems")
        if k in extra
    }
    extra["anyOf"] = [*alternatives, *section.pop("anyOf", [section] if section else [])]


def kind(value: Any) -> str:
    """What the user gave, for `..., got <kind>`."""
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
