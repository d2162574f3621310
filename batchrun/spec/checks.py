"""What the spec's keys check beyond their types, and what a key left out is derived from.

Each function is a validator of one field of `model`: given the value as written, or LeftOut when the key was left
out of a Derived field. They act only while a spec is read (`reading(info)`); a record built in code is taken as
it is. Their errors say what is wrong after the key's name (`fail`) or as a whole line (`fail_line`).
"""

from __future__ import annotations

import codecs
import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationInfo
from pydantic_core import PydanticCustomError

from ..errors import SpecError
from ..text.words import suggestion
from . import lanechecks
from .base import LeftOut, Reading, either, fail, fail_at, fail_line, kind, reading
from .presets import PRESETS, unknown_preset
from .pricing import parse_prices, price_schema
from .proxies import proxy_problem, without_credentials

PROVIDER_NAMES = list(PRESETS)
INPUT_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
RESERVED_PARAMS = {"model": "model", "messages": "input.messages_field / input.prompt_field / input.template"}
LITERAL_BRACES = "to put a literal brace in the text (JSON, say) write it twice: {{ and }}"


def text(value: Any) -> str:
    """A non-empty string, or the key's usual error."""
    if not isinstance(value, str) or not value.strip():
        raise PydanticCustomError("expected", "a non-empty string", {"given": value})
    return value


# --- the job ---------------------------------------------------------------------------------------------------


def job_as_written(data: dict[str, Any], spec: Reading) -> dict[str, Any]:
    """The job's defaults that depend on the file: its name, its run directory, and the limits and retries always
    read (the preset and the mode fill in what they leave out)."""
    if spec.rows_given and "input" not in data:
        data["input"] = {}
    if isinstance(data["name"], LeftOut):
        data["name"] = spec.spec_path.stem
    if isinstance(data["output_dir"], LeftOut):
        # Beside the spec, like every other relative path: the same spec run from another folder resumes its run.
        data["output_dir"] = f"runs/{data['name'] if isinstance(data['name'], str) else spec.spec_path.stem}"
    data.setdefault("limits", {})
    data.setdefault("retry", {})  # its timeout depends on the mode (lanechecks.timeout)
    return data


def spec_path(value: Any, info: ValidationInfo) -> Any:
    spec = reading(info)
    return spec.spec_path if spec is not None and isinstance(value, LeftOut) else value


def job_name(name: str, info: ValidationInfo) -> str:
    if reading(info) is not None and ("/" in name or "\\" in name or name in {".", ".."}):
        fail(f"must not contain a path separator, got {name!r}")
    return name


def params(value: Mapping[str, Any], info: ValidationInfo) -> Mapping[str, Any]:
    spec = reading(info)
    if spec is not None:
        for key, use in RESERVED_PARAMS.items():
            if key in value:
                fail_line(f"params.{key} is not allowed here: set it with {use}")
        spec.params = value
    return value


def output_dir(value: Any, info: ValidationInfo) -> Any:
    """Relative to the spec's folder, resolved."""
    spec = reading(info)
    if spec is None:
        return value
    return (spec.base / text(value)).resolve()


def endpoint(value: str, info: ValidationInfo) -> str:
    spec = reading(info)
    if spec is not None:
        spec.endpoint = value  # type: ignore[assignment]
    return value


def provider_fits(provider: Any, info: ValidationInfo) -> Any:
    """The endpoint is one the provider (and its Batch API, in batch mode) offers; async is chat only."""
    spec = reading(info)
    endpoint = info.data.get("endpoint")
    if spec is None or endpoint is None:
        return provider
    preset = PRESETS[provider.name]
    if endpoint not in preset.endpoints:
        fail_line(f"endpoint {endpoint!r} is not offered by {preset.title} (it offers: {', '.join(preset.endpoints)})")
    if provider.mode == "batch":
        api = preset.batch
        assert api is not None  # "batch" is among a preset's modes only when it has a Batch API
        if endpoint not in api.endpoints:
            fail_line(
                f"endpoint {endpoint!r} is not offered by {preset.title}'s Batch API (it offers: "
                f"{', '.join(api.endpoints)})"
            )
    elif provider.mode != "sync" and endpoint == "embeddings":
        fail_line(f"provider.mode {provider.mode!r} does not apply to embeddings: leave it as sync")
    if provider.mode == "async" and endpoint != "chat":
        fail_line("provider.mode async submits chat completions only: use endpoint: chat")
    lanechecks.endpoint_fits(provider.mode, endpoint)
    return provider


def prices(value: Any, info: ValidationInfo) -> Any:
    """The spec's `pricing:`, read as a `--prices` file is (its errors name `pricing.<model>.<key>`)."""
    spec = reading(info)
    if spec is None:
        return value
    if not value:
        return {}
    try:
        return parse_prices(value, spec.source, "pricing.")
    except SpecError as exc:
        fail_line(str(exc).removeprefix(f"{spec.source}: "))


def scale(value: Any, info: ValidationInfo) -> Any:
    """`scale: true` is a local Ray, `scale: false` none."""
    if reading(info) is None:
        return value
    return {} if value is True else None if value is False else value


def ray_address(value: Any, info: ValidationInfo) -> Any:
    """Any value, as text (`ray: true` is local)."""
    if reading(info) is None:
        return value
    return "local" if value is True else str(value)


def cache_path(value: Any, info: ValidationInfo) -> Any:
    spec = reading(info)
    if spec is None:
        return value
    path = Path(os.path.expanduser(text(value)))
    return path if path.is_absolute() else spec.base / path


# --- input -----------------------------------------------------------------------------------------------------


class _Format:
    """input.format as written, with the path as written: the suffix it may be derived from, the file to find."""

    def __init__(self, given: Any, path: Any) -> None:
        self.given, self.path = given, path


def input_as_written(data: dict[str, Any], spec: Reading) -> dict[str, Any]:
    if spec.rows_given:
        if data.get("path") is not None:
            fail_line("input.path is not used here: the rows are the dataset's")
        data = {**data, "path": os.devnull, "format": "jsonl"}
    chosen = [k for k in ("messages_field", "prompt_field", "template") if data.get(k) is not None]
    if len(chosen) > 1:  # said once the path and format are judged, as template is read
        data["template"] = _Both(chosen)
    if "path" in data:
        data["format"] = _Format(data["format"], data["path"])
    return data


def input_path(value: Any, info: ValidationInfo) -> Any:
    spec = reading(info)
    return value if spec is None else (spec.base / text(value)).resolve()


def input_format(value: Any, info: ValidationInfo) -> Any:
    """The format given, or the path's suffix's; then the file must be there (unless the rows come from elsewhere)."""
    spec = reading(info)
    if spec is None or not isinstance(value, _Format):
        return value
    path = info.data.get("path")
    if path is None:
        return "jsonl"  # the path's own error is the one reported
    if isinstance(value.given, LeftOut):
        fmt = INPUT_FORMATS.get(path.suffix.lower())
        if fmt is None:
            fail_line(f"input.path must end in .jsonl, .parquet or .csv (or set input.format), got {value.path!r}")
    else:
        fmt = text(value.given)
        if fmt not in {"jsonl", "parquet", "csv"}:
            fail(f"must be 'jsonl', 'parquet' or 'csv', got {fmt!r}{suggestion(fmt, ('jsonl', 'parquet', 'csv'))}")
    if not spec.rows_given and not path.is_file():
        raise PydanticCustomError(
            "input_error", "{line}", {"line": f"input.path: no such file {value.path!r} (looked for {path})"}
        )
    return fmt


def input_encoding(value: str, info: ValidationInfo) -> str:
    """A codec Python knows; JSONL is read line by line in bytes, so its codec must write a newline as one byte."""
    if reading(info) is None:
        return value
    try:
        name = codecs.lookup(value).name
    except LookupError:
        fail(f"must be a text encoding such as utf-8, gbk, gb18030 or utf-16, got {value!r}")
    fmt = info.data.get("format")
    if fmt == "parquet" and name != "utf-8":
        fail(f"does not apply to a Parquet input (its text is always UTF-8), got {value!r}: leave it out")
    if fmt == "jsonl" and name not in ("utf-8", "utf-8-sig") and "\n".encode(name) != b"\n":
        fail(f"{value!r} cannot be read as JSONL line by line: convert the file (iconv -f {value} -t utf-8)")
    return value


def template_fields(template: str) -> tuple[str, ...]:
    """Top-level row fields a str.format template names, in order, without repeats."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{exc}; {LITERAL_BRACES}") from None
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        top = name.split(".", 1)[0].split("[", 1)[0]
        if not top.strip() or any(c in top for c in "\"' \t\n"):
            if top.strip():
                field = " ".join(f"{{{name}{':' + spec if spec else ''}}}".split())
                raise ValueError(f"{field[:40]} is not a field name; {LITERAL_BRACES}")
            raise ValueError("positional fields such as {} are not allowed: name a field, e.g. {title}")
        if top not in names:
            names.append(top)
    return tuple(names)


class _Both:
    """More than one way to build the messages was given (input.template stands for them)."""

    def __init__(self, chosen: list[str]) -> None:
        self.chosen = chosen


def one_way(value: Any) -> Any:
    if isinstance(value, _Both):
        first, second = value.chosen[:2]
        fail_line(f"input.{first} and input.{second} both given: choose one way to build the messages")
    return value


def template(value: str | None, info: ValidationInfo) -> str | None:
    if value is not None and reading(info) is not None:
        try:
            template_fields(value)
        except ValueError as exc:
            fail(f"is not a valid template: {exc}")
    return value


# --- provider --------------------------------------------------------------------------------------------------


def provider_name(name: str, info: ValidationInfo) -> str:
    spec = reading(info)
    if spec is not None:
        preset = PRESETS.get(name)
        if preset is None:
            fail(unknown_preset(name))
        spec.preset = preset
    return name


def key_envs(value: Any, info: ValidationInfo) -> Any:
    """`api_key_env`: one variable's name, or a list of them (a key pool); the record holds the first."""
    spec = reading(info)
    if spec is None:
        return value
    if isinstance(value, LeftOut):
        return spec.preset.api_key_env if spec.preset is not None else ""
    names = value if isinstance(value, list) else [value]
    if not names:
        fail("is an empty list: name at least one environment variable")
    for name in names:
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            fail(f"must name an environment variable, or a list of them (keys never go in the spec), got {name!r}")
    if len(set(names)) < len(names):
        fail("names a variable twice")
    return names[0]


def key_pool(value: Any, info: ValidationInfo) -> Any:
    """Every variable of a key pool (api_key_env given as a list of two or more); () for one key."""
    if reading(info) is None:
        return value
    if "api_key_env" not in info.data or not isinstance(value, list) or len(value) < 2:
        return ()
    return tuple(value)


def simulate(value: Any, info: ValidationInfo) -> Any:
    """Only the simulated provider has settings; one without a base URL is started in-process with the defaults."""
    spec = reading(info)
    if spec is None:
        return value
    name = info.data.get("name")
    if isinstance(value, LeftOut):
        return {} if name == "simulated" and not info.data.get("base_url") else None
    if isinstance(value, Mapping) and name != "simulated":
        fail("only applies to provider.name: simulated")
    return value


def mode(value: str, info: ValidationInfo) -> str:
    spec = reading(info)
    if spec is None:
        return value
    if value == "batch" and len(info.data.get("key_pool", ())) > 1:
        fail_line(
            "provider.api_key_env is a key pool, which the online and async lanes use: a batch job's files and "
            "batches live in one account, so give it one variable"
        )
    preset = spec.preset
    if preset is not None and value not in preset.modes:
        fail(f"{value!r} is not offered by {preset.title} (it offers: {', '.join(preset.modes)})")
    spec.mode = value
    return value


def auth(value: str, info: ValidationInfo) -> str:
    preset = spec.preset if (spec := reading(info)) is not None else None
    if preset is not None and value not in preset.auths:
        fail(f"{value!r} is not offered by {preset.title} (it offers: {', '.join(preset.auths)})")
    return value


def proxy(value: str | None, info: ValidationInfo) -> str | None:
    if value is None or reading(info) is None:
        return value
    problem = proxy_problem(value)  # what the transport could not use: said now, not by every row
    if problem is not None:
        fail(
            f"must be an http:// or https:// proxy URL such as http://proxy:3128 ({problem}), got "
            f"{without_credentials(value)!r}"
        )
    parts = urlsplit(value)
    if parts.username or parts.password:
        fail(
            "holds credentials, which never go in the job spec: set HTTPS_PROXY=http://user:pass@host:port "
            "in the environment instead (and leave provider.proxy out)"
        )
    return value


def ca_bundle(value: Any, info: ValidationInfo) -> Any:
    spec = reading(info)
    if spec is None:
        return value
    given = text(value)
    path = Path(os.path.expanduser(given))
    path = path if path.is_absolute() else spec.base / path
    if not path.is_file():
        fail(f"names no such file {given!r} (looked for {path})")
    return path


def key_required(value: Any, info: ValidationInfo) -> Any:
    spec = reading(info)
    if spec is None:
        return value
    return spec.preset.key_required if spec.preset is not None else True


# --- limits and batch ------------------------------------------------------------------------------------------


def tpm_accounting(value: Any, info: ValidationInfo) -> Any:
    spec = reading(info)
    if spec is None or not isinstance(value, LeftOut):
        return value
    return spec.preset.tpm_accounting if spec.preset is not None else "auto"


def batch_size(value: Any, info: ValidationInfo) -> Any:
    """Inputs per request: embeddings only (then the spec's, or else the preset's); 1 otherwise."""
    spec = reading(info)
    if spec is None:
        return value
    if spec.endpoint != "embeddings":
        return 1
    if isinstance(value, LeftOut):
        return spec.preset.embedding_batch if spec.preset is not None else 1
    return value


def budget(value: Any, info: ValidationInfo) -> Any:
    """`max_cost: {CNY: 50}`: a budget per currency, each > 0."""
    spec = reading(info)
    if spec is None:
        return value
    if not isinstance(value, Mapping):
        raise PydanticCustomError("expected", "a mapping")
    out = {}
    for currency, amount in value.items():
        if not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha() and currency.isupper()):
            fail(f"takes currencies such as CNY or USD as keys, got {currency!r}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            fail_at(currency, f"must be a number, got {kind(amount)}")
        if amount <= 0:
            fail_at(currency, f"must be > 0, got {amount}")
        out[currency] = float(amount)
    if not out:
        fail("is empty: give a budget per currency, e.g. {CNY: 50}")
    return out


def line_url(value: str | None, info: ValidationInfo) -> str | None:
    if value is not None and reading(info) is not None and not value.startswith("/"):
        fail(f"must be a path such as /v1/chat/ds-test, got {value!r}")
    return value


def max_poll(value: Any, info: ValidationInfo) -> Any:
    """At least poll_s."""
    if reading(info) is None:
        return value
    value = 300.0 if isinstance(value, LeftOut) else value
    poll = info.data.get("poll_s")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and poll is not None:
        return max(poll, float(value))
    return value


# --- the schema's shorthands -----------------------------------------------------------------------------------


def or_string(extra: dict[str, Any]) -> None:
    either(extra, {"type": "string", "minLength": 1})


def or_preset(extra: dict[str, Any]) -> None:
    either(extra, {"enum": PROVIDER_NAMES})


def or_bool(extra: dict[str, Any]) -> None:
    either(extra, {"type": "boolean"})


def or_cache_words(extra: dict[str, Any]) -> None:
    either(extra, {"type": "boolean"}, {"enum": ["read_write", "read", "write", "off"]})


def string_or_names(extra: dict[str, Any]) -> None:
    name = {"type": "string", "pattern": "^[A-Za-z0-9_]+$"}
    extra.pop("type", None)
    extra["anyOf"] = [name, {"type": "array", "items": name, "minItems": 1, "uniqueItems": True}]


def budget_schema(extra: dict[str, Any]) -> None:
    extra.pop("anyOf", None)
    extra["type"] = "object"
    extra["propertyNames"] = {"pattern": "^[A-Z]{3}$"}
    extra["additionalProperties"] = {"type": "number", "exclusiveMinimum": 0}
    extra["minProperties"] = 1


def prices_schema(extra: dict[str, Any]) -> None:
    extra.clear()
    extra.update(type="object", additionalProperties=price_schema())
