"""A strict reader of one mapping of the job spec: every error names the full key, unknown keys are refused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from ..errors import SpecError


class Section:
    """Reads one mapping of the spec, naming the full key in every error, and rejects unknown keys."""

    def __init__(self, where: str, data: Any, allowed: set[str], source: str) -> None:
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: {where or 'the spec'} must be a mapping, got {kind(data)}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            key = f"{where}.{unknown[0]}" if where else str(unknown[0])
            raise SpecError(f"{source}: unknown key '{key}' (allowed here: {', '.join(sorted(allowed))})")
        self.where, self.data, self.source = where, data, source

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def fail(self, name: str, what: str) -> SpecError:
        return SpecError(f"{self.source}: {self.key(name)} {what}")

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise self.fail(name, "is required")
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.fail(name, f"must be a non-empty string, got {kind(value)}")
        return value

    def number(
        self, name: str, default: float | None = None, *, minimum: float = 0.0, inclusive: bool = False
    ) -> float | None:
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, f"must be a number, got {kind(value)}")
        if value < minimum or (value == minimum and not inclusive):
            bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
            raise self.fail(name, f"must be {bound}, got {value}")
        return float(value)

    def integer(self, name: str, default: int | None = None, *, minimum: int = 1) -> int | None:
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"must be a whole number, got {kind(value)}")
        if value < minimum:
            raise self.fail(name, f"must be >= {minimum}, got {value}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {kind(value)}")
        return value

    def mapping(self, name: str) -> Mapping[str, Any] | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.fail(name, f"must be a mapping, got {kind(value)}")
        return value


def kind(value: Any) -> str:
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


def names(sec: Section, name: str) -> tuple[str, ...] | None:
    value = sec.data.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise sec.fail(name, f"must be a list of names, got {kind(value)}")
    return tuple(value)


def seconds_range(sec: Section, name: str, default: tuple[float, float]) -> tuple[float, float]:
    """A number of seconds, or [low, high] for a uniform draw between them."""
    value = sec.data.get(name)
    if value is None:
        return default
    pair = value if isinstance(value, list) else [value, value]
    if (
        len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in pair)
        or pair[0] > pair[1]
    ):
        raise sec.fail(name, f"must be seconds (a number >= 0) or [low, high], got {kind(value)}")
    return float(pair[0]), float(pair[1])


C = TypeVar("C", bound=str)


def choice(sec: Section, name: str, choices: tuple[C, ...], default: C) -> C:
    value = sec.text(name, default)
    for choice in choices:
        if value == choice:
            return choice
    raise sec.fail(name, f"must be one of {', '.join(choices)}, got {value!r}")
