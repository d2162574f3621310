"""The record contract: one final record per row, the one shape every writer and reader of the run directory shares.

A record is one line of `results.jsonl` (the row succeeded) or `failures.jsonl` (it failed for good). Each line is an
OpenAI Batch API output line, so other tools read it as they read a batch output file:

    {"row": 17, "id": "batch_req_17", "custom_id": "doc-17",
     "response": {"status_code": 200, "request_id": "req_…", "body": {…}} | null,
     "error": {"code": "…", "message": "…", "status": 500 | null, "attempts": 3} | null,
     "model": "…", "attempts": 3, "rate_limited": 1, "latency_s": 0.41, "completed_at": "2026-…Z", …}

- `custom_id` is always a string (the row's own id, or its row number when it has none); `response` is null when no
  HTTP answer came back, and its `body` is always a JSON object (a body that was not one is kept as `{"text": …}`);
  `request_id` is the provider's, or one batchrun made up when the provider sent none.
- batchrun's own keys beside OpenAI's: `row` (the 1-based line of a JSONL input, or row of a Parquet one), `model`,
  `attempts`, `rate_limited` (attempts answered 429), `latency_s`, `completed_at`; and only where they apply:
  `batch` (rows that shared one embeddings request), `shared_request` (the failed shared request a row was split
  from), `retried_usage` (tokens billed for answers that were retried: usage counts them), `task_id`, `polls` and
  `resubmitted` (async tasks); with structured output, `output` (the answer's JSON, valid against the schema)
  and `repairs` (the answers before it that did not fit, and their usage). `error` adds `status` and `attempts`
  to OpenAI's pair, and `path` for `invalid_output`; `api_key_env` with a key pool (the variable, never the
  key); `cached: true` when the answer came from the response cache (its usage is what it cost when first
  asked; usage.json does not count it again); `images` (input.images: each image's `{"ref", "bytes", "sha256"}`,
  never its base64), written after `completed_at`.

The bytes, which readers of a million-row run rely on without parsing whole lines:
- every line starts with `{"row":N,`: resuming reads row numbers from that prefix alone;
- `"latency_s":` and `"completed_at":"` are top-level keys written after `response` and `output`, so the last
  occurrence in the line is batchrun's own (a body's or an output's copy would come earlier; inside a JSON string
  it is escaped); so is `"cached":true`, after `completed_at` (reports leave cached rows out of timings by it);
- one record is one line, written with one write: a line without its newline is torn and cut off on resume.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any, TypedDict, cast

import orjson

ROW_PREFIX = b'{"row":'
NO_OUTPUT: Any = object()  # a record without structured output (`output` may be any JSON, null included)
LATENCY_KEY = b'"latency_s":'
COMPLETED_KEY = b'"completed_at":"'
CACHED_KEY = b'"cached":true'
IMAGES_KEY = b'"images":[{"ref":'  # input.images: written after completed_at, one {"ref": ...} per image
IMAGE_REF = b'{"ref":'


class Response(TypedDict):
    status_code: int
    request_id: str
    body: dict[str, Any]


class _RecordErrorKeys(TypedDict):
    code: str
    message: str
    status: int | None
    attempts: int


class RecordError(_RecordErrorKeys, total=False):
    path: str  # invalid_output: where in the answer the first schema error is (`$.score`)


class _RecordKeys(TypedDict):
    row: int
    id: str
    custom_id: str
    model: str
    response: Response | None
    error: RecordError | None
    attempts: int
    rate_limited: int
    completed_at: str


class Record(_RecordKeys, total=False):
    latency_s: float
    batch: dict[str, int]  # {"index", "size"}: this row's place in a shared embeddings request
    shared_request: dict[str, int]  # {"attempts", "rate_limited"} of the failed shared request it was split from
    retried_usage: dict[str, int]  # tokens the provider billed for this row's answers that were retried
    task_id: str | None
    batch_id: str  # the batch lane: the provider's batch this row's answer came from
    batch_chat: bool  # Ark's batch chat answered it, at the batch price
    polls: int
    resubmitted: list[dict[str, Any]]  # async tasks given up on: {"task_id", "reason", "message", "polls"}
    api_key_env: str  # a key pool: the variable holding the key that answered (never the key itself)
    cached: bool  # the answer came from the response cache (asked in an earlier run): it cost nothing here
    output: Any  # structured output: the answer's JSON, parsed and valid against the job's schema
    images: list[dict[str, Any]]  # input.images: each image's {"ref", "bytes", "sha256"} (never its base64)
    repairs: list[dict[str, Any]]  # structured output: answers that did not fit, each {"kind", "path", "message",
    # "usage", "batch_id"?}; billed, so usage counts them


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_epoch(iso: str) -> float:
    """Epoch seconds of a time `now_iso` wrote (ValueError if it is not one)."""
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# --- writing -----------------------------------------------------------------------------------------------


def response(status: int, request_id: str | None, body: Any) -> Response:
    """The `response` of an HTTP answer, in the Batch output shape whatever the provider sent."""
    return {
        "status_code": status,
        "request_id": request_id or f"batchrun-{uuid.uuid4().hex[:24]}",
        "body": body_object(body),
    }


def body_object(body: Any) -> dict[str, Any]:
    """A body as a JSON object: an HTML error page or any other non-object is kept as `{"text": …}`."""
    if isinstance(body, dict):
        return body
    if isinstance(body, bytes):
        return {"text": body.decode("utf-8", "replace")}
    if isinstance(body, str):
        return {"text": body}
    return {} if body is None else {"text": orjson.dumps(body).decode()}


def error(code: str, message: str, status: int | None, attempts: int) -> RecordError:
    return {"code": code, "message": message, "status": status, "attempts": attempts}


def record(
    row: int,
    custom_id: str,
    model: str,
    resp: Response | None,
    err: RecordError | None,
    *,
    attempts: int,
    rate_limited: int = 0,
    latency_s: float | None = None,
    output: Any = NO_OUTPUT,
) -> Record:
    """A final record, keys in the order the byte-level contract needs (row first; timings after response and
    output, whose keys are the model's)."""
    keys: dict[str, Any] = {
        "row": row,
        "id": f"batch_req_{row}",
        "custom_id": custom_id,
        "model": model,
        "response": resp,
        "error": err,
    }
    if output is not NO_OUTPUT:
        keys["output"] = output
    keys.update(attempts=attempts, rate_limited=rate_limited, completed_at=now_iso())
    out = cast(Record, keys)
    if latency_s is not None:
        out["latency_s"] = latency_s
    return out


def encode(rec: Record | Mapping[str, Any]) -> bytes:
    """One record as its line."""
    line = orjson.dumps(rec) + b"\n"
    assert line.startswith(ROW_PREFIX), "a record starts with its row"
    return line


# --- reading -----------------------------------------------------------------------------------------------


def record_row(line: bytes) -> int | None:
    """The row number of one complete record line, or None when the line is not a record."""
    if line.startswith(ROW_PREFIX):
        end = line.find(b",", len(ROW_PREFIX))
        if end > 0:
            with contextlib.suppress(ValueError):
                return int(line[len(ROW_PREFIX) : end])
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    row = obj.get("row") if isinstance(obj, dict) else None
    return row if isinstance(row, int) and not isinstance(row, bool) else None


def line_timing(line: bytes) -> tuple[float | None, float | None]:
    """(latency_s, completed_at as epoch seconds) of a record line, found by key near its end (no full parse)."""
    latency = completed = None
    at = line.rfind(LATENCY_KEY)
    if at >= 0:
        end = at + len(LATENCY_KEY)
        stop = line.find(b",", end)
        with contextlib.suppress(ValueError):
            latency = float(line[end : stop if stop > 0 else -2])
    at = line.rfind(COMPLETED_KEY)
    if at >= 0:
        start = at + len(COMPLETED_KEY)
        with contextlib.suppress(ValueError):
            completed = iso_epoch(line[start : line.find(b'"', start)].decode())
    return latency, completed


def line_cached(line: bytes) -> bool:
    """Whether a record line's answer came from the response cache. `cached` is written after `completed_at`, so only
    the line's tail is searched (no parse); a line with the bytes there is parsed to be sure (they might be a key of
    a provider's usage in `repairs`)."""
    tail = line.rfind(COMPLETED_KEY)
    if tail < 0 or line.find(CACHED_KEY, tail) < 0:
        return False
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and obj.get("cached") is True


def line_images(line: bytes) -> int:
    """How many images a record line's row carried (0: none), found by key near its end (no full parse): a path
    inside a JSON string has its quotes escaped, so only batchrun's own key matches."""
    at = line.rfind(IMAGES_KEY)
    if at < 0 or at < line.rfind(COMPLETED_KEY):
        return 0
    return line.count(IMAGE_REF, at)


def error_code(rec: Mapping[str, Any]) -> str | None:
    """The failure's code (None for a success)."""
    err = rec.get("error")
    if not err:
        return None
    return str(err.get("code") if isinstance(err, Mapping) else err)


def body_of(rec: Mapping[str, Any]) -> Mapping[str, Any] | None:
    resp = rec.get("response")
    body = resp.get("body") if isinstance(resp, Mapping) else None
    return body if isinstance(body, Mapping) else None


def count(value: Any) -> int:
    """A counter field as an int (0 when absent or not a whole number)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
