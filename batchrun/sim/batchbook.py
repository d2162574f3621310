"""The simulated Batch API's files and batches, and how a batch moves through its statuses: no HTTP here (the
routes are in `batches`); the clock reading that moves a batch on is passed in.

A batch validates its file, runs for `batch_s` seconds with `request_counts` rising as it goes (each line answered
by `answer`, as the online endpoint answers it), and ends `completed`, or `failed`, `expired` or `cancelled`. A
cancelled batch is `cancelling` first (for as long as validation takes), as OpenAI's is: the lines it answered
before the cancel stay in its output file, and no more are answered.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .answers import DIRECTIVE, error_body, prompt_texts
from .filerules import RULES, FileRules, line_refusal, mixed_models

# (kind, body) -> (status, answer body): one request answered as the online endpoint would, and billed
Answer = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]
# DashScope's free test endpoint takes chat bodies: `batch-test-model` at /v1/chat/ds-test
KINDS = {
    "/chat/completions": "chat",
    "/chat/ds-test": "chat",
    "/completions": "completions",
    "/embeddings": "embeddings",
}
FINAL = ("completed", "failed", "expired", "cancelled")
# a file's requests, its validation errors, the share of lines after which it expires, whether tokens are refused
Reading = tuple[list[dict[str, Any]], list[dict[str, Any]], float | None, bool]


@dataclass
class SimFile:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def describe(self) -> dict[str, Any]:
        """The file as OpenAI's FileObject (and Zhipu's) shows it."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class SimBatch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None
    created_at: int
    started: float  # clock time the batch was created
    lines: list[dict[str, Any]]
    errors: list[dict[str, Any]] = field(default_factory=list)  # validation errors: {code, line, message}
    expire_share: float | None = None  # expires with this share of its lines done
    cancel_at: float | None = None  # clock time the cancel arrived: no line is answered after it
    cancelling_at: int | None = None
    in_progress_at: int | None = None  # when validation passed (never, for a batch cancelled while validating)
    status: str = "validating"
    done: int = 0  # lines answered so far (their answers are in output/errors)
    output: list[bytes] = field(default_factory=list)
    error_lines: list[bytes] = field(default_factory=list)
    failed_lines: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    finished_at: int | None = None
    auto_delete: bool = False  # Zhipu's auto_delete_input_file: the input file goes when the batch ends
    replace_model: str | None = None  # SiliconFlow's replace.model: every line is answered by this model


class BatchBook:
    """Every file and batch the simulator holds, for as long as it runs, and the counts the stats show."""

    def __init__(self, answer: Answer, batch_s: float, max_lines: int = 50_000, speaks: str = "openai") -> None:
        self.answer = answer
        self.rules: FileRules = RULES.get(speaks, FileRules())  # the file rules of the provider it speaks as
        self.batch_s, self.max_lines = batch_s, self.rules.max_lines or max_lines
        self.files: dict[str, SimFile] = {}
        self.batches: dict[str, SimBatch] = {}
        self._ids = itertools.count(1)
        self.uploads = self.creates = self.cancels = self.deletes = 0
        self.refusals: dict[str, int] = {}  # #sim:batch-tokens lines: batches refused for each so far
        self.batches_per_file: dict[str, int] = {}  # a client that lost track of its batch makes a second one

    def stats(self) -> dict[str, Any]:
        return {
            "files_uploaded": self.uploads,
            "files_deleted": self.deletes,
            "files_stored": len(self.files),
            "batches_created": self.creates,
            "batches_cancelled": self.cancels,
            "batch_lines_answered": sum(b.done for b in self.batches.values()),
            "files_with_two_batches": sum(1 for n in self.batches_per_file.values() if n > 1),
        }

    def _id(self, prefix: str) -> str:
        return f"{prefix}-sim{next(self._ids):06d}"

    def upload(self, filename: str, content: bytes) -> SimFile:
        self.uploads += 1
        sim = SimFile(self._id("file"), filename, "batch", content, int(time.time()))
        self.files[sim.id] = sim
        return sim

    def delete(self, file_id: str) -> SimFile | None:
        sim = self.files.pop(file_id, None)
        if sim is not None:
            self.deletes += 1
        return sim

    def create(self, source: SimFile, endpoint: str, body: dict[str, Any], reading: Reading, now: float) -> SimBatch:
        """A batch over `source`'s lines as `read` found them (refused as a whole for tokens if a line asks)."""
        lines, errors, expire, tokens = reading
        batch = SimBatch(
            self._id("batch"),
            source.id,
            endpoint,
            str(body.get("completion_window") or "24h"),
            body.get("metadata") if isinstance(body.get("metadata"), dict) else None,
            int(time.time()),
            now,
            lines,
            errors,
            expire,
        )
        batch.auto_delete = body.get("auto_delete_input_file") is True
        replace = body.get("replace")
        if isinstance(replace, dict) and isinstance(replace.get("model"), str):
            batch.replace_model = replace["model"]
        if tokens:
            batch.errors = [{"code": "token_limit_exceeded", "line": None, "message": "Enqueued token limit reached"}]
        self.creates += 1
        self.batches_per_file[source.id] = self.batches_per_file.get(source.id, 0) + 1
        self.batches[batch.id] = batch
        return batch

    def list_files(self, purpose: str | None, after: str | None, limit: int, order: str) -> tuple[list[SimFile], bool]:
        """`GET /files` as OpenAI pages it: oldest or newest first (`order`), those past the file `after`, at most
        `limit`; and whether more remain. Ids rise as files are made, so they order the files as their creation."""
        files = sorted(
            (f for f in self.files.values() if purpose is None or f.purpose == purpose),
            key=lambda f: f.id,
            reverse=order == "desc",
        )
        if after:
            files = [f for f in files if (f.id < after if order == "desc" else f.id > after)]
        return files[:limit], len(files) > limit

    def cancel(self, batch: SimBatch, now: float) -> None:
        """Cancel a batch still going: `cancelling` now, `cancelled` once the cancel has taken (`_advance`)."""
        self._advance(batch, now)
        if batch.status not in FINAL and batch.cancel_at is None:
            self.cancels += 1
            batch.cancel_at, batch.cancelling_at = now, int(time.time())
            batch.status = "cancelling"

    def held(self) -> int:
        """Batch-purpose files held now (Kimi refuses an upload past 1,000)."""
        return sum(1 for f in self.files.values() if f.purpose == "batch")

    def read(self, content: bytes, endpoint: str, replace: Any = None) -> Reading:
        """The file's requests, its validation errors, the share after which it expires, and whether its
        enqueued tokens are refused; by the rules of the provider the simulator speaks as (`replace`: the create
        call's `replace`, SiliconFlow's)."""
        lines: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        expire: float | None = None
        tokens = False
        for number, raw in enumerate(content.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                errors.append({"code": "invalid_json_line", "line": number, "message": "line is not valid JSON"})
                continue
            custom_id = line.get("custom_id") if isinstance(line, dict) else None
            problem = None
            if not isinstance(custom_id, str) or not custom_id:
                problem = ("missing_custom_id", "custom_id must be a non-empty string")
            elif custom_id in seen:
                problem = ("duplicate_custom_id", f"custom_id {custom_id!r} appears more than once")
            elif line.get("url") != endpoint:
                problem = ("mismatched_url", f"url {line.get('url')!r} is not the batch's endpoint {endpoint!r}")
            elif not isinstance(line.get("body"), dict):
                problem = ("missing_body", "body must be an object")
            else:
                problem = line_refusal(self.rules, raw, line["body"])
            text = orjson.dumps(line.get("body")).decode() if isinstance(line, dict) else ""
            directives = dict(DIRECTIVE.findall(text))
            if "batch-invalid" in directives:
                problem = ("invalid_request", "simulated invalid line (#sim:batch-invalid)")
            if problem is not None:
                errors.append({"code": problem[0], "line": number, "message": problem[1]})
                continue
            seen.add(str(custom_id))
            if directives.get("batch-expire"):
                expire = float(directives["batch-expire"])
            if "batch-tokens" in directives:
                seen_refusals = self.refusals.get(text, 0)
                if seen_refusals < int(float(directives["batch-tokens"] or 1)):
                    self.refusals[text] = seen_refusals + 1
                    tokens = True
            lines.append(line)
        if len(lines) + len(errors) > self.max_lines:
            errors.insert(0, {"code": "too_many_lines", "line": None, "message": f"at most {self.max_lines} lines"})
        if (mixed := mixed_models(self.rules, lines, replace)) is not None:
            errors.insert(0, {"code": "mixed_models", "line": None, "message": mixed})
        return lines, errors, expire, tokens

    def _validate_s(self) -> float:
        return min(0.2, self.batch_s / 10)

    def _advance(self, batch: SimBatch, now: float) -> None:
        """Move the batch on to where the clock says it is, answering the lines whose time has come."""
        if batch.status in FINAL:
            return
        validate_s = self._validate_s()
        cancelled = batch.cancel_at is not None
        validated = batch.started + validate_s <= (batch.cancel_at if batch.cancel_at is not None else now)
        if validated:
            if batch.errors:
                batch.status, batch.finished_at = "failed", int(time.time())
                return
            if batch.in_progress_at is None:
                batch.in_progress_at = int(time.time())
        elif not cancelled:
            return  # still validating
        share = done_share(batch.started, now, batch.cancel_at, validate_s, self.batch_s)
        if batch.expire_share is not None:
            share = min(share, batch.expire_share)
        target = min(len(batch.lines), math.floor(share * len(batch.lines) + 1e-9))
        for line in batch.lines[batch.done : target]:
            self._answer_line(batch, line)
        batch.done = max(batch.done, target)
        if batch.cancel_at is not None:
            # `cancelling` until validate_s after the cancel, and never on the reading the cancel was made at
            if now > batch.cancel_at and now - batch.cancel_at >= validate_s:
                self._finish(batch, "cancelled")
            else:
                batch.status = "cancelling"
            return
        batch.status = "in_progress"
        if batch.expire_share is not None and share >= batch.expire_share:
            self._finish(batch, "expired")
        elif batch.done >= len(batch.lines):
            self._finish(batch, "completed")

    def _answer_line(self, batch: SimBatch, line: dict[str, Any]) -> None:
        kind = next(k for tail, k in KINDS.items() if batch.endpoint.endswith(tail))
        body = line["body"] if batch.replace_model is None else {**line["body"], "model": batch.replace_model}
        if prompt_texts(kind, body) is None:
            status, answer = 400, error_body("invalid_request_error", "the body lacks what the endpoint needs")
        else:
            status, answer = self.answer(kind, body)
        request_id = f"sim-batch-{next(self._ids)}"
        record = {
            "id": f"batch_req_{request_id}",
            "custom_id": line["custom_id"],
            "response": {"status_code": status, "request_id": request_id, "body": answer},
            "error": None,
        }
        if status == 200:
            batch.output.append(orjson.dumps(record) + b"\n")
        else:
            batch.failed_lines += 1
            batch.error_lines.append(orjson.dumps(record) + b"\n")

    def _finish(self, batch: SimBatch, status: str) -> None:
        now_s = int(time.time())
        batch.status, batch.finished_at = status, now_s
        if batch.auto_delete and self.files.pop(batch.input_file_id, None) is not None:
            self.deletes += 1
        if batch.output:
            out = SimFile(self._id("file"), f"{batch.id}_output.jsonl", "batch_output", b"".join(batch.output), now_s)
            self.files[out.id], batch.output_file_id = out, out.id
        if batch.error_lines:
            errors = b"".join(batch.error_lines)
            err = SimFile(self._id("file"), f"{batch.id}_error.jsonl", "batch_output", errors, now_s)
            self.files[err.id], batch.error_file_id = err, err.id

    def describe(self, batch: SimBatch, now: float) -> dict[str, Any]:
        """The batch as the API shows it, moved on to `now` first."""
        self._advance(batch, now)
        final = batch.status in FINAL
        return {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "status": batch.status,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
            "created_at": batch.created_at,
            "in_progress_at": batch.in_progress_at,
            "expires_at": batch.created_at + 86_400,
            "completed_at": batch.finished_at if batch.status == "completed" else None,
            "failed_at": batch.finished_at if batch.status == "failed" else None,
            "expired_at": batch.finished_at if batch.status == "expired" else None,
            "cancelling_at": batch.cancelling_at,
            "cancelled_at": batch.finished_at if batch.status == "cancelled" else None,
            "finalizing_at": batch.finished_at if final else None,
            "request_counts": {
                "total": len(batch.lines) + (len(batch.errors) if batch.status == "failed" else 0),
                "completed": batch.done - batch.failed_lines,
                "failed": batch.failed_lines,
            },
            "metadata": batch.metadata,
        }


def done_share(started: float, now: float, cancel_at: float | None, validate_s: float, batch_s: float) -> float:
    """The share of a batch's lines answered by `now`, always within [0, 1]: none while it validates, then rising
    evenly over `batch_s`, and none more after a cancel (a cancel during validation leaves none answered)."""
    until = now if cancel_at is None else min(now, cancel_at)
    running = until - started - validate_s
    if running < 0:
        return 0.0
    return 1.0 if batch_s <= 0 else min(1.0, running / batch_s)
