"""`batchrun preview` and `batchrun show`: what rows become and what came back, for a person, sending nothing.

A record holds the answer, not the request; `show` rebuilds the request from the input as submit built it (the
fingerprint guarantees the input and mapping are the ones the run used).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import Any

import orjson

from ..engine.job import Prepared
from ..errors import SpecError
from ..records import body_of, count
from ..rows.request import BadRow, Request, RequestBuilder
from ..rows.sources import iter_rows
from ..rows.tokens import max_output_tokens
from ..spec.presets import ENDPOINT_URLS
from ..store.rundir import RESULTS, RunDir
from ..store.usage import tokens_of_which, usage_counts
from ..text.redaction import printable_lines
from ..text.words import plural

TEXT_KEYS = ("messages", "prompt", "input")
MAX_SHOWN = 4000  # characters of one text shown; the rest is counted, not printed


def first_requests(prepared: Prepared, n: int) -> list[Request | BadRow]:
    builder = prepared.builder
    return [_ready(builder, builder.build(raw)) for raw in islice(iter_rows(prepared.spec.input), n)]


def _ready(builder: RequestBuilder, built: Request | BadRow) -> Request | BadRow:
    """The request exactly as it is sent (local images read in)."""
    return builder.ready(built) if isinstance(built, Request) else built


def batch_line(prepared: Prepared, built: Request) -> dict[str, Any]:
    """The request as an OpenAI Batch API input line (what `preview --format jsonl` prints)."""
    url = "/v1" + ENDPOINT_URLS[prepared.spec.endpoint]
    return {"custom_id": built.custom_id, "method": "POST", "url": url, "body": orjson.loads(built.payload)}


def preview_lines(prepared: Prepared, built: Request | BadRow) -> list[str]:
    spec = prepared.spec
    if isinstance(built, BadRow):
        return printable_lines(
            [f"row {built.row}, id {built.custom_id}: cannot be sent: {built.message} [{built.code}]"]
        )
    path = ENDPOINT_URLS[spec.endpoint]
    url = spec.provider.base_url.rstrip("/") + path if spec.provider.base_url else f"{path} (built-in simulator)"
    head = f"row {built.row}, id {built.custom_id}: POST {url}"
    body = orjson.loads(built.payload)
    reserve = built.max_output - max_output_tokens(body)  # SiliconFlow's chain of thought, beyond max_tokens
    thought = f", {reserve:,} of it held for the chain of thought max_tokens does not cap" if reserve > 0 else ""
    return printable_lines(
        [
            head + f"  (~{built.prompt_tokens:,} prompt tokens, max {built.max_output:,} out{thought})",
            *_body_lines(body),
        ]
    )


def _body_lines(body: Mapping[str, Any]) -> list[str]:
    lines = [f"  model: {body.get('model')}"]
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, Mapping):
                lines += _text_lines(str(m.get("role")), m.get("content"), m)
    for key in ("prompt", "input"):
        if key in body:
            lines += _text_lines(key, body[key], {})
    params = {k: v for k, v in body.items() if k not in (*TEXT_KEYS, "model")}
    if params:
        lines.append(f"  params: {orjson.dumps(params).decode()}")
    return lines


def _text_lines(label: str, content: Any, message: Mapping[str, Any]) -> list[str]:
    if isinstance(content, list) and all(isinstance(p, Mapping) for p in content):
        content = "\n".join(_part(p) for p in content)
    if not isinstance(content, str):
        content = orjson.dumps(content).decode() if content is not None else ""
    extra = {k: v for k, v in message.items() if k not in ("role", "content")}
    if extra:
        content += ("\n" if content else "") + orjson.dumps(extra).decode()
    return [f"  {label}:"] + [f"    {line}" for line in _split(_clip(content))]


def _part(part: Mapping[str, Any]) -> str:
    """A content part as a line: its text, or an image as its kind and size (a data URL's base64 is not printed)."""
    if part.get("type") != "image_url":
        return str(part.get("text", f"[{part.get('type')}]"))
    image = part.get("image_url")
    url = str(image.get("url", "")) if isinstance(image, Mapping) else str(image)
    detail = image.get("detail") if isinstance(image, Mapping) else None
    if not url.startswith(("http://", "https://")):
        head, _, data = url.rpartition(",")
        url = f"{head or 'base64'},… ({len(data) * 3 // 4 - data[-2:].count('='):,} bytes)"
    return f"[image {url}" + (f", detail {detail}]" if detail else "]")


def _image_lines(built: Request, rec: Mapping[str, Any] | None) -> list[str]:
    """The request's images as the record keeps them; a warning for one whose bytes differ from the run's."""
    lines = ["images:"]
    kept = {i.get("ref"): i.get("sha256") for i in rec.get("images") or () if isinstance(i, Mapping)} if rec else {}
    for image in built.images:
        size = f"{image['bytes']:,} bytes, sha256 {image['sha256'][:12]}…" if "sha256" in image else "fetched by URL"
        lines.append(f"  {image['ref']} ({size})")
        was = kept.get(image["ref"])
        if was and "sha256" in image and was != image["sha256"]:
            lines.append("    warning: this image changed after the run: the request above is not the one sent")
    return lines


def _clip(text: str) -> str:
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + f"… ({len(text) - MAX_SHOWN:,} more characters)"


def _split(text: str) -> list[str]:
    """Lines at newlines only (a CRLF's CR goes with it): the other breaks `splitlines` knows are controls, shown
    escaped by `printable_lines`, not obeyed."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if len(lines) > 1 and not lines[-1] else lines


# --- show ----------------------------------------------------------------------------------------------------


def find_record(run: RunDir, custom_id: str) -> tuple[str, dict[str, Any]] | None:
    """The record that counts of the row with this id, and the file it is in; the id is looked for as bytes
    first, so a million-row run is read without parsing every line it need not."""
    needle = b'"custom_id":' + orjson.dumps(custom_id) + b","
    for entry in run.entries():
        if needle in entry.line:
            rec = entry.parsed()
            if rec.get("custom_id") == custom_id:
                return entry.name, rec
    return None


def find_request(prepared: Prepared, custom_id: str, row: int | None) -> Request | BadRow | None:
    """The row's request rebuilt from the input: by its row number when a record gave it, else by its id."""
    build = prepared.builder.build
    skip = (lambda r: r != row) if row is not None else None
    for raw in iter_rows(prepared.spec.input, skip=skip):
        built = build(raw)
        if built.custom_id == custom_id:
            return _ready(prepared.builder, built)
    return None


def show_lines(run: RunDir, prepared: Prepared, custom_id: str) -> list[str]:
    found = find_record(run, custom_id)
    rec = found[1] if found else None
    row = rec.get("row") if rec else None
    built = find_request(prepared, custom_id, row if isinstance(row, int) else None)
    if rec is None and built is None:
        raise SpecError(
            f"{run.path}: no row with id {custom_id!r} in the input (ids are each row's custom_id, id or "
            "input.id_field, else its row number)"
        )
    lines = [_headline(custom_id, found)]
    ran = (prepared.held or prepared.fingerprint)["input"]  # a grown input still holds the rows the run read
    if run.manifest.get("fingerprint", {}).get("input") not in (None, ran):
        lines.append("warning: the input file changed after this run: the request below may not be the one sent")
    if isinstance(built, Request):
        lines.append("request (rebuilt from the input):")
        lines += _body_lines(orjson.loads(built.payload))
        if built.images:
            lines += _image_lines(built, rec)
    elif isinstance(built, BadRow):
        lines.append(f"request: none, the row cannot be sent: {built.message}")
    if rec is not None:
        lines += _answer_lines(rec)
    return printable_lines(lines)


def _headline(custom_id: str, found: tuple[str, dict[str, Any]] | None) -> str:
    if found is None:
        return f"id {custom_id}: pending (no final record yet)"
    name, rec = found
    what = "succeeded" if name == RESULTS else "failed"
    attempts, limited = count(rec.get("attempts")), count(rec.get("rate_limited"))
    took = f", {rec['latency_s']:.2f} s" if isinstance(rec.get("latency_s"), (int, float)) else ""
    return (
        f"row {rec.get('row')}, id {custom_id}: {what} after {attempts} attempt{'s' if attempts != 1 else ''}"
        f" ({limited} answered 429){took}, model {rec.get('model')}, completed {rec.get('completed_at')}"
    )


def _answer_lines(rec: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    err = rec.get("error")
    if isinstance(err, Mapping):
        status = f", HTTP {err['status']}" if err.get("status") else ""
        lines.append(f"error: {err.get('code')}{status}: {err.get('message')}")
    body = body_of(rec)
    if body is None:
        return lines
    given = body.get("usage")
    usage: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
    counts = usage_counts(usage)
    tokens = f"{counts.prompt:,} prompt + {counts.completion:,} completion" + tokens_of_which(
        counts.reasoning, counts.cached_prompt
    )
    for i, choice in enumerate(_choices(body)):
        label = "answer" + (f" {i + 1}" if i else "")
        lines.append(f"{label} (finish_reason {choice.get('finish_reason')}; {tokens} tokens):")
        message = choice.get("message")
        said: Mapping[str, Any] = message if isinstance(message, Mapping) else {}
        for key in ("reasoning_content", "content", "text", "tool_calls"):
            value = said.get(key, choice.get(key) if key == "text" else None)
            if value:
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                prefix = "" if key in ("content", "text") else key + ": "
                lines += [f"  {prefix}{line}" for line in _split(_clip(text))]
    data = body.get("data")
    if isinstance(data, list):
        sizes = [len(d.get("embedding") or ()) for d in data if isinstance(d, Mapping)]
        lines.append(
            f"answer: {plural(len(sizes), 'embedding')} of {', '.join(map(str, sizes))} numbers; {tokens} tokens"
        )
    if not lines or (err and not _choices(body) and not isinstance(data, list)):
        lines.append("provider's answer:")
        lines += [f"  {line}" for line in _split(_clip(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode()))]
    return lines


def _choices(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    choices = body.get("choices")
    return [c for c in choices if isinstance(c, Mapping)] if isinstance(choices, list) else []
