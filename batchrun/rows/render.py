"""A row's fields as text in a prompt: what `input.template` puts where it names a field.

`str.format` alone would write a value as Python shows it (`None`, `nan`, `True`, `{'k': 'v'}`), which no user
meant to send: here text stays as it is, numbers as written (3, 0.5), booleans and lists and objects as JSON text
(non-ASCII kept), and a null (JSON null, a Parquet null, a NaN float) fails its row, naming the field, unless
`input.null: empty` says to send it as empty text.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..spec.model import template_fields

INVALID_INPUT = "invalid_input"
NULL_FIELD = "null_field"  # a field the template names is null in this row
JSON_OPTIONS = orjson.OPT_NON_STR_KEYS


class RowProblem(Exception):
    """Why a row cannot become a request, and the code its failure record gets."""

    def __init__(self, message: str, code: str = INVALID_INPUT) -> None:
        super().__init__(message)
        self.code = code


def is_null(value: Any) -> bool:
    """None, or a NaN float (how pandas, and so many Parquet files, write a missing number)."""
    return value is None or (isinstance(value, float) and value != value)


class Template:
    """A job's template, parsed once; `fill` is the per-row work (a dict of the fields it names, one format_map)."""

    def __init__(self, template: str, null: str = "fail") -> None:
        self.template = template
        self.names = template_fields(template)
        self.empty_null = null == "empty"
        # `{title}` or `{n:>5}` (most templates): fill a dict of the rendered fields; `{meta[title]}`, `{x!r}` or a
        # nested `{x:{width}}`: render each value as the formatter reaches it
        self.plain = all(
            name is None or (name in self.names and conversion is None and "{" not in (spec or ""))
            for _, name, spec, conversion in string.Formatter().parse(template)
        )
        self._formatter = _Formatter(self)

    def fill(self, data: Mapping[str, Any]) -> str:
        """The template filled from one row; RowProblem when it cannot be."""
        try:
            if not self.plain:
                return self._formatter.vformat(self.template, (), data)
            for name in self.names:
                if type(data[name]) is not str:
                    break
            else:  # every field text, as most rows are: the row itself fills the template
                return self.template.format_map(data)
            return self.template.format_map({name: self.text(name, data[name]) for name in self.names})
        except KeyError as exc:
            raise RowProblem(f"input.template names {{{exc.args[0]}}}, which this row lacks") from None
        except (IndexError, AttributeError, ValueError, TypeError) as exc:
            raise RowProblem(f"input.template cannot be filled from this row ({exc})") from None

    def text(self, name: str, value: Any) -> Any:
        """A field's value as it goes into the text (numbers stay numbers, so that `{n:03d}` still works)."""
        kind = type(value)
        if kind is str or kind is int:
            return value
        if is_null(value):
            if self.empty_null:
                return ""
            raise RowProblem(
                f"input.template names {{{name}}}, which is null in this row: fill it in, or set input.null: empty "
                "to send it as empty text",
                NULL_FIELD,
            )
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return value
        if isinstance(value, (Mapping, Sequence)) and not isinstance(value, (bytes, bytearray)):
            try:
                return orjson.dumps(value, default=str, option=JSON_OPTIONS).decode()
            except orjson.JSONEncodeError as exc:
                raise RowProblem(f"input.template: {{{name}}} cannot be written as JSON ({exc})") from None
        if isinstance(value, (bytes, bytearray)):  # a Parquet binary column
            return bytes(value).decode("utf-8", "replace")
        return value  # a date, a time, a decimal: their str() is what they say


class _Formatter(string.Formatter):
    """str.format's own machinery, each field's value rendered (Template.text) once it is looked up."""

    def __init__(self, template: Template) -> None:
        self.template = template

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        value, first = super().get_field(field_name, args, kwargs)
        return self.template.text(field_name, value), first
