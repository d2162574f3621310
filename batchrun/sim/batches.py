"""The simulated provider's Batch API, in the OpenAI shape every batch-capable preset shares (OpenAI, Zhipu `/v4`,
DashScope, Qianfan `/v2`, GenStudio): upload a JSONL file, create a batch over it, poll it as it moves through
its statuses, download the output and error files, cancel it.

A batch validates its file (every line a request for the batch's endpoint, `custom_id`s unique, at most
`batch_max_lines`), runs for `batch_s` seconds with `request_counts` rising as it goes, and ends `completed`.
Quirks asked for in a line's prompt (`#sim:...`), as the online path takes them:

    #sim:batch-invalid      this line fails validation: the batch is `failed`, errors.data names the line
    #sim:batch-expire=0.6   the batch `expired` with 60 % of its lines done (their answers are billed and kept)
    #sim:status=400         this line's answer is an error: a line of the error file
    #sim:batch-tokens=1     the first batch holding this line is refused for enqueued tokens (`token_limit_exceeded`)

Files and batches live in memory for as long as the simulator runs.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .answers import DIRECTIVE, error_body, prompt_texts

# (kind, body) -> (status, answer body): one request answered as the online endpoint would, and billed
Answer = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]
Auth = Callable[[web.Request], web.Response | None]
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
    cancel_at: float | None = None
    status: str = "validating"
    done: int = 0  # lines answered so far (their answers are in output/errors)
    output: list[bytes] = field(default_factory=list)
    error_lines: list[bytes] = field(default_factory=list)
    failed_lines: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    finished_at: int | None = None
    auto_delete: bool = False  # Zhipu's auto_delete_input_file: the input file goes when the batch ends


class BatchDesk:
    def __init__(
        self, answer: Answer, auth: Auth, clock: Callable[[], float], batch_s: float, max_lines: int = 50_000
    ) -> None:
        self.answer, self.auth, self.clock = answer, auth, clock
        self.batch_s, self.max_lines = batch_s, max_lines
        self.files: dict[str, SimFile] = {}
        self.batches: dict[str, SimBatch] = {}
        self._ids = itertools.count(1)
        self.uploads = self.creates = self.cancels = self.deletes = 0
        self.refusals: dict[str, int] = {}  # #sim:batch-tokens lines: batches refused for each so far
        self.batches_per_file: dict[str, int] = {}  # a client that lost track of its batch makes a second one

    def routes(self, app: web.Application) -> None:
        add = app.router
        add.add_post("/{base:.*}/files", self._guard(self.upload))
        add.add_get("/{base:.*}/files/{file}/content", self._guard(self.content))
        add.add_get("/{base:.*}/files/{file}", self._guard(self.file))
        add.add_delete("/{base:.*}/files/{file}", self._guard(self.delete))
        add.add_post("/{base:.*}/batches", self._guard(self.create))
        add.add_get("/{base:.*}/batches", self._guard(self.list_batches))
        add.add_get("/{base:.*}/batches/{batch}", self._guard(self.retrieve))
        add.add_post("/{base:.*}/batches/{batch}/cancel", self._guard(self.cancel))

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

    def _guard(self, handler: Callable[[web.Request], Awaitable[web.Response]]) -> Callable[..., Any]:
        async def guarded(request: web.Request) -> web.Response:
            denied = self.auth(request)
            return denied if denied is not None else await handler(request)

        return guarded

    def _id(self, prefix: str) -> str:
        return f"{prefix}-sim{next(self._ids):06d}"

    # --- files -----------------------------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField):
            return _error(400, "invalid_request_error", "multipart field 'file' is required")
        if purpose != "batch":
            return _error(400, "invalid_request_error", f"purpose must be 'batch', got {purpose!r}")
        self.uploads += 1
        sim = SimFile(self._id("file"), upload.filename, "batch", upload.file.read(), int(time.time()))
        self.files[sim.id] = sim
        return _ok(sim.describe())

    async def file(self, request: web.Request) -> web.Response:
        sim = self.files.get(request.match_info["file"])
        return _ok(sim.describe()) if sim else _error(404, "not_found", "no such file")

    async def content(self, request: web.Request) -> web.Response:
        sim = self.files.get(request.match_info["file"])
        if sim is None:
            return _error(404, "not_found", "no such file")
        return web.Response(body=sim.content, content_type="application/jsonl")

    async def delete(self, request: web.Request) -> web.Response:
        sim = self.files.pop(request.match_info["file"], None)
        if sim is None:
            return _error(404, "not_found", "no such file")
        self.deletes += 1
        return _ok({"id": sim.id, "object": "file", "deleted": True})

    # --- batches ---------------------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "invalid_request_error", "request body is not valid JSON")
        source = self.files.get(str(body.get("input_file_id")))
        if source is None:
            return _error(404, "not_found", f"no such file {body.get('input_file_id')!r}")
        endpoint = str(body.get("endpoint") or "")
        if not any(endpoint.endswith(tail) for tail in KINDS):
            return _error(400, "invalid_request_error", f"unsupported endpoint {endpoint!r}")
        lines, errors, expire, tokens = self._read(source.content, endpoint)
        now = self.clock()
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
        if tokens:
            batch.errors = [{"code": "token_limit_exceeded", "line": None, "message": "Enqueued token limit reached"}]
        self.creates += 1
        self.batches_per_file[source.id] = self.batches_per_file.get(source.id, 0) + 1
        self.batches[batch.id] = batch
        return _ok(self._describe(batch))

    async def list_batches(self, request: web.Request) -> web.Response:
        """`GET /batches?limit=&after=`: newest first, a page at a time, as OpenAI lists them."""
        try:
            limit = max(1, min(100, int(request.query.get("limit", "20"))))
        except ValueError:
            return _error(400, "invalid_request_error", "limit must be a whole number")
        newest = sorted(self.batches.values(), key=lambda b: b.id, reverse=True)
        after = request.query.get("after")
        if after:
            newest = [b for b in newest if b.id < after]
        page = newest[:limit]
        data = [self._describe(b) for b in page]
        return _ok(
            {
                "object": "list",
                "data": data,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(newest) > limit,
            }
        )

    async def retrieve(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch"])
        return _ok(self._describe(batch)) if batch else _error(404, "not_found", "no such batch")

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self.batches.get(request.match_info["batch"])
        if batch is None:
            return _error(404, "not_found", "no such batch")
        self._advance(batch)
        if batch.status not in FINAL and batch.cancel_at is None:
            self.cancels += 1
            batch.cancel_at = self.clock()
            batch.status = "cancelling"
        return _ok(self._describe(batch))

    def _read(
        self, content: bytes, endpoint: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float | None, bool]:
        """The file's requests, its validation errors, the share after which it expires, and whether its
        enqueued tokens are refused."""
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
        return lines, errors, expire, tokens

    def _advance(self, batch: SimBatch) -> None:
        """Move the batch on to where the clock says it is, answering the lines whose time has come."""
        if batch.status in FINAL:
            return
        now = self.clock()
        validate_s = min(0.2, self.batch_s / 10)
        if now - batch.started < validate_s and batch.cancel_at is None:
            return
        if batch.errors:
            batch.status, batch.finished_at = "failed", int(time.time())
            return
        share = min(1.0, (now - batch.started - validate_s) / self.batch_s) if self.batch_s > 0 else 1.0
        if batch.cancel_at is not None:
            share = min(share, max(0.0, (batch.cancel_at - batch.started - validate_s) / max(self.batch_s, 1e-9)))
        if batch.expire_share is not None:
            share = min(share, batch.expire_share)
        target = math.floor(share * len(batch.lines) + 1e-9)
        for line in batch.lines[batch.done : target]:
            self._answer_line(batch, line)
        batch.done = max(batch.done, target)
        batch.status = "in_progress"
        if batch.cancel_at is not None:
            self._finish(batch, "cancelled")
        elif batch.expire_share is not None and share >= batch.expire_share:
            self._finish(batch, "expired")
        elif batch.done >= len(batch.lines):
            self._finish(batch, "completed")

    def _answer_line(self, batch: SimBatch, line: dict[str, Any]) -> None:
        kind = next(k for tail, k in KINDS.items() if batch.endpoint.endswith(tail))
        body = line["body"]
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
        batch.status, batch.finished_at = status, int(time.time())
        if batch.auto_delete and self.files.pop(batch.input_file_id, None) is not None:
            self.deletes += 1
        if batch.output:
            out = SimFile(self._id("file"), f"{batch.id}_output.jsonl", "batch_output", b"".join(batch.output), 0)
            self.files[out.id], batch.output_file_id = out, out.id
        if batch.error_lines:
            err = SimFile(self._id("file"), f"{batch.id}_error.jsonl", "batch_output", b"".join(batch.error_lines), 0)
            self.files[err.id], batch.error_file_id = err, err.id

    def _describe(self, batch: SimBatch) -> dict[str, Any]:
        self._advance(batch)
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
            "in_progress_at": batch.created_at if batch.status != "validating" else None,
            "expires_at": batch.created_at + 86_400,
            "completed_at": batch.finished_at if batch.status == "completed" else None,
            "failed_at": batch.finished_at if batch.status == "failed" else None,
            "expired_at": batch.finished_at if batch.status == "expired" else None,
            "cancelled_at": batch.finished_at if batch.status == "cancelled" else None,
            "finalizing_at": batch.finished_at if final else None,
            "request_counts": {
                "total": len(batch.lines) + (len(batch.errors) if batch.status == "failed" else 0),
                "completed": batch.done - batch.failed_lines,
                "failed": batch.failed_lines,
            },
            "metadata": batch.metadata,
        }


def _ok(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(error_body(code, message)), content_type="application/json")
