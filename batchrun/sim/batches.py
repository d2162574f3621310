"""The simulated provider's Batch API, in the OpenAI shape every batch-capable preset shares (OpenAI, Zhipu `/v4`,
DashScope, Qianfan `/v2`, GenStudio): upload a JSONL file, create a batch over it, poll it as it moves through
its statuses, download the output and error files, cancel it (`cancelling`, then `cancelled`), list the files.

A batch validates its file (every line a request for the batch's endpoint, `custom_id`s unique, at most
`batch_max_lines`), runs for `batch_s` seconds with `request_counts` rising as it goes, and ends `completed`.
Quirks asked for in a line's prompt (`#sim:...`), as the online path takes them:

    #sim:batch-invalid      this line fails validation: the batch is `failed`, errors.data names the line
    #sim:batch-expire=0.6   the batch `expired` with 60 % of its lines done (their answers are billed and kept)
    #sim:status=400         this line's answer is an error: a line of the error file
    #sim:batch-tokens=1     the first batch holding this line is refused for enqueued tokens (`token_limit_exceeded`)

Files and batches live in memory for as long as the simulator runs. This module holds the routes, which only map
HTTP to calls; the files and batches, and how a batch moves on, are `batchbook`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from .answers import error_body
from .batchbook import KINDS, Answer, BatchBook
from .filerules import upload_refusal

Auth = Callable[[web.Request], web.Response | None]


class BatchDesk:
    """The Batch API's routes: each maps an HTTP request to the book of files and batches (`batchbook`)."""

    def __init__(
        self,
        answer: Answer,
        auth: Auth,
        clock: Callable[[], float],
        batch_s: float,
        max_lines: int = 50_000,
        speaks: str = "openai",
    ) -> None:
        self.auth, self.clock = auth, clock
        self.book = BatchBook(answer, batch_s, max_lines, speaks)

    def routes(self, app: web.Application) -> None:
        add = app.router
        add.add_post("/{base:.*}/files", self._guard(self.upload))
        add.add_get("/{base:.*}/files", self._guard(self.list_files))
        add.add_get("/{base:.*}/files/{file}/content", self._guard(self.content))
        add.add_get("/{base:.*}/files/{file}", self._guard(self.file))
        add.add_delete("/{base:.*}/files/{file}", self._guard(self.delete))
        add.add_post("/{base:.*}/batches", self._guard(self.create))
        add.add_get("/{base:.*}/batches", self._guard(self.list_batches))
        add.add_get("/{base:.*}/batches/{batch}", self._guard(self.retrieve))
        add.add_post("/{base:.*}/batches/{batch}/cancel", self._guard(self.cancel))

    def stats(self) -> dict[str, Any]:
        return self.book.stats()

    def _guard(self, handler: Callable[[web.Request], Awaitable[web.Response]]) -> Callable[..., Any]:
        async def guarded(request: web.Request) -> web.Response:
            denied = self.auth(request)
            return denied if denied is not None else await handler(request)

        return guarded

    # --- files -----------------------------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField):
            return _error(400, "invalid_request_error", "multipart field 'file' is required")
        if purpose != "batch":
            return _error(400, "invalid_request_error", f"purpose must be 'batch', got {purpose!r}")
        content = upload.file.read()
        if (refused := upload_refusal(self.book.rules, len(content), self.book.held())) is not None:
            return _error(400, "invalid_request_error", refused)
        return _ok(self.book.upload(upload.filename, content).describe())

    async def list_files(self, request: web.Request) -> web.Response:
        """`GET /files?purpose=&limit=&after=&order=`: a page of files as OpenAI's SDK pages them (and Zhipu's
        reads them): newest first unless `order=asc`, up to 10,000 at a time."""
        query = request.query
        try:
            limit = int(query.get("limit", "10000"))
        except ValueError:
            return _error(400, "invalid_request_error", "limit must be a whole number")
        order = query.get("order", "desc")
        if not 1 <= limit <= 10_000 or order not in ("asc", "desc"):
            return _error(400, "invalid_request_error", "limit must be 1 to 10000, and order asc or desc")
        page, more = self.book.list_files(query.get("purpose") or None, query.get("after") or None, limit, order)
        return _ok(
            {
                "object": "list",
                "data": [f.describe() for f in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": more,
            }
        )

    async def file(self, request: web.Request) -> web.Response:
        sim = self.book.files.get(request.match_info["file"])
        return _ok(sim.describe()) if sim else _error(404, "not_found", "no such file")

    async def content(self, request: web.Request) -> web.Response:
        sim = self.book.files.get(request.match_info["file"])
        if sim is None:
            return _error(404, "not_found", "no such file")
        return web.Response(body=sim.content, content_type="application/jsonl")

    async def delete(self, request: web.Request) -> web.Response:
        sim = self.book.delete(request.match_info["file"])
        if sim is None:
            return _error(404, "not_found", "no such file")
        return _ok({"id": sim.id, "object": "file", "deleted": True})

    # --- batches ---------------------------------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _error(400, "invalid_request_error", "request body is not valid JSON")
        source = self.book.files.get(str(body.get("input_file_id")))
        if source is None:
            return _error(404, "not_found", f"no such file {body.get('input_file_id')!r}")
        endpoint = str(body.get("endpoint") or "")
        if not any(endpoint.endswith(tail) for tail in KINDS):
            return _error(400, "invalid_request_error", f"unsupported endpoint {endpoint!r}")
        reading = self.book.read(source.content, endpoint, body.get("replace"))
        batch = self.book.create(source, endpoint, body, reading, self.clock())
        return _ok(self.book.describe(batch, self.clock()))

    async def list_batches(self, request: web.Request) -> web.Response:
        """`GET /batches?limit=&after=`: newest first, a page at a time, as OpenAI lists them."""
        try:
            limit = max(1, min(100, int(request.query.get("limit", "20"))))
        except ValueError:
            return _error(400, "invalid_request_error", "limit must be a whole number")
        newest = sorted(self.book.batches.values(), key=lambda b: b.id, reverse=True)
        after = request.query.get("after")
        if after:
            newest = [b for b in newest if b.id < after]
        page = newest[:limit]
        data = [self.book.describe(b, self.clock()) for b in page]
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
        batch = self.book.batches.get(request.match_info["batch"])
        return _ok(self.book.describe(batch, self.clock())) if batch else _error(404, "not_found", "no such batch")

    async def cancel(self, request: web.Request) -> web.Response:
        batch = self.book.batches.get(request.match_info["batch"])
        if batch is None:
            return _error(404, "not_found", "no such batch")
        now = self.clock()  # one reading: the answer shows the batch `cancelling`, as OpenAI's does
        self.book.cancel(batch, now)
        return _ok(self.book.describe(batch, now))


def _ok(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(error_body(code, message)), content_type="application/json")
